"""models/lm.py against a NumPy LLaMA written from the equations (RMSNorm, rotate-half RoPE,
grouped-query attention, SwiGLU, tied or untied head), its masks (causal, prefix-LM,
padding), cached decoding against the full forward, and lm_generation against brute force."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm_jax import decoding, lm_generation
from vlm_jax.models import build_model, lm

VOCAB, WIDTH, DEPTH, HEADS, KV_HEADS, HEAD_DIM, MLP = 40, 24, 2, 4, 2, 8, 48


def _model(**changes) -> lm.LM:
    fields = dict(vocab_size=VOCAB, width=WIDTH, depth=DEPTH, num_heads=HEADS,
                  num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, mlp_dim=MLP, rope_theta=500.0,
                  norm_eps=1e-5) | changes
    return lm.LM(**fields)


def _params(model: lm.LM, seed: int = 0) -> dict:
    """Random parameters with norm scales away from 1, so a skipped scale shows."""
    params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    new = []
    for path, leaf in leaves:
        if path[-1].key == "scale":
            new.append(jnp.asarray(1 + 0.3 * rng.normal(size=leaf.shape), jnp.float32))
        else:
            new.append(jnp.asarray(0.3 * rng.normal(size=leaf.shape), jnp.float32))
    return jax.tree_util.tree_unflatten(tree, new)


def _np_rms(x, scale, eps=1e-5):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _np_rope(x, theta):  # x [T, H, hd], positions 0..T-1
    half = x.shape[-1] // 2
    freq = theta ** (-np.arange(half) * 2.0 / x.shape[-1])
    angle = np.arange(x.shape[0])[:, None, None] * freq  # [T, 1, half]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * np.cos(angle) - b * np.sin(angle),
                           b * np.cos(angle) + a * np.sin(angle)], -1)


def _np_lm(params, tokens, allowed, tied=False, theta=500.0):
    """logits [T, V] of one sequence; allowed bool [T, T] (query, key)."""
    p = jax.tree_util.tree_map(np.asarray, params)
    x = p["token_embedding"]["embedding"][tokens]
    group = HEADS // KV_HEADS
    for i in range(DEPTH):
        b = p[f"block{i}"]
        h = _np_rms(x, b["norm1"]["scale"])
        q = _np_rope(np.einsum("td,dhk->thk", h, b["attn"]["query"]["kernel"]), theta)
        k = _np_rope(np.einsum("td,dhk->thk", h, b["attn"]["key"]["kernel"]), theta)
        v = np.einsum("td,dhk->thk", h, b["attn"]["value"]["kernel"])
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # query head j: kv j//g
        scores = np.einsum("qhk,shk->hqs", q, k) / np.sqrt(HEAD_DIM)
        scores = np.where(allowed[None], scores, -1e30)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attended = np.einsum("hqs,shk->qhk", weights, v)
        x = x + np.einsum("qhk,hkd->qd", attended, b["attn"]["out"]["kernel"])
        h = _np_rms(x, b["norm2"]["scale"])
        gate = h @ b["mlp"]["gate"]["kernel"]
        x = x + (gate / (1 + np.exp(-gate)) * (h @ b["mlp"]["up"]["kernel"])) @ b["mlp"][
            "down"]["kernel"]
    h = _np_rms(x, p["norm"]["scale"])
    head = p["token_embedding"]["embedding"].T if tied else p["lm_head"]["kernel"]
    return h @ head


TOKENS = np.array([[3, 17, 5, 9, 30, 2, 11], [8, 1, 39, 4, 4, 20, 6]])


@pytest.mark.parametrize("tied", [False, True])
def test_causal_logits_match_numpy(tied):
    model = _model(tie_embeddings=tied)
    params = _params(model)
    assert ("lm_head" in params) == (not tied)
    logits = np.asarray(model.apply({"params": params}, jnp.asarray(TOKENS)))
    assert logits.dtype == np.float32 and logits.shape == (2, 7, VOCAB)
    causal = np.tril(np.ones((7, 7), bool))
    for row in range(2):
        expected = _np_lm(params, TOKENS[row], causal, tied)
        np.testing.assert_allclose(logits[row], expected, rtol=1e-4, atol=1e-4)


def test_prefix_lm_mask_and_padding_match_numpy():
    model = _model()
    params = _params(model, seed=1)
    prefix = 3  # mask_ar 0 on the prefix (bidirectional), 1 after it
    mask_ar = np.array([[0] * prefix + [1] * 4] * 2)
    valid = np.array([[True] * 7, [True] * 5 + [False] * 2])
    logits, hidden = model.apply({"params": params}, jnp.asarray(TOKENS),
                                 mask_ar=jnp.asarray(mask_ar), valid=jnp.asarray(valid),
                                 return_hidden=True)
    assert hidden.shape == (2, 7, WIDTH)
    for row in range(2):
        n = int(valid[row].sum())
        cumulative = np.cumsum(mask_ar[row, :n])
        allowed = cumulative[None, :] <= cumulative[:, None]
        expected = _np_lm(params, TOKENS[row, :n], allowed)
        np.testing.assert_allclose(np.asarray(logits[row, :n]), expected, rtol=1e-4, atol=1e-4)
    # The prefix is bidirectional: its first position depends on its last one.
    changed = TOKENS.copy()
    changed[:, prefix - 1] = (changed[:, prefix - 1] + 1) % VOCAB
    other = model.apply({"params": params}, jnp.asarray(changed), mask_ar=jnp.asarray(mask_ar))
    assert np.abs(np.asarray(other[:, 0] - logits[:, 0])).max() > 1e-3


def test_embeddings_input_equals_tokens_input():
    model = _model()
    params = _params(model)
    embeddings = model.apply({"params": params}, jnp.asarray(TOKENS), method=model.embed)
    np.testing.assert_array_equal(
        np.asarray(model.apply({"params": params}, embeddings=embeddings)),
        np.asarray(model.apply({"params": params}, jnp.asarray(TOKENS))))
    with pytest.raises(ValueError, match="exactly one of tokens"):
        model.apply({"params": params}, jnp.asarray(TOKENS), embeddings=embeddings)


def test_cached_decoding_equals_the_full_forward():
    model = _model()
    params = _params(model, seed=2)
    full = np.asarray(model.apply({"params": params}, jnp.asarray(TOKENS)))
    logits, cache = lm_generation.prefill(model, params, jnp.asarray(TOKENS[:, :4]), 12)
    step = jax.jit(lm_generation.lm_step_fn(model, params))
    steps = [np.asarray(logits)]
    for t in range(4, 7):
        out, cache = step(cache, jnp.asarray(TOKENS[:, t]), jnp.int32(t))
        steps.append(np.asarray(out)[:, None])
    np.testing.assert_allclose(np.concatenate(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_generate_text_greedy_equals_brute_force_argmax():
    """Prompts of unequal length: the continuation of each equals repeated full forwards."""
    model = _model()
    params = _params(model, seed=3)
    pad, eos = 0, 1
    prompt = np.array([[5, 6, 7, 0, 0], [9, 10, 11, 12, 13]])
    tokens, extras = lm_generation.generate_text(
        model, params, prompt, decoding.DecodeSettings(max_len=6), eos_id=eos, pad_id=pad)
    assert tokens.shape == (2, 6)
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
    for row in range(2):
        # One padded shape for every step: the model is causal, so the tail never matters.
        sequence = np.zeros(11, np.int32)
        length = int((prompt[row] != pad).sum())
        sequence[:length] = prompt[row, :length]
        expected = []
        for _ in range(6):
            logits = np.array(forward(params, jnp.asarray(sequence[None])))[0, length - 1]
            logits[pad] = -np.inf  # decoding never emits padding
            expected.append(int(logits.argmax()))
            sequence[length] = expected[-1]
            length += 1
            if expected[-1] == eos:
                break
        assert [int(t) for t in tokens[row][:len(expected)]] == expected
    # beam_size 1 is greedy.
    beam, _ = lm_generation.generate_text(
        model, params, prompt, decoding.DecodeSettings(strategy="beam", beam_size=1, max_len=6),
        eos_id=eos, pad_id=pad)
    np.testing.assert_array_equal(beam, tokens)


def test_from_config_and_scan_refused():
    config = ml_collections.ConfigDict(dict(
        name="lm", width=WIDTH, depth=1, num_heads=HEADS, num_kv_heads=KV_HEADS, mlp_dim=MLP,
        tie_embeddings=True))
    model = build_model(config, vocab_size=VOCAB)
    assert isinstance(model, lm.LM) and model.vocab_size == VOCAB and model.head_dim == 0
    with pytest.raises(ValueError, match="scan_layers is not supported"):
        _model(execution=lm.layers.Execution(scan_layers=True)).init(
            jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
