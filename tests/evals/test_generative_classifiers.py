"""Generative models as classifiers, against independent references: the logmeanexp text prior
against NumPy, the debiased caption score at alpha 0 equal to the plain likelihood evals'
numbers, the image score untouched by the prior, the blind scores' bounds; the early-fusion
image likelihood against a NumPy log-softmax sum over a full forward of each unpadded
sequence, and a model whose attention is cut (the text cannot reach the image codes) tying
every class."""

import functools
import zlib

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from tests.models.test_early_fusion import CODES, IMAGE_SIZE, small_config, tokenizer, vocab
from vlm_jax import early_fusion_generation as generation
from vlm_jax import parallel, trainers
from vlm_jax.data import world
from vlm_jax.evals import (
    capabilities_needed,
    debiased_caption,
    default_eval_config,
    generative_compositional,
    generative_zeroshot,
    image_likelihood_zeroshot,
    run_served,
)
from vlm_jax.evals.caption_model import CaptionModel
from vlm_jax.evals.image_likelihood import ImageLikelihood
from vlm_jax.models import lm, vq
from vlm_jax.vq_tokenizer import ImageTokenizer


def small_eval_config(**overrides):
    eval_config = default_eval_config()
    eval_config.update(dict(batch_size=7, genzeroshot_size=24, probe_size=6, prior_images=5,
                            image_size=16))
    eval_config.update(overrides)
    return eval_config


def hashed(image: np.ndarray, text: str) -> float:
    """A fixed pseudo-random log-likelihood in [-20, -1] of one (image, text) pair."""
    return -1.0 - 19.0 * zlib.crc32(image.tobytes() + text.encode()) / 2**32


HASHED = CaptionModel(
    generate=lambda images: [""] * len(images),
    log_likelihood=lambda images, texts: np.array(
        [hashed(image, text) for image, text in zip(images, texts, strict=True)]))


def test_logmeanexp_matches_numpy_and_stays_finite_far_below_zero():
    x = np.random.default_rng(0).normal(-3, 2, (5, 7))
    np.testing.assert_allclose(debiased_caption.logmeanexp(x, axis=0),
                               np.log(np.mean(np.exp(x), axis=0)), rtol=1e-12)
    # exp(-2000) underflows to 0 in float64; the shifted form keeps the exact offset.
    np.testing.assert_allclose(debiased_caption.logmeanexp(x - 2000.0, axis=1),
                               np.log(np.mean(np.exp(x), axis=1)) - 2000.0, rtol=1e-12)


def test_text_prior_is_the_logmeanexp_over_the_train_reference_images():
    eval_config = small_eval_config()
    references = debiased_caption.reference_images(eval_config)
    train = world.World("train", seed=0, image_size=16)
    np.testing.assert_array_equal(references[3], train[3]["image"])
    texts = ["a red circle.", "a blue square.", "a red circle."]  # a repeat is scored once
    prior = debiased_caption.text_log_prior(HASHED, texts, references, batch_size=4)
    brute = [np.log(np.mean([np.exp(hashed(image, text)) for image in references]))
             for text in texts]
    np.testing.assert_allclose(prior, brute, rtol=1e-12)
    assert prior[0] == prior[2] and prior[0] != prior[1]


