"""BLIP-2 stage 1's trainer: the loss is the weighted sum of ITC, ITM and ITG (each computed
by the model's own passes), the image encoder is the only frozen part, and the scorer ranks
by the max over queries of the cosine (NumPy).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import blip2 as blip2_config
from vlm_jax import models, optim, parallel
from vlm_jax.configlib import ConfigError
from vlm_jax.losses import blip2 as blip2_losses
from vlm_jax.losses import generative
from vlm_jax.trainers import blip2 as trainer

VOCAB, BATCH, LENGTH = 40, 4, 6


@pytest.fixture(scope="module")
def setup():
    config = blip2_config.get_config(f"tiny,batch={BATCH},image_size=16,text_length={LENGTH}")
    config.model.image.update(width=16, depth=1, num_heads=2, mlp_dim=16)
    config.model.qformer.update(width=16, depth=2, num_heads=2, mlp_dim=24, num_queries=3,
                                max_len=8)
    config.model.embed_dim = 8
    config.model.cls_id, config.model.dec_id = VOCAB - 2, VOCAB - 1
    config.loss.update(itc_weight=1.0, itm_weight=2.0, itg_weight=0.5)
    model = models.build_model(config.model, VOCAB)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), **trainer.init_batch(config))["params"])
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, VOCAB - 2, size=(BATCH, LENGTH)).astype(np.int32)
    tokens[:, 4:], tokens[1, 2:] = 0, 0  # right padding
    batch = {"image": rng.integers(0, 256, (BATCH, 16, 16, 3), dtype=np.uint8),
             "text_tokens": tokens}
    return config, model, params, batch


def test_loss_is_the_weighted_sum_of_the_model_passes(setup):
    config, model, params, batch = setup
    rng = jax.random.PRNGKey(5)
    loss, metrics = jax.jit(trainer.make_loss_fn(model, config))(params, batch, rng)
    np.testing.assert_allclose(
        loss, metrics["itc_loss"] + 2.0 * metrics["itm_loss"] + 0.5 * metrics["itg_loss"],
        rtol=1e-6)
    # Each term recomputed outside the trainer from the model's passes.
    apply = lambda method, *args: model.apply({"params": params}, *args, method=method)
    features = apply(model.image_features, batch["image"])
    query_emb, text_emb, extras = apply(model.contrastive, features, batch["text_tokens"])
    sims = np.einsum("iqe,te->itq", query_emb, text_emb).max(-1) * float(extras["logit_scale"])
    negative_text, negative_image = blip2_losses.sample_hard_negatives(rng, jnp.asarray(sims))
    pairs = blip2_losses.matching_batch(features, batch["text_tokens"], negative_text,
                                        negative_image)
    itm, _ = blip2_losses.itm_loss(apply(model.match, *pairs))
    np.testing.assert_allclose(metrics["itm_loss"], itm, rtol=1e-5)
    tokens = batch["text_tokens"]
    itg, _ = generative.caption_loss(apply(model.caption_logits, features, tokens), tokens,
                                     tokens != 0, config.loss.label_smoothing)
    np.testing.assert_allclose(metrics["itg_loss"], itg, rtol=1e-5)
    assert float(metrics["itm_loss"]) > 0.1 and float(metrics["itg_loss"]) > 1.0


def test_only_the_image_encoder_is_frozen(setup):
    config, _, params, _ = setup
    groups = optim.param_groups(params, config.optim.param_rules)
    frozen = {path.split("/")[0] for path, group in
              ((optim.param_path(p), g) for p, g in jax.tree_util.tree_flatten_with_path(groups)[0])
              if group == optim.FREEZE}
    assert frozen == {"image_tower"}


def test_scorer_similarity_is_the_max_over_queries(setup):
    config, model, params, batch = setup
    similarity = jax.jit(lambda q, t: model.apply({"params": params}, q, t,
                                                  method=model.similarity))
    rng = np.random.default_rng(1)
    queries, texts = rng.normal(size=(5, 3, 8)), rng.normal(size=(7, 8))
    expected = np.array([[max(queries[i, q] @ texts[j] for q in range(3)) for j in range(7)]
                         for i in range(5)])
    np.testing.assert_allclose(similarity(queries, texts), expected, rtol=1e-5)


def test_config_errors():
    with pytest.raises(ConfigError, match="stage=3"):
        blip2_config.get_config("tiny,stage=3")
    # Stage 2 is the prefix_lm trainer's (tests/trainers/test_qformer_lm.py).
    assert blip2_config.get_config("tiny,stage=2").trainer == "prefix_lm"
    config = blip2_config.get_config("tiny")
    assert config.model.cls_id == config.data.vocab_size  # [CLS], [DEC] after the base vocabulary
    assert config.data.special_tokens == ("[CLS]", "[DEC]")


class TaskTokenizer:
    """Just what the matcher needs: the task tokens' ids and an encode."""

    def token_id(self, name):
        return {"[CLS]": VOCAB - 2, "[DEC]": VOCAB - 1}[name]

    def encode(self, texts, length):
        return np.full((len(texts), length), 5, np.int32)


def test_matcher_gives_the_itm_log_odds_of_aligned_rows(setup):
    config, model, params, batch = setup
    mesh = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    matcher = trainer.make_matcher(model, params, TaskTokenizer(), mesh, config)
    got = matcher.match(batch["image"], batch["text_tokens"])
    apply = lambda method, *args: model.apply({"params": params}, *args, method=method)
    logits = np.asarray(apply(model.match, apply(model.image_features, batch["image"]),
                              batch["text_tokens"]))
    np.testing.assert_allclose(got, logits[:, 1] - logits[:, 0], rtol=1e-5, atol=1e-6)
    assert np.ptp(got) > 0  # rows differ
