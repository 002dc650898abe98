"""Our CoCa, converted from open_clip's CoCa, computes what open_clip computes: image and
text embeddings, the caption pooler's tokens, caption logits, and both CoCaLoss terms
(caption_loss_weight=2, clip_loss_weight=1), in float32 to 1e-5, in both of open_clip's
pooler layouts: "parallel" (the paper's, with the corrected [CLS] mask) and its default one
(one pooler, the legacy [CLS] mask), which every released open_clip CoCa checkpoint uses.

The golden fixtures (tests/fixtures/coca_tiny and coca_tiny_default, made by
tests/fixtures/make_coca_fixture.py) always run; the live tests build a fresh random open_clip
CoCa whenever torch and open_clip import (e.g. `pip install -e .[parity]`).
"""

import importlib.util
import json
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from vlm_jax.convert.open_clip_coca import (
    coca_kwargs,
    convert_coca_state_dict,
    text_tokens_from_open_clip,
)
from vlm_jax.models import coca
from vlm_jax.trainers import coca as coca_trainer

FIXTURE = Path(__file__).parents[1] / "fixtures" / "coca_tiny"
DEFAULT_FIXTURE = FIXTURE.with_name("coca_tiny_default")  # open_clip's default layout
MAKE_FIXTURE = Path(__file__).parents[1] / "fixtures" / "make_coca_fixture.py"
TOLERANCE = 1e-5


def load_make_fixture():
    """tests/fixtures/make_coca_fixture.py as a module (it imports torch and open_clip)."""
    spec = importlib.util.spec_from_file_location("make_coca_fixture", MAKE_FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def our_outputs(record: dict, state_dict: dict, inputs) -> dict[str, np.ndarray]:
    """Our model's outputs, named as make_coca_fixture.tiny_outputs names open_clip's."""
    kwargs = coca_kwargs(record["model_config"], state_dict, pad_id=record["pad_id"],
                         bos_id=record["bos_id"], correct_cls_mask=record["correct_cls_mask"])
    model = coca.CoCa(**kwargs)
    params = convert_coca_state_dict(state_dict, kwargs)
    images = np.asarray(inputs["pixel_values"]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    text_tokens = text_tokens_from_open_clip(inputs["text"], record["pad_id"])
    initial = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), images, text_tokens))
    assert jax.tree_util.tree_structure(initial["params"]) == jax.tree_util.tree_structure(params)
    for ours, init in zip(jax.tree_util.tree_leaves(params),
                          jax.tree_util.tree_leaves(initial["params"]), strict=True):
        assert ours.shape == init.shape

    config = ml_collections.ConfigDict(dict(loss=dict(
        contrastive="softmax", contrastive_weight=1.0, caption_weight=2.0)))
    loss_fn = coca_trainer.make_loss_fn(model, config)

    @jax.jit  # one compilation: eager dispatch of every op is slower on a CPU
    def forward(params, images, text_tokens):
        variables = {"params": params}
        image_emb, text_emb, extras = model.apply(variables, images, text_tokens)
        _, image_extras = model.apply(variables, images, method=model.encode_image)
        loss, metrics = loss_fn(params, {"image": images, "text_tokens": text_tokens}, None)
        context = text_tokens.shape[1]
        return {
            "image_features": image_emb,
            "text_features": text_emb,
            "caption_tokens": image_extras["caption_tokens"],
            # Our last position predicts the appended padding; open_clip has none there.
            "logits": extras["caption_logits"][:, : context - 1],
            "logit_scale": extras["logit_scale"],
            "contrastive_loss": 1.0 * metrics["contrastive_loss"],
            "caption_loss": 2.0 * metrics["caption_loss"],
            "loss": loss,
        }

    return forward(params, images, text_tokens)


def max_abs_diffs(ours: dict, expected) -> dict[str, float]:
    names = [k for k in expected.keys() if k not in ("pixel_values", "text")]
    diffs = {k: float(np.max(np.abs(np.asarray(ours[k]) - expected[k]))) for k in names}
    diffs["loss"] = abs(float(ours["loss"]) - float(expected["contrastive_loss"]
                                                    + expected["caption_loss"]))
    return diffs