def test_alpha_zero_is_the_plain_likelihood_evals_and_the_image_score_ignores_alpha():
    eval_config = small_eval_config(prior_alphas=(0.0, 0.5, 1.0, 7.0))
    debiased = debiased_caption.run(HASHED, None, eval_config)
    plain = {**generative_zeroshot.run(HASHED, None, eval_config),
             **generative_compositional.run(HASHED, None, eval_config)}
    assert debiased["gendebiased/single_object/top1_a0"] == plain["genzeroshot/single_object/top1"]
    assert debiased["gendebiased/single_object/top5_a0"] == plain["genzeroshot/single_object/top5"]
    for kind in world.PROBE_KINDS:
        for metric in ("text", "image", "group", "acc2"):
            assert (debiased[f"gendebiased/{kind}/{metric}_a0"]
                    == plain[f"gencompositional/{kind}/{metric}"])
        # one caption against two images: -alpha log P(t) is on both sides
        images = {debiased[f"gendebiased/{kind}/image_{a}"] for a in ("a0", "a0.5", "a1", "a7")}
        assert len(images) == 1
        assert debiased[f"gendebiased/{kind}/blind_group"] == 0.0
        assert debiased[f"gendebiased/{kind}/blind_acc2"] <= 0.5
    # the blind zero-shot predicts one class for every image: 1 of the 24 balanced classes
    assert debiased["gendebiased/single_object/blind_top1"] == pytest.approx(1 / 24)
    # a large alpha moves the text-side scores (the prior of these hashed texts is not flat)
    moved = [debiased[f"gendebiased/{kind}/acc2_a7"] != debiased[f"gendebiased/{kind}/acc2_a0"]
             for kind in world.PROBE_KINDS]
    moved.append(debiased["gendebiased/single_object/top1_a7"]
                 != debiased["gendebiased/single_object/top1_a0"])
    assert any(moved)


def test_the_debiased_score_removes_a_pure_text_prior():
    """log P(t|i) = match(i, t) + prior(t), prior far larger: alpha 0 follows the prior,
    alpha 1 (the prior measured over images the match averages out on) recovers the match."""
    eval_config = small_eval_config(prior_images=24)
    images, labels, names = world.single_object_set("val", 24, seed=0, image_size=16)
    label_of = {image.tobytes(): names[label] for image, label in zip(images, labels, strict=True)}
    text_bias = {name: 5.0 * k for k, name in enumerate(names)}  # a strong favourite class

    def log_likelihood(batch, texts):
        out = []
        for image, text in zip(batch, texts, strict=True):
            name = next(n for n in sorted(names, key=len, reverse=True) if n in text)
            match = 0.0 if label_of.get(image.tobytes()) == name else -1.0
            out.append(match + text_bias[name])
        return np.array(out)

    model = CaptionModel(generate=lambda b: [""] * len(b), log_likelihood=log_likelihood)
    results = debiased_caption.run(model, None, eval_config)
    assert results["gendebiased/single_object/top1_a0"] == pytest.approx(1 / 24)
    # the train reference images hold none of these exact val images: prior = bias - 1 for
    # every text, so alpha 1 leaves the match alone
    assert results["gendebiased/single_object/top1_a1"] == 1.0


def test_a_bad_alpha_or_prior_size_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="prior_alphas must be finite weights >= 0"):
        debiased_caption.run(HASHED, None, small_eval_config(prior_alphas=(-1.0,)))
    with pytest.raises(ValueError, match="prior_images must be a positive integer"):
        debiased_caption.run(HASHED, None, small_eval_config(prior_images=0))


# ---- image likelihood of an early-fusion LM ---------------------------------------------


@functools.cache
def random_vq() -> ImageTokenizer:
    """A small random VQ of the early-fusion tests' sizes (16 px -> 4 x 4 codes of CODES),
    initialised under jit (tests/models' larger one takes ~30 s eagerly)."""
    model = vq.VQVAE(channels=(4, 4), res_blocks=0, code_dim=4, codebook_size=CODES)
    images = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), images)["params"]
    return ImageTokenizer(model, params, IMAGE_SIZE)


@functools.cache
def tiny_lm():
    """A 2-layer GQA LM with QK-norm over the fused vocabulary, random weights."""
    model = lm.LM(vocab_size=tokenizer().vocab_size, width=32, depth=2, num_heads=4,
                  num_kv_heads=2, mlp_dim=64, qk_norm=True, qk_norm_type="head_layernorm",
                  qk_norm_eps=1e-5)
    init = jax.jit(model.init)(jax.random.PRNGKey(1), np.zeros((1, 8), np.int32))
    return model, nn.meta.unbox(init["params"])


@functools.cache
def one_device_mesh():
    return parallel.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
                              devices=jax.devices()[:1])


