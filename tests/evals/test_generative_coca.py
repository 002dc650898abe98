"""The generative evals on a real (untrained, tiny) CoCa through the trainer's captioner and
scorer: every key present, every value in its range, one compile per function."""

import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from configs import coca as coca_config
from vlm_jax import evals, models, parallel
from vlm_jax.data.tokenizer import world_tokenizer
from vlm_jax.trainers import coca as coca_trainer

GENERATIVE = ("captioning", "vqa", "pope", "genzeroshot", "gencompositional")


def tiny_coca():
    config = coca_config.get_config("tiny")
    config.model.image.update(width=32, depth=1, mlp_dim=64)
    config.model.text.update(width=32, depth=1, mlp_dim=64, max_len=24)
    config.model.multimodal.update(width=32, depth=1, mlp_dim=64)
    config.model.embed_dim, config.model.caption_queries = 16, 4
    config.data.update(image_size=16, text_length=24)
    config.decode.max_len = 10
    config.evals.update(dict(batch_size=64, captioning_size=6, vqa_size=12, pope_size=5,
                             pope_stats_size=100, genzeroshot_size=8, probe_size=4))
    tokenizer = world_tokenizer(256)
    model = models.build_model(config.model, tokenizer.vocab_size)
    images = np.zeros((1, 16, 16, 3), np.uint8)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), images,
                                 np.zeros((1, 24), np.int32))["params"])
    # One device: the sharded path is the trainer's (tested there); compiling for one is faster.
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
                              devices=jax.devices()[:1])
    scorer = coca_trainer.make_scorer(model, params, tokenizer, mesh, config)
    captioner = coca_trainer.make_captioner(model, params, tokenizer, mesh, config)
    return config, scorer, captioner


@pytest.mark.slow  # a whole-suite smoke (~1 min); each eval's numbers are tested on its own
def test_generative_evals_run_on_a_real_coca():
    config, scorer, caption_model = tiny_coca()
    results = evals.run_evals(GENERATIVE, scorer, config.evals, caption_model)
    prefixes = {key.split("/")[0] for key in results}
    assert prefixes == set(GENERATIVE)
    for key, value in results.items():
        assert type(value) is float and math.isfinite(value), key
        if key.endswith("/cider"):
            assert 0.0 <= value <= 10.0, key
        elif "clipscore" in key:
            assert 0.0 <= value <= 2.5, key
        else:
            assert 0.0 <= value <= 1.0, key
    # One model answers both ways: the contrastive zero-shot score sits beside the likelihood.
    assert "genzeroshot/single_object/contrastive_top1" in results
