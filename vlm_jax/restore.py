"""Rebuild a trained run from its workdir, to evaluate it again: the config it recorded
(workdir/config.json), its model and tokenizer, and the params of its latest checkpoint.

Used by the report scripts (re-running evals on finished runs without retraining) and by
CLIPScore with a fixed judge model (`eval_config.clipscore_workdir`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import jax
import ml_collections

from vlm_jax import init_from, loop, parallel, trainers
from vlm_jax.evals.caption_model import CaptionModel, from_captioner
from vlm_jax.evals.scoring import Scorer


@dataclass(frozen=True)
class RestoredRun:
    """A run's config, trainer module, model, params, tokenizer and mesh."""

    config: ml_collections.ConfigDict
    trainer: Any
    model: Any
    params: Any
    tokenizer: Any
    mesh: jax.sharding.Mesh

    def scorer(self) -> Scorer:
        return self.trainer.make_scorer(self.model, self.params, self.tokenizer, self.mesh,
                                        self.config)

    def caption_model(self) -> CaptionModel | None:
        """The run's CaptionModel, or None when its trainer cannot caption."""
        if not hasattr(self.trainer, "make_captioner"):
            return None
        return from_captioner(self.trainer.make_captioner(
            self.model, self.params, self.tokenizer, self.mesh, self.config))


def restore_run(workdir: str) -> RestoredRun:
    """The run in `workdir` at its latest checkpoint (FileNotFoundError if it has none)."""
    workdir = os.path.abspath(workdir)  # orbax reads no metadata through a relative path
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} holds no run (no config.json); train one with "
                                "python -m vlm_jax.main --config=... --workdir=...")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f)["config"])
    trainer = trainers.get_trainer(config.trainer)
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.logical_rules(config)
    tokenizer = loop.load_tokenizer(config.data)
    model, state, _, _ = loop.build(config, trainer, tokenizer.vocab_size, mesh, rules)
    # The latest checkpoint's params, straight into the fresh state's shardings.
    state = init_from.load_into(state, workdir, verbose=False)
    return RestoredRun(config, trainer, model, state.params, tokenizer, mesh)
