"""Generative evals (captioning, VQA, POPE, likelihood zero-shot and probes) with hand-built
models whose right answers are known: an oracle that knows every true text of every image, an
"always yes" model and a constant one; POPE's metrics against a hand-built confusion matrix."""

from collections import Counter

import numpy as np
import pytest
from test_run_evals import random_scorer

from vlm_jax.data import world
from vlm_jax.data.world_scene import SEEN_PAIRS
from vlm_jax.evals import (
    GENERATIVE_EVALS,
    captioning,
    datasets,
    default_eval_config,
    pope,
    run_evals,
    vqa,
)
from vlm_jax.evals.caption_model import CaptionModel, candidate_log_likelihoods, log_likelihoods


def small_eval_config(**overrides):
    eval_config = default_eval_config()
    eval_config.update(dict(
        batch_size=7, captioning_size=20, vqa_size=40, pope_size=20, pope_stats_size=300,
        genzeroshot_size=48, probe_size=10))
    eval_config.update(overrides)
    return eval_config


def oracle_model(eval_config) -> CaptionModel:
    """Knows, per image (by its pixels), every true text the evals will score, and captions an
    image with its dataset caption: log p = 0 for a true text, -1 for any other."""
    true_texts: set[tuple[bytes, str]] = set()
    captions: dict[bytes, str] = {}
    seed, size = eval_config.seed, eval_config.image_size
    for item in world.qa_items(eval_config.vqa_size, "val", seed=seed, image_size=size):
        true_texts.add((item.image.tobytes(), f"{item.question} {item.answer}"))
    val = world.World("val", seed=seed, image_size=size)
    for index in range(max(eval_config.pope_size, eval_config.captioning_size)):
        example = val[index]
        key = example["image"].tobytes()
        captions[key] = example["caption"]
        present = val.scene(index).pair_counts()
        for colour, shape in SEEN_PAIRS:
            answer = "yes" if (colour, shape) in present else "no"
            true_texts.add((key, pope.ANSWER_FORMAT.format(
                question=pope.QUESTION.format(colour=colour, shape=shape), answer=answer)))
    images, labels, names = world.single_object_set(
        "val", eval_config.genzeroshot_size, seed=seed, image_size=size)
    for image, label in zip(images, labels, strict=True):
        true_texts |= {(image.tobytes(), t.format(names[label])) for t in world.ZEROSHOT_TEMPLATES}
    for kind in world.PROBE_KINDS:
        for pair in world.probe_pairs(kind, eval_config.probe_size, seed=seed, image_size=size):
            true_texts |= {(image.tobytes(), caption)
                           for image, caption in zip(pair.images, pair.captions, strict=True)}
    return CaptionModel(
        generate=lambda images: [captions.get(image.tobytes(), "") for image in images],
        log_likelihood=lambda images, texts: np.array(
            [0.0 if (image.tobytes(), text) in true_texts else -1.0
             for image, text in zip(images, texts, strict=True)]),
    )


def text_model(score) -> CaptionModel:
    """A blind model: log p(text | image) = score(text)."""
    return CaptionModel(generate=lambda images: ["a red circle."] * len(images),
                        log_likelihood=lambda images, texts: np.array([score(t) for t in texts]))


ALWAYS_YES = text_model(lambda text: 0.0 if text.endswith(" yes") else -1.0)
CONSTANT = text_model(lambda text: 0.0)


def test_pope_metrics_on_a_hand_built_confusion_matrix():
    present = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    answers = np.array([1, 1, 1, 0, 1, 1, 0, 0], bool)  # TP 3, FN 1, FP 2, TN 2
    margins = np.array([3.0, 2.0, 1.0, -1.0, 2.0, 0.5, -2.0, -3.0])
    metrics = pope.pope_metrics(answers, present, margins)
    precision, recall = 3 / 5, 3 / 4
    assert metrics == pytest.approx({
        "accuracy": 5 / 8, "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall), "yes_ratio": 5 / 8,
        # present margins beat absent ones in 12 of 16 pairs (2.0 ties 2.0 and loses).
        "auc": 12 / 16})


def test_pope_metrics_without_a_yes_answer_have_zero_precision():
    metrics = pope.pope_metrics(np.zeros(4, bool), np.array([1, 0, 1, 0], bool))
    assert metrics == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                       "yes_ratio": 0.0}


def test_pope_negatives_per_sampling():
    present = [("red", "circle"), ("blue", "square")]
    frequency = Counter({("white", "cross"): 9, ("green", "cross"): 5})
    cooccurrence = Counter({(("red", "circle"), ("red", "cross")): 3})
    args = (SEEN_PAIRS, frequency, cooccurrence, np.random.default_rng(0))
    popular = pope.absent_pairs(present, 2, "popular", *args)
    assert popular == [("white", "cross"), ("green", "cross")]
    adversarial = pope.absent_pairs(present, 3, "adversarial", *args)
    assert adversarial[0] == ("red", "cross")  # shares "red" and co-occurs most
    for colour, shape in adversarial:  # every one shares a colour or a shape with the image
        assert colour in ("red", "blue") or shape in ("circle", "square")
    random = pope.absent_pairs(present, 5, "random", *args)
    assert len(set(random)) == 5 and not set(random) & set(present)


