"""trainers/lm.py: which next-token targets count (against NumPy), a tiny LM overfitting a fixed
batch, and the world text batches (captions + qa_text) the `:tiny` config trains on."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lm as lm_config
from vlm_jax.data import formats
from vlm_jax.data.pipeline import LoadChunk
from vlm_jax.data.sources import make_source
from vlm_jax.data.tokenizer import load_tokenizer
from vlm_jax.models import build_model
from vlm_jax.models.lm import LM
from vlm_jax.trainers import lm as lm_trainer

PAD = 0


def _np_weights(tokens, mask_loss, targets):
    """The rule written out: target j = token j + 1 counts if it is not padding and, for
    "supervised" rows that carry any mask_loss, if its mask_loss is 1."""
    batch, length = tokens.shape
    out = np.zeros((batch, length - 1), np.float32)
    for b in range(batch):
        uses_mask = targets == "supervised" and mask_loss is not None and mask_loss[b].any()
        for j in range(length - 1):
            target = j + 1
            counts = tokens[b, target] != PAD
            if uses_mask:
                counts = counts and mask_loss[b, target] == 1
            out[b, j] = counts
    return out


@pytest.mark.parametrize("targets", ["all", "supervised"])
def test_target_weights_follow_the_rule(targets):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 9, (4, 7)).astype(np.int32)
    tokens[0, 5:] = PAD
    tokens[2, 3:] = PAD
    mask_loss = np.zeros((4, 7), np.int32)
    mask_loss[0, 3:5] = 1  # a QA row: answer + EOS
    mask_loss[1, 4:] = 1
    # rows 2 and 3 have none: captions in a mixture
    got = lm_trainer.target_weights(jnp.asarray(tokens), jnp.asarray(mask_loss), PAD, targets)
    np.testing.assert_array_equal(np.asarray(got), _np_weights(tokens, mask_loss, targets))
    none = lm_trainer.target_weights(jnp.asarray(tokens), None, PAD, targets)
    np.testing.assert_array_equal(np.asarray(none), _np_weights(tokens, None, "all"))
    with pytest.raises(ValueError, match="loss.targets 'answers'"):
        lm_trainer.target_weights(jnp.asarray(tokens), None, PAD, "answers")


def test_next_token_loss_is_the_weighted_mean_of_numpy_cross_entropy():
    model = LM(vocab_size=11, width=16, depth=1, num_heads=2, mlp_dim=32)
    tokens = jnp.asarray([[3, 4, 5, 6, 0, 0], [7, 8, 9, 10, 1, 2]], jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), tokens[:, :-1])["params"])
    loss, metrics = jax.jit(lambda p: lm_trainer.next_token_loss(
        model, p, {"text_tokens": tokens}, PAD))(params)
    logits = np.asarray(jax.jit(lambda p: model.apply(
        {"params": p}, tokens[:, :-1], valid=tokens[:, :-1] != PAD))(params), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = np.asarray(tokens[:, 1:])
    weights = targets != PAD
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    expected = (nll * weights).sum() / weights.sum()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["perplexity"]), np.exp(expected), rtol=1e-5)
    assert float(metrics["target_tokens"]) == weights.sum() == 8


def test_a_tiny_lm_overfits_a_fixed_batch():
    model = LM(vocab_size=20, width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(1, 20, (4, 12)), jnp.int32)  # random: only memorised
    params = nn.unbox(model.init(jax.random.key(0), tokens[:, :-1])["params"])
    optimizer = optax.adam(2e-2)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: lm_trainer.next_token_loss(model, p, {"text_tokens": tokens}, PAD),
            has_aux=True)(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, loss, metrics

    first = None
    for _ in range(80):
        params, state, loss, metrics = step(params, state)
        first = float(loss) if first is None else first
    assert first > np.log(20) - 1.0  # starts near chance (log 20 = 3.0)
    assert float(loss) < 0.1 and float(metrics["token_accuracy"]) == 1.0


def test_tiny_config_batches_mix_captions_and_qa_text_and_the_loss_runs():
    config = lm_config.get_config("tiny,batch=8")
    tokenizer = load_tokenizer(config.data)
    load = LoadChunk(make_source(config.data, "train"), config.data, config.seed)
    batch = formats.BuildBatch(tokenizer, config.data)(load([(k, k) for k in range(8)]))
    assert set(batch) >= {"text_tokens", "mask_loss", "format_id"}
    names = [formats.FORMATS[i] for i in batch["format_id"]]
    assert set(names) == {"text_only", "qa_text"}
    for row, name in enumerate(names):
        ids = batch["text_tokens"][row]
        real = ids[ids != tokenizer.pad_id].tolist()
        if name == "qa_text":  # the chat template of the example's question and answer
            question, answer = load.source.question_answer(row)
            expected, _ = tokenizer.apply_chat_template([("user", question),
                                                         ("assistant", answer)])
            assert real == expected[:config.data.text_length]
            assert batch["mask_loss"][row].any()
        else:
            assert real[-1] == tokenizer.eos_id and not batch["mask_loss"][row].any()
    model = build_model(config.model, tokenizer.vocab_size)
    init = lm_trainer.init_batch(config)
    params = nn.unbox(model.init(jax.random.key(0), **init)["params"])
    loss, metrics = lm_trainer.make_loss_fn(model, config)(
        params, {k: jnp.asarray(v) for k, v in batch.items()}, None)
    # A fresh LM is near chance over the vocabulary.
    assert abs(float(loss) - np.log(tokenizer.vocab_size)) < 1.0


def test_heldout_metrics_of_a_fresh_lm_are_near_chance():
    config = lm_config.get_config("tiny,batch=8")
    config.model.update(width=32, depth=1, num_heads=2, num_kv_heads=1, mlp_dim=64)
    vocab = load_tokenizer(config.data).vocab_size
    model = build_model(config.model, vocab)
    params = nn.unbox(model.init(jax.random.key(0), **lm_trainer.init_batch(config))["params"])
    metrics = lm_trainer.heldout_metrics(model, params, config, split="val", num_batches=1)
    assert metrics["target_tokens"] > 8 * 5  # every row contributes several targets
    assert abs(metrics["loss"] - np.log(vocab)) < 1.0
    np.testing.assert_allclose(metrics["perplexity"], np.exp(metrics["loss"]), rtol=1e-6)
