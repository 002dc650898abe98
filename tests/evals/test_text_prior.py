"""The blind baseline (evals/text_prior.py, trainers/lm.make_text_prior): log P(text) against
one forward per prefix, the blind metrics against hand counts, the eval against NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm_jax import evals
from vlm_jax.data import world
from vlm_jax.data.tokenizer import load_tokenizer
from vlm_jax.evals import text_prior
from vlm_jax.models.lm import LM
from vlm_jax.trainers import lm as lm_trainer


def test_text_prior_is_the_chain_rule_over_prefixes():
    """log P(t) of make_text_prior equals the sum of log p(next | prefix), each prefix run
    through the LM on its own (no reliance on the causal mask or the one-token shift)."""
    data = ml_collections.ConfigDict(dict(tokenizer="world", vocab_size=256, text_length=12))
    tokenizer = load_tokenizer(data)
    model = LM(vocab_size=tokenizer.vocab_size, width=16, depth=1, num_heads=2, mlp_dim=32)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 11), jnp.int32))["params"])
    texts = ["a red cube.", "two blue spheres and a green cone above a red cube."]  # 2nd: cut
    prior = lm_trainer.make_text_prior(model, params, tokenizer, None,
                                       ml_collections.ConfigDict(dict(data=data)))
    got = prior.log_prior(texts)
    tokens = np.asarray(tokenizer.encode(texts, 12))
    for row in range(len(texts)):
        ids = [int(i) for i in tokens[row] if i != tokenizer.pad_id]
        expected = 0.0
        for t in range(1, len(ids)):
            logits = np.asarray(model.apply({"params": params}, jnp.asarray([ids[:t]])),
                                np.float64)[0, -1]
            expected += logits[ids[t]] - np.log(np.exp(logits - logits.max()).sum()) - \
                logits.max()
        np.testing.assert_allclose(got[row], expected, rtol=1e-5, atol=1e-4)
    assert got.shape == (2,) and np.all(got < 0)


def test_blind_probe_metrics_count_by_hand():
    prior = np.array([[0.0, -1.0], [-2.0, -1.0], [-1.0, -1.0], [-3.0, -0.5]])  # [P, caption]
    metrics = text_prior.probe_metrics(prior)
    # acc1: side 0's caption likelier in pair 0 only (a tie is never right).
    # acc2: per pair one image is right at most: pairs 0, 1, 3 give one each, the tie none.
    assert metrics == {"acc1": 0.25, "acc2": 3 / 8, "group": 0.0}


def _eval_config():
    config = evals.default_eval_config()
    config.update(genzeroshot_size=14, probe_size=6, batch_size=4, image_size=16)
    return config


def test_blindprior_eval_against_numpy():
    """A prior of minus the text's length: zero-shot picks the class with the shortest mean
    prompt for every image; acc1 counts pairs whose first caption is the shorter."""
    config = _eval_config()
    model = text_prior.TextPrior(log_prior=lambda texts: -np.array([len(t) for t in texts],
                                                                   float))
    results = evals.run_served(["blindprior"], {"text_prior": model}, config)
    _, labels, names = world.single_object_set("val", 14, seed=0, image_size=16)
    mean_length = [np.mean([len(t.format(n)) for t in world.ZEROSHOT_TEMPLATES]) for n in names]
    assert results["blindprior/single_object/top1"] == pytest.approx(
        np.mean(np.asarray(labels) == int(np.argmin(mean_length))))
    assert results["blindprior/single_object/chance"] == pytest.approx(1 / len(names))
    for kind in world.PROBE_KINDS:
        pairs = world.probe_pairs(kind, 6, seed=0, image_size=16)
        shorter = np.mean([len(p.captions[0]) < len(p.captions[1]) for p in pairs])
        assert results[f"blindprior/{kind}/acc1"] == pytest.approx(shorter), kind
        assert results[f"blindprior/{kind}/group"] == 0.0


def test_blindprior_needs_a_text_prior():
    with pytest.raises(ValueError, match="text_prior"):
        evals.run_served(["blindprior"], {"scorer": None}, _eval_config())