def test_an_oracle_is_perfect_on_vqa_pope_and_the_likelihood_probes():
    eval_config = small_eval_config()
    oracle = oracle_model(eval_config)
    results = run_evals(["vqa", "pope", "genzeroshot", "gencompositional"], None, eval_config,
                        caption_model=oracle)
    for key, value in results.items():
        metric = key.rsplit("/", 1)[1]
        if metric == "yes_ratio":
            assert value == 0.5, key  # POPE is balanced
        elif metric != "chance" and not metric.startswith("prior_"):  # priors ignore the model
            assert value == 1.0, key
    assert set(results) >= {f"vqa/val/{kind}" for kind in world.QA_KINDS}
    assert results["vqa/val/chance"] == pytest.approx((1 / 7 + 1 / 4 + 1 / 4 + 1 / 2) / 4)
    assert results["genzeroshot/single_object/chance"] == pytest.approx(1 / 24)


def test_always_yes_gets_yes_ratio_one_and_precision_one_half():
    eval_config = small_eval_config()
    results = pope.run(ALWAYS_YES, None, eval_config)
    for sampling in pope.SAMPLINGS:
        assert results[f"pope/{sampling}/yes_ratio"] == 1.0
        assert results[f"pope/{sampling}/precision"] == 0.5
        assert results[f"pope/{sampling}/recall"] == 1.0
        assert results[f"pope/{sampling}/accuracy"] == 0.5
        assert results[f"pope/{sampling}/auc"] == 0.0  # every margin ties: ties lose
    # On VQA it answers every yes/no question "yes": right exactly on the yes questions.
    items = [item for item in world.qa_items(eval_config.vqa_size) if item.kind == "yesno"]
    yes_share = np.mean([item.answer == "yes" for item in items])
    assert vqa.run(ALWAYS_YES, None, eval_config)["vqa/val/yesno"] == pytest.approx(yes_share)


def test_a_constant_model_scores_zero_not_chance():
    eval_config = small_eval_config()
    results = run_evals("vqa,pope,genzeroshot", None, eval_config, caption_model=CONSTANT)
    for key, value in results.items():
        metric = key.rsplit("/", 1)[1]
        if metric in ("chance", "accuracy") or metric.startswith("prior_"):
            continue  # the answer prior is the train split's, whatever the model
        assert value == 0.0, key  # ties everywhere; a tie answers "no" in POPE
    for sampling in pope.SAMPLINGS:
        assert results[f"pope/{sampling}/accuracy"] == 0.5


def test_captioning_of_the_dataset_captions():
    eval_config = small_eval_config()
    scorer = random_scorer()
    results = captioning.run(oracle_model(eval_config), scorer, eval_config)
    # Each candidate is one of its references (r = 0): every n-gram matches and the closest
    # reference length is its own, so BLEU-4 is 1.
    assert results["captioning/val/bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert results["captioning/val/clipscore"] == results["captioning/val/clipscore_refs"]
    # A model captioning every image with one fixed caption does far worse.
    blind = captioning.run(text_model(lambda text: 0.0), scorer, eval_config)
    assert blind["captioning/val/cider"] < 0.5 * results["captioning/val/cider"]
    assert blind["captioning/val/bleu4"] < 0.5


def test_references_are_distinct_true_captions():
    val = world.World("val")
    references = datasets.world_references(val, 3, 5)
    assert references[0] == val[3]["caption"]
    assert len(set(references)) >= 3  # different templates, not one caption five times


def test_chunked_calls_pad_to_one_batch_size_and_keep_order():
    calls = []

    def log_likelihood(images, texts):
        calls.append(len(texts))
        return np.array([float(image[0, 0, 0]) + len(text) for image, text in
                         zip(images, texts, strict=True)])

    model = CaptionModel(generate=lambda images: [""] * len(images), log_likelihood=log_likelihood)
    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    scores = log_likelihoods(model, images, ["a", "bb", "ccc", "d", "ee"], batch_size=3)
    np.testing.assert_array_equal(scores, [1, 3, 5, 4, 6])
    assert calls == [3, 3]
    matrix = candidate_log_likelihoods(model, images[:2], [["a", "bb"], ["ccc", "d"]], 3)
    np.testing.assert_array_equal(matrix, [[1, 2], [4, 2]])


def test_generative_evals_need_a_caption_model():
    with pytest.raises(ValueError, match="eval 'vqa' needs a captioner, which this model does "
                                         "not serve"):
        run_evals(["zeroshot", "vqa"], random_scorer(), small_eval_config())
    with pytest.raises(ValueError, match="vqa_size must be a positive integer"):
        run_evals(["vqa"], None, small_eval_config(vqa_size=0), caption_model=CONSTANT)
    assert set(GENERATIVE_EVALS) == {"captioning", "vqa", "pope", "genzeroshot",
                                     "gencompositional", "gendebiased"}
