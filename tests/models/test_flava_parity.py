"""Our Flava, converted from HF `FlavaForPreTraining`, computes what HF computes: unmasked and
masked unimodal hidden states, the masked multimodal states, ITM logits, and every loss term
(mim, mlm, global contrastive, itm, mmm_image, mmm_text), float32 to 1e-5, on the same masks
and labels (passed in, as HF takes them).

The golden fixture (tests/fixtures/flava_tiny, made by tests/fixtures/make_flava_fixture.py)
always runs; the live test rebuilds the reference whenever torch and transformers import.
HF computes the contrastive term on the rows with itm label 1 only, so the "positives" case
(all labels 1) is where ours (all unswapped pairs) and HF's are the same quantity.
"""

import importlib.util
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm_jax.convert import hf_flava
from vlm_jax.convert.torch_layout import Weights
from vlm_jax.losses import terms
from vlm_jax.models import flava
from vlm_jax.trainers import flava as flava_trainer

FIXTURE = Path(__file__).parents[1] / "fixtures" / "flava_tiny"
MAKE_FIXTURE = Path(__file__).parents[1] / "fixtures" / "make_flava_fixture.py"
TOLERANCE = 1e-5
# HF loss name -> ours, per case (HF computes MIM/MLM only without a multimodal pass).
CASE_TERMS = {
    "paired": {"itm": "itm", "mmm_image": "mmm_image", "mmm_text": "mmm_text"},
    "positives": {"itm": "itm", "mmm_image": "mmm_image", "mmm_text": "mmm_text",
                  "global_contrastive": "contrastive"},
    "image_only": {"mim": "mim"},
    "text_only": {"mlm": "mlm"},
}
HIDDEN = {"image": "image_hidden", "text": "text_hidden", "masked_image": "masked_image_hidden",
          "masked_text": "masked_text_hidden", "mm": "mm_hidden", "itm_logits": "itm_logits"}


def load_make_fixture():
    spec = importlib.util.spec_from_file_location("make_flava_fixture", MAKE_FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def our_cases(config: dict, weights: dict, x: dict, cls_id: int) -> dict[str, np.ndarray]:
    """Our outputs and loss terms, named '<case>/<HF name>' as the fixture names HF's."""
    tensors = Weights(dict(weights), "HF FLAVA fixture")
    params, fields = hf_flava.convert(config, tensors, cls_id)
    # Every tensor is used but the heads' tied bias copies and the towers' tanh poolers, which
    # no pretraining loss reads (the ITM head has its own).
    unused = [k for k in tensors.unused()
              if not (k.endswith("head.bias") or ".pooler.dense." in k and "itm" not in k)]
    assert not unused, unused
    model = flava.Flava(**fields)
    images = np.asarray(x["pixel_values"]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    text_tokens = np.asarray(x["input_ids"])[:, 1:].astype(np.int32)  # ours adds [CLS_T]
    masked_tokens = np.asarray(x["input_ids_masked"])[:, 1:].astype(np.int32)
    patch_mask = np.asarray(x["bool_masked_pos"], bool)
    initial = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images, text_tokens))
    assert (jax.tree_util.tree_structure(initial["params"])
            == jax.tree_util.tree_structure(params))
    for ours, init in zip(jax.tree_util.tree_leaves(params),
                          jax.tree_util.tree_leaves(initial["params"]), strict=True):
        assert ours.shape == init.shape
    outputs = jax.jit(model.apply)({"params": params}, images, text_tokens, patch_mask,
                                   masked_tokens)
    contrastive = terms.contrastive_term("softmax", ml_collections.ConfigDict({}))
    mlm_mask = np.asarray(x["mlm_labels"])[:, 1:] != -100
    result = {}
    for case, names in CASE_TERMS.items():
        itm_labels = (np.asarray(x["itm_labels"]) if case == "paired"
                      else np.ones(len(images), np.int32))
        weights_on = {name: float(name in names.values()) for name in flava_trainer.TERMS}
        _, metrics = flava_trainer.combine(
            outputs, jnp.asarray(x["mim_labels"], jnp.int32), patch_mask, text_tokens, mlm_mask,
            jnp.asarray(itm_labels, jnp.int32), weights_on, contrastive, pixel_target=False)
        for hf_name, ours in names.items():
            result[f"{case}/{hf_name}"] = np.asarray(metrics[f"{ours}_loss"])
        for hf_name, ours in HIDDEN.items():
            result[f"{case}/{hf_name}"] = np.asarray(outputs[ours])
    result["paired/global_contrastive"] = hf_filtered_contrastive(
        np.asarray(outputs["image_emb"]), np.asarray(outputs["text_emb"]),
        float(outputs["logit_scale"]), np.asarray(x["itm_labels"]) != 0)
    return result


def hf_filtered_contrastive(image_emb, text_emb, scale: float, positive) -> float:
    """HF's contrastive term with ITM negatives in the batch, as a NumPy formula of our
    embeddings: rows of the matched pairs only, columns of every row (swapped ones included)."""
    def cross_entropy(logits, labels):
        logits = logits - logits.max(1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -log_probs[np.arange(len(labels)), labels].mean()

    rows = np.flatnonzero(positive)
    return 0.5 * (cross_entropy(scale * image_emb[rows] @ text_emb.T, rows)
                  + cross_entropy(scale * text_emb[rows] @ image_emb.T, rows))


def compare(expected: dict, ours: dict) -> float:
    """Largest absolute error over every fixture entry our model also computes."""
    worst = 0.0
    checked = [k for k in expected if "/" in k]
    assert set(checked) <= set(ours), set(checked) - set(ours)
    assert {k.split("/")[1] for k in checked} >= {"mim", "mlm", "global_contrastive", "itm",
                                                   "mmm_image", "mmm_text", "mm"}
    for name in checked:
        np.testing.assert_allclose(ours[name], expected[name], atol=TOLERANCE, rtol=0,
                                   err_msg=name)
        worst = max(worst, float(np.max(np.abs(ours[name] - expected[name]))))
    return worst


def test_matches_golden_fixture():
    config = json.loads((FIXTURE / "config.json").read_text())
    cases = dict(np.load(FIXTURE / "cases.npz"))
    weights = dict(np.load(FIXTURE / "weights.npz"))
    make = load_make_fixture()
    ours = our_cases(config, weights, cases, make.CLS_ID)
    worst = compare(cases, ours)
    assert worst < TOLERANCE
    # The fixture is not trivial: swapping the ITM labels changes the loss.
    assert abs(float(cases["paired/itm"]) - float(cases["positives/itm"])) > 0.1


def test_matches_live_reference():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    make = load_make_fixture()
    model = make.build_reference(seed=3)
    x = make.inputs(seed=3)
    expected = make.run_cases(model, x)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    ours = our_cases(model.config.to_dict(), weights, x, make.CLS_ID)
    assert compare(expected, ours) < TOLERANCE
