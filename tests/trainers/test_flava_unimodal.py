"""FLAVA on a batch mixing paired, image-only and text-only rows: each term equals the same
term on the rows that have its inputs alone (and a NumPy formula), a row outside a term gets
gradient exactly 0 from it, ITM swaps stay among paired rows, and the :tiny loss function runs
on a pipeline batch of the mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import flava as flava_config
from vlm_jax.data import formats
from vlm_jax.losses import terms
from vlm_jax.trainers import flava as flava_trainer

# Rows: paired, image-only, text-only, paired, text-only, paired, image-only, paired.
KINDS = ["caption", "image_only", "text_only", "caption", "text_only", "caption",
         "image_only", "caption"]
FORMAT_ID = np.array([formats.FORMATS.index(k) for k in KINDS], np.int32)
PAIRED = FORMAT_ID == formats.FORMATS.index("caption")
HAS_IMAGE = PAIRED | (FORMAT_ID == formats.FORMATS.index("image_only"))
HAS_TEXT = PAIRED | (FORMAT_ID == formats.FORMATS.index("text_only"))
B, N, L, CODES, VOCAB, E = len(KINDS), 6, 5, 7, 11, 4
SCALE = 3.0


def _normalize(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _case(seed=0):
    """Random model outputs, targets and masks for the 8 mixed rows."""
    rng = np.random.default_rng(seed)
    outputs = {
        "image_emb": np.float32(_normalize(rng.normal(size=(B, E)))),
        "text_emb": np.float32(_normalize(rng.normal(size=(B, E)))),
        "logit_scale": np.float32(SCALE),
        "mim_logits": np.float32(rng.normal(size=(B, N, CODES))),
        "mlm_logits": np.float32(rng.normal(size=(B, L, VOCAB))),
        "mmm_image_logits": np.float32(rng.normal(size=(B, N, CODES))),
        "mmm_text_logits": np.float32(rng.normal(size=(B, L, VOCAB))),
        "itm_logits": np.float32(rng.normal(size=(B, 2))),
    }
    image_targets = rng.integers(0, CODES, (B, N)).astype(np.int32)
    patch_mask = rng.random((B, N)) < 0.5
    text_targets = rng.integers(0, VOCAB, (B, L)).astype(np.int32)
    mlm_mask = rng.random((B, L)) < 0.5
    itm_labels = np.int32([1, 1, 1, 0, 1, 1, 1, 1])  # paired row 3 holds a swapped caption
    return outputs, image_targets, patch_mask, text_targets, mlm_mask, itm_labels


WEIGHTS = {name: 1.0 for name in flava_trainer.TERMS}
CONTRASTIVE = terms.contrastive_term("softmax", {})


def _combine(outputs, image_targets, patch_mask, text_targets, mlm_mask, itm_labels, rows):
    return flava_trainer.combine(outputs, image_targets, patch_mask, text_targets, mlm_mask,
                                 itm_labels, WEIGHTS, CONTRASTIVE, False, rows)


def _subset(case, rows):
    """The case restricted to `rows` (every output and mask row-indexed)."""
    outputs, *rest = case
    picked = {k: (v if np.ndim(v) == 0 else v[rows]) for k, v in outputs.items()}
    return (picked, *(a[rows] for a in rest))


def _rows():
    return flava_trainer.row_kinds(jnp.asarray(FORMAT_ID))


def test_row_kinds_of_format_id():
    rows = _rows()
    np.testing.assert_array_equal(rows["paired"], PAIRED)
    np.testing.assert_array_equal(rows["image"], HAS_IMAGE)
    np.testing.assert_array_equal(rows["text"], HAS_TEXT)
    assert PAIRED.sum() == 4 and HAS_IMAGE.sum() == 6 and HAS_TEXT.sum() == 6


def test_each_term_on_the_mixed_batch_equals_it_on_its_rows_alone():
    case = _case()
    _, mixed = _combine(*case, _rows())
    # The unmasked terms (every row paired, checked against HF in test_flava_parity) on the
    # rows that have the term's inputs.
    _, on_images = _combine(*_subset(case, HAS_IMAGE), None)
    _, on_texts = _combine(*_subset(case, HAS_TEXT), None)
    _, on_pairs = _combine(*_subset(case, PAIRED), None)
    np.testing.assert_allclose(mixed["mim_loss"], on_images["mim_loss"], rtol=1e-6)
    np.testing.assert_allclose(mixed["mlm_loss"], on_texts["mlm_loss"], rtol=1e-6)
    for name in ("contrastive", "mmm_image", "mmm_text", "itm"):
        np.testing.assert_allclose(mixed[f"{name}_loss"], on_pairs[f"{name}_loss"], rtol=1e-6,
                                   err_msg=name)
    assert float(mixed["contrastive_i2t_accuracy"]) == float(on_pairs["contrastive_i2t_accuracy"])
    # And the terms differ from the all-rows ones: the mask matters on this case.
    _, everything = _combine(*case, None)
    for name in flava_trainer.TERMS:
        assert abs(float(mixed[f"{name}_loss"]) - float(everything[f"{name}_loss"])) > 1e-3, name


def _numpy_ce(logits, targets, weights):
    logits = np.float64(logits)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return nll[weights].mean()


def test_mixed_batch_terms_equal_numpy():
    outputs, image_targets, patch_mask, text_targets, mlm_mask, itm_labels = case = _case(1)
    _, got = _combine(*case, _rows())
    want = {
        "mim": _numpy_ce(outputs["mim_logits"], image_targets, patch_mask & HAS_IMAGE[:, None]),
        "mlm": _numpy_ce(outputs["mlm_logits"], text_targets, mlm_mask & HAS_TEXT[:, None]),
        "mmm_image": _numpy_ce(outputs["mmm_image_logits"], image_targets,
                               patch_mask & (PAIRED & (itm_labels == 1))[:, None]),
        "mmm_text": _numpy_ce(outputs["mmm_text_logits"], text_targets,
                              mlm_mask & (PAIRED & (itm_labels == 1))[:, None]),
        "itm": _numpy_ce(outputs["itm_logits"], itm_labels, PAIRED),
    }
    # CLIP over the paired rows: each paired image against the paired captions only.
    x, y = np.float64(outputs["image_emb"][PAIRED]), np.float64(outputs["text_emb"][PAIRED])
    logits = SCALE * x @ y.T
    lse = lambda a, axis: np.log(np.exp(a).sum(axis))
    want["contrastive"] = 0.5 * (np.mean(lse(logits, 1) - np.diag(logits))
                                 + np.mean(lse(logits, 0) - np.diag(logits)))
    for name, value in want.items():
        np.testing.assert_allclose(got[f"{name}_loss"], value, rtol=1e-5, err_msg=name)


def test_a_row_outside_a_term_gets_exactly_zero_gradient_from_it():
    outputs, *rest = _case(2)
    rows = _rows()
    # term -> (the outputs it reads, the rows that may get a gradient)
    reads = {
        "mim": (("mim_logits",), HAS_IMAGE),
        "mlm": (("mlm_logits",), HAS_TEXT),
        "contrastive": (("image_emb", "text_emb"), PAIRED),
        "mmm_image": (("mmm_image_logits",), PAIRED),
        "mmm_text": (("mmm_text_logits",), PAIRED),
        "itm": (("itm_logits",), PAIRED),
    }
    for term, (keys, allowed) in reads.items():
        weights = {name: float(name == term) for name in flava_trainer.TERMS}

        def total(outputs, weights=weights):
            return flava_trainer.combine(outputs, *rest[:5], weights, CONTRASTIVE, False,
                                         rows)[0]

        grads = jax.grad(total)({k: jnp.asarray(v) for k, v in outputs.items()})
        for key in keys:
            g = np.asarray(grads[key]).reshape(B, -1)
            assert np.all(g[~allowed] == 0.0), (term, key)
            assert np.abs(g[allowed]).sum() > 0, (term, key)  # the allowed rows do learn


def test_itm_swaps_only_among_paired_rows():
    batch = 64
    paired = np.arange(batch) % 3 != 0  # every third row unpaired
    tokens = np.arange(batch * 3, dtype=np.int32).reshape(batch, 3)  # unique captions
    swaps = 0
    for seed in range(4):
        texts, labels = flava_trainer.swap_captions(
            jax.random.key(seed), jnp.asarray(tokens), 0.5, jnp.asarray(paired))
        texts, labels = np.asarray(texts), np.asarray(labels)
        own = (texts == tokens).all(1)
        np.testing.assert_array_equal(own, labels == 1)
        assert own[~paired].all()  # an unpaired row keeps its text (caption or padding)
        for r in np.flatnonzero(labels == 0):
            donors = [j for j in range(batch) if (texts[r] == tokens[j]).all()]
            assert len(donors) == 1 and donors[0] != r and paired[donors[0]]
        swaps += (labels == 0).sum()
    # Rate 0.5 of the ~43 paired rows, 4 draws: 85 expected (sd ~6.5).
    assert 60 <= swaps <= 110
    # A lone paired row has no donor and keeps its caption.
    alone = np.zeros(batch, bool)
    alone[5] = True
    _, labels = flava_trainer.swap_captions(jax.random.key(0), jnp.asarray(tokens), 1.0,
                                            jnp.asarray(alone))
    assert np.asarray(labels).all()


def test_unimodal_config_arg_sets_the_mixture_and_checks_it():
    config = flava_config.get_config("tiny,unimodal=0.25")
    assert config.data.mixture == (("caption", 0.75), ("image_only", 0.125),
                                   ("text_only", 0.125))
    assert not flava_config.get_config("tiny").data.mixture  # the default stays paired-only
    with pytest.raises(ValueError, match="fraction of unimodal examples"):
        flava_config.get_config("tiny,unimodal=1.5")
    config.data.mixture = (("caption", 0.5), ("prefix_lm", 0.5))
    with pytest.raises(ValueError, match="FLAVA trains on data formats"):
        flava_trainer.make_loss_fn(None, config)


@pytest.mark.slow  # ~45 s of compiling the tiny model's gradient; the terms are tested above
def test_tiny_loss_fn_on_a_pipeline_batch_of_the_mixture():
    # The data pipeline's mixed batch (format_id, zero images on text-only rows, padding on
    # image-only ones) through the jitted loss: finite, every term present, and the MIM / MLM
    # loss near chance at init, gradients finite (no NaN from an all-padding text row).
    from vlm_jax import models
    from vlm_jax.data import tokenizer as tokenizers

    config = flava_config.get_config("tiny,unimodal=0.5")
    config.mim.fit_images = 8
    config.mim.num_codes = config.model.mim_dim = 16
    tokenizer = tokenizers.load_tokenizer(config.data)
    rng = np.random.default_rng(0)
    kinds = np.array([formats.FORMATS.index(k) for k in KINDS])
    captions = np.array(["a red circle", "", "two blue squares", "a green triangle",
                         "one small square", "three circles", "", "a big red square"])
    raw = {"image": rng.integers(0, 256, (B, 32, 32, 3)).astype(np.uint8), "caption": captions,
           "format_id": kinds, "num_corrupt": np.zeros(B, np.int32)}
    batch = formats.BuildBatch(tokenizer, config.data)(raw)
    assert (batch["image"][~HAS_IMAGE] == 0).all()
    assert (batch["text_tokens"][~HAS_TEXT] == tokenizer.pad_id).all()
    model = models.build_model(config.model, tokenizer.vocab_size)
    params = model.init(jax.random.key(0), **flava_trainer.init_batch(config))["params"]
    loss_fn = flava_trainer.make_loss_fn(model, config)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, batch, jax.random.key(1))
    assert np.isfinite(float(loss))
    assert {f"{name}_loss" for name in flava_trainer.TERMS} <= set(metrics)
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    # At init the code / token / match terms sit near log(#classes) on the rows they train on.
    assert abs(metrics["mim_loss"] - np.log(16)) < 1.5
    assert abs(metrics["itm_loss"] - np.log(2)) < 0.5


def test_a_single_unimodal_format_fills_the_missing_input_and_masks_it():
    config = flava_config.get_config("tiny")
    image_batch = {"image": np.ones((3, 32, 32, 3), np.uint8), "num_corrupt": np.zeros(3)}
    images, texts, rows = flava_trainer._inputs(image_batch, "image_only", config.data, 0)
    assert texts.shape == (3, config.data.text_length) and (np.asarray(texts) == 0).all()
    assert np.asarray(rows["image"]).all() and not np.asarray(rows["text"]).any()
    assert not np.asarray(rows["paired"]).any()
    text_batch = {"text_tokens": np.ones((2, 24), np.int32)}
    images, texts, rows = flava_trainer._inputs(text_batch, "text_only", config.data, 0)
    assert images.shape == (2, 32, 32, 3) and (np.asarray(images) == 0).all()
    assert np.asarray(rows["text"]).all() and not np.asarray(rows["image"]).any()
    # One paired format: no masks, the run as before.
    assert flava_trainer._inputs({**image_batch, "text_tokens": texts[:3]}, "caption",
                                 config.data, 0)[2] is None