def test_converted_coca_matches_golden_open_clip_outputs():
    record = json.loads((FIXTURE / "config.json").read_text())
    from safetensors.numpy import load_file

    state_dict = load_file(FIXTURE / "model.safetensors")
    expected = np.load(FIXTURE / "expected.npz")
    diffs = max_abs_diffs(our_outputs(record, state_dict, expected), expected)
    assert max(diffs.values()) < TOLERANCE, diffs
    # The numbers must not be trivially small, or 1e-5 would prove nothing.
    assert np.abs(expected["logits"]).max() > 1.0
    assert float(expected["caption_loss"]) > 1.0 and float(expected["contrastive_loss"]) > 0.1
    # One row fills the whole context: its [CLS] sees every token, EOS included.
    assert (expected["text"] != record["pad_id"]).all(axis=1).any()


def test_converted_coca_matches_live_open_clip():
    pytest.importorskip("torch")
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed")
    make = load_make_fixture()  # imports open_clip around a CPU-torch torchvision wheel
    model = make.tiny_coca(seed=3)
    inputs = make.tiny_inputs(seed=4)
    expected = make.tiny_outputs(model, inputs)
    state_dict = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    record = {"model_config": make.MODEL_CONFIG, "pad_id": make.PAD, "bos_id": make.BOS,
              "correct_cls_mask": True}
    diffs = max_abs_diffs(our_outputs(record, state_dict, inputs), {**inputs, **expected})
    assert max(diffs.values()) < TOLERANCE, diffs


def test_converted_default_layout_coca_matches_golden_open_clip_outputs():
    record = json.loads((DEFAULT_FIXTURE / "config.json").read_text())
    from safetensors.numpy import load_file

    state_dict = load_file(DEFAULT_FIXTURE / "model.safetensors")
    assert record["model_config"]["vision_cfg"]["attentional_pool"] is True
    assert not record["correct_cls_mask"]
    kwargs = coca_kwargs(record["model_config"], state_dict, pad_id=record["pad_id"],
                         bos_id=record["bos_id"])  # open_clip's defaults: nothing to pass
    assert (kwargs["pool_layout"], kwargs["caption_queries"], kwargs["legacy_cls_mask"]) == (
        "single", 4, True)
    expected = np.load(DEFAULT_FIXTURE / "expected.npz")
    diffs = max_abs_diffs(our_outputs(record, state_dict, expected), expected)
    assert max(diffs.values()) < TOLERANCE, diffs
    assert np.abs(expected["logits"]).max() > 1.0
    assert float(expected["caption_loss"]) > 1.0 and float(expected["contrastive_loss"]) > 0.1
    # The legacy mask differs from the corrected one only where a row has padding: both kinds
    # of row are there, and the text embeddings depend on the mask chosen.
    padded = (expected["text"] == record["pad_id"]).any(axis=1)
    assert padded.any() and not padded.all()
    corrected = our_outputs({**record, "correct_cls_mask": True}, state_dict, expected)
    gap = np.abs(np.asarray(corrected["text_features"]) - expected["text_features"]).max(axis=1)
    assert (gap[padded] > 1e-3).all() and (gap[~padded] < TOLERANCE).all(), gap


def test_converted_default_layout_coca_matches_live_open_clip():
    pytest.importorskip("torch")
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed")
    make = load_make_fixture()
    model = make.tiny_coca(seed=5, layout="default")
    inputs = make.tiny_inputs(seed=6)
    expected = make.tiny_outputs(model, inputs)
    state_dict = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    record = {"model_config": make.DEFAULT_MODEL_CONFIG, "pad_id": make.PAD, "bos_id": make.BOS,
              "correct_cls_mask": False}
    diffs = max_abs_diffs(our_outputs(record, state_dict, inputs), {**inputs, **expected})
    assert max(diffs.values()) < TOLERANCE, diffs


@pytest.mark.parametrize("attentional_pool", ["cascade", False])
def test_other_open_clip_pooler_layouts_are_refused(attentional_pool):
    record = json.loads((FIXTURE / "config.json").read_text())
    model_config = json.loads(json.dumps(record["model_config"]))
    model_config["vision_cfg"]["attentional_pool"] = attentional_pool
    with pytest.raises(ValueError, match="attentional_pool=True"):
        coca_kwargs(model_config, {}, pad_id=0, bos_id=1)