def brute_force_image_log_likelihood(model, params, image, text):
    """NumPy: the full forward of the unpadded BOS text <boi> codes, log-softmax, summed over
    the code targets."""
    v = vocab()
    codes = np.asarray(random_vq().tokenize(image[None]))[0] + v.code_offset
    sequence = np.array([v.bos_id, *tokenizer().text_ids(text), v.boi_id, *codes], np.int32)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, sequence[None, :-1]),
                        np.float64)[0]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = sequence[1:]
    start = len(sequence) - len(codes) - 1  # the position predicting the first code
    return float(sum(log_probs[t, targets[t]] for t in range(start, len(targets))))


def image_likelihood_of(model, params) -> ImageLikelihood:
    return generation.make_image_likelihood(model, params, tokenizer(), one_device_mesh(),
                                            small_config(), random_vq())


def test_image_likelihood_is_the_sum_of_code_log_softmax_of_a_full_forward():
    model, params = tiny_lm()
    images, _, names = world.single_object_set("val", 3, seed=0, image_size=16)
    texts = [f"a {names[0]}.", "there is a big red circle left of a small blue square.",
             f"a photo of a {names[2]}."]  # prompts of different lengths, padded in one chunk
    scores = image_likelihood_of(model, params).log_likelihood(images, texts)
    brute = [brute_force_image_log_likelihood(model, params, image, text)
             for image, text in zip(images, texts, strict=True)]
    np.testing.assert_allclose(scores, brute, rtol=2e-5)
    assert np.ptp(scores) > 1e-3  # the rows differ: a wrong gather would not pass by luck


def test_when_the_text_cannot_reach_the_codes_every_class_ties_and_scores_zero():
    model, params = tiny_lm()
    # Every attention output at zero: each position's logits see only its own token, so the
    # codes' likelihood cannot depend on the prompt before them.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 0 if "'out'" in jax.tree_util.keystr(path) else x, params)
    served = image_likelihood_of(model, params)
    images, _, names = world.single_object_set("val", 4, seed=0, image_size=16)
    scores = image_likelihood_zeroshot.image_class_scores(served, images, names,
                                                          world.ZEROSHOT_TEMPLATES, 32)
    np.testing.assert_array_equal(scores, scores[:, :1].repeat(len(names), axis=1))
    eval_config = small_eval_config(batch_size=32)
    results = image_likelihood_zeroshot.run_zeroshot(served, None, eval_config)
    assert results["imgzeroshot/single_object/top1"] == 0.0  # ties are wrong, not chance
    assert results["imgzeroshot/single_object/chance"] == pytest.approx(1 / 24)


def test_image_likelihood_evals_are_served_by_the_early_fusion_trainer_only():
    needed = capabilities_needed("imgzeroshot,imgcompositional,gendebiased", default_eval_config())
    assert needed == {"imgzeroshot": {"image_likelihood"},
                      "imgcompositional": {"image_likelihood"}, "gendebiased": {"captioner"}}
    assert "image_likelihood" in trainers.get_trainer("early_fusion").CAPABILITIES
    assert "image_likelihood" not in trainers.get_trainer("coca").CAPABILITIES
    with pytest.raises(ValueError, match="needs a image_likelihood, which this model does not"):
        run_served("imgzeroshot", {"captioner": HASHED}, small_eval_config())


def test_image_compositional_scores_each_image_given_each_caption():
    """A fake model: log p(image | caption) = 0 for the caption true of the image, -1 else."""
    eval_config = small_eval_config()
    truth = set()
    for kind in world.PROBE_KINDS:
        for pair in world.probe_pairs(kind, eval_config.probe_size, seed=0, image_size=16):
            truth |= {(image.tobytes(), caption)
                      for image, caption in zip(pair.images, pair.captions, strict=True)}
    oracle = ImageLikelihood(lambda images, texts: np.array(
        [0.0 if (image.tobytes(), text) in truth else -1.0
         for image, text in zip(images, texts, strict=True)]))
    results = run_served("imgcompositional", {"image_likelihood": oracle}, eval_config)
    for kind in world.PROBE_KINDS:
        assert results[f"imgcompositional/{kind}/group"] == 1.0
    blind = ImageLikelihood(lambda images, texts: np.zeros(len(texts)))
    results = run_served("imgcompositional", {"image_likelihood": blind}, eval_config)
    assert all(value == 0.0 for value in results.values())  # ties never count
