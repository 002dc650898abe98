"""Our Q-Former, with weights copied from `transformers`' BLIP-2, computes what it computes:
the hidden states of the query pass (queries + image), the text pass and the matching pass
(queries + text + image), and the model's ITC scores and ITM logits, in float32 to 1e-5.

The golden fixture (tests/fixtures/blip2_tiny, made by tests/fixtures/make_blip2_fixture.py)
always runs; the live test rebuilds a random HF model whenever torch and transformers import.
"""

import importlib.util
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.convert import hf_blip2
from vlm_jax.convert import torch_layout as tl
from vlm_jax.models import blip2, qformer

FIXTURE = Path(__file__).parents[1] / "fixtures" / "blip2_tiny"
MAKE_FIXTURE = Path(__file__).parents[1] / "fixtures" / "make_blip2_fixture.py"
TOLERANCE = 1e-5


def load_make_fixture():
    spec = importlib.util.spec_from_file_location("make_blip2_fixture", MAKE_FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def our_outputs(record: dict, tensors: dict, inputs) -> dict[str, np.ndarray]:
    weights = tl.Weights(hf_blip2.as_float32(tensors), "blip2 fixture")
    kwargs, qformer_params = hf_blip2.convert_qformer(weights, record["qformer_config"])
    heads = hf_blip2.convert_retrieval_heads(weights)
    assert weights.unused() == [], weights.unused()
    features = jnp.asarray(inputs["image_features"])
    tokens = jnp.asarray(inputs["text_tokens"])
    cls = jnp.full_like(tokens[:, :1], record["cls_id"])
    model = qformer.QFormer(**kwargs)
    run = lambda *args: np.asarray(model.apply({"params": qformer_params}, *args))
    outputs = {"query_hidden": run(features, None),
               "text_hidden": run(None, jnp.concatenate([cls, tokens], 1)),
               "match_hidden": run(features, jnp.concatenate([cls, tokens], 1))}
    full = blip2.Blip2(image=dict(width=8, depth=1, num_heads=1, mlp_dim=8, patch_size=8),
                       qformer_sizes=kwargs, embed_dim=record["image_text_hidden_size"],
                       logit_scale_init=0.0, cls_id=record["cls_id"])
    params = {"qformer": qformer_params, **heads, "logit_scale": jnp.zeros(())}
    apply = lambda method, *args: np.asarray(full.apply({"params": params}, *args, method=method))
    query_emb = full.apply({"params": params}, features, method=full.encode_queries)
    text_emb, _ = full.apply({"params": params}, tokens, method=full.encode_text)
    outputs["itc_scores"] = np.asarray(blip2.max_query_similarity(query_emb, text_emb))
    outputs["itm_logits"] = apply(full.match, features, tokens)
    return outputs


def valid_rows(name: str, inputs, num_queries: int) -> np.ndarray:
    """bool [B, positions]: the positions whose outputs mean something (not padded text)."""
    text_valid = np.concatenate([np.ones((len(inputs["text_tokens"]), 1), bool),
                                 inputs["text_tokens"] != 0], axis=1)
    queries = np.ones((len(text_valid), num_queries), bool)
    return {"query_hidden": queries, "text_hidden": text_valid,
            "match_hidden": np.concatenate([queries, text_valid], 1)}.get(name)


def assert_matches(ours: dict, expected, inputs, num_queries: int) -> None:
    for name, reference in expected.items():
        got = ours[name]
        rows = valid_rows(name, inputs, num_queries)
        if rows is not None:
            got, reference = got[rows], reference[rows]
        error = np.abs(got - reference).max()
        assert error <= TOLERANCE, f"{name}: max error {error:.2e}"


def test_golden_fixture_matches_transformers():
    from safetensors.numpy import load_file

    record = json.loads((FIXTURE / "config.json").read_text())
    stored = np.load(FIXTURE / "expected.npz")
    inputs = {k: stored[k] for k in ("image_features", "text_tokens")}
    expected = {k: stored[k] for k in stored.files if k not in inputs}
    ours = our_outputs(record, load_file(str(FIXTURE / "model.safetensors")), inputs)
    assert_matches(ours, expected, inputs, record["num_query_tokens"])
    # The fixture is not degenerate: queries differ per image, ITM logits per pair.
    assert np.ptp(expected["itm_logits"][:, 1]) > 1e-2
    assert np.ptp(expected["query_hidden"][:, 0, 0]) > 1e-2


def test_live_transformers_parity():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    make = load_make_fixture()
    model = make.build_model(seed=7)
    inputs = make.fixed_inputs(seed=8)
    expected = make.tiny_outputs(model, inputs)
    record = {"qformer_config": make.QFORMER_CONFIG, "cls_id": make.CLS,
              "image_text_hidden_size": make.IMAGE_TEXT_HIDDEN}
    ours = our_outputs(record, make.qformer_state(model), inputs)
    assert_matches(ours, expected, inputs, make.NUM_QUERIES)
