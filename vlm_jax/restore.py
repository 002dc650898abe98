"""Rebuild a run's pieces from its config, for training or to evaluate it again: the tokenizer
the config names, and a trained run restored from its workdir (the config it recorded in
workdir/config.json, its model and the params of its latest checkpoint).

Restoring to evaluate reads the params only: no optimizer state is built or read (AdamW's is
about twice the params). Used by the report scripts (re-running evals on finished runs without
retraining) and for CLIPScore with a fixed judge model (`evals.clipscore_workdir`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax import configlib, evals, init_from, models, parallel, trainers
from vlm_jax.data import tokenizer as tokenizers
from vlm_jax.evals.caption_model import CaptionModel
from vlm_jax.evals.scoring import Scorer


class RestoredParams(flax.struct.PyTreeNode):
    """What `init_from.load_into` fills: the params, without the train state's optimizer."""

    params: Any


@dataclass(frozen=True)
class RestoredRun:
    """A run's config, trainer module, model, params, tokenizer and mesh."""

    config: ml_collections.ConfigDict
    trainer: ModuleType
    model: Any
    params: Any
    tokenizer: Any
    mesh: jax.sharding.Mesh

    def scorer(self) -> Scorer | None:
        """The run's Scorer, or None when its trainer has no "scorer" capability."""
        return trainers.serve(self.trainer, "scorer", self.model, self.params, self.tokenizer,
                              self.mesh, self.config)

    def caption_model(self) -> CaptionModel | None:
        """The run's CaptionModel, or None when its trainer cannot caption."""
        return trainers.serve(self.trainer, "captioner", self.model, self.params,
                              self.tokenizer, self.mesh, self.config)

    def served(self, names) -> dict:
        """What the evals `names` need of this run, as `evals.run_served` takes it
        (`trainers.serve_evals`: None where the trainer lacks a capability)."""
        return trainers.serve_evals(self.trainer, names, self.model, self.params,
                                    self.tokenizer, self.mesh, self.config)


def abstract_params(model, trainer: ModuleType, config: ml_collections.ConfigDict, mesh,
                    rules):
    """The model's params as ShapeDtypeStructs with their shardings; nothing is allocated."""
    init_batch = trainer.init_batch(config)
    with nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda rng: model.init(rng, **init_batch)["params"],
                               jax.random.PRNGKey(0))
        shardings = parallel.logical_shardings(boxed, mesh, rules)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed),
        shardings)


# Top-level config keys naming another run that a restored run still reads (Chameleon's frozen
# VQ tokenizer; runs a model merely started from, `init_from`, are in its checkpoint already).
# A family whose serving reads another run at eval time adds its key here.
RUN_REFERENCES = ("vq",)


def resolve_run_paths(recorded: ml_collections.ConfigDict, workdir: str) -> None:
    """Make the relative RUN_REFERENCES of a recorded config absolute, in place.

    A config records the runs it reads as given on the command line (configs/chameleon.py:tiny,
    vq=runs/families/vq_tiny): relative to the directory it was trained in, which a later
    reader need not share (a report run from another cwd, a runs folder copied elsewhere).
    Each is resolved, first hit wins, against: every ancestor of `workdir` (the tree it was
    trained in, moved whole), the folder holding `workdir` by the path's last component (a
    runs folder copied on its own), and the current directory. Only a directory holding a run
    (config.json) counts; a path none of them finds stays as it was, for its loader to name.
    """
    workdir = os.path.abspath(workdir)
    ancestors = [os.path.dirname(workdir)]
    while os.path.dirname(ancestors[-1]) != ancestors[-1]:
        ancestors.append(os.path.dirname(ancestors[-1]))
    for key in RUN_REFERENCES:
        value = recorded.get(key, "")
        if not isinstance(value, str) or not value or os.path.isabs(value):
            continue
        candidates = [os.path.join(ancestor, value) for ancestor in ancestors]
        candidates += [os.path.join(os.path.dirname(workdir),
                                    os.path.basename(os.path.normpath(value))),
                       os.path.abspath(value)]
        found = next((path for path in candidates
                      if os.path.isfile(os.path.join(path, "config.json"))), None)
        if found is not None:
            recorded[key] = os.path.normpath(found)


def restore_run(workdir: str) -> RestoredRun:
    """The run in `workdir` at its latest checkpoint (FileNotFoundError if it has none)."""
    workdir = os.path.abspath(workdir)  # orbax reads no metadata through a relative path
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} holds no run (no config.json); train one with "
                                "python -m vlm_jax.main --config=... --workdir=...")
    with open(path) as f:
        recorded = ml_collections.ConfigDict(json.load(f)["config"])
    with recorded.unlocked():  # the directory it was trained in may have moved since
        recorded.workdir = ""
        if "evals" in recorded:
            recorded.evals.output_dir = ""
        resolve_run_paths(recorded, workdir)
    config = configlib.with_workdir(recorded, workdir)
    trainer = trainers.get_trainer(config.trainer)
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.logical_rules(config)
    tokenizer = tokenizers.load_tokenizer(config.data)
    model = models.build_model(config.model, tokenizer.vocab_size, jnp.dtype(config.compute_dtype))
    # The latest checkpoint's params, read straight into their shardings.
    target = RestoredParams(abstract_params(model, trainer, config, mesh, rules))
    restored = init_from.load_into(target, workdir, verbose=False)
    return RestoredRun(config, trainer, model, restored.params, tokenizer, mesh)


def clipscore_judge(eval_config, names) -> Scorer | None:
    """The Scorer of the run in `eval_config.clipscore_workdir`, which
    `evals.run_evals(names, ..., judge=...)` uses for CLIPScore; None when that is unset or
    the evals `names` do not caption."""
    workdir = eval_config.get("clipscore_workdir", "")
    if not workdir or "captioning" not in evals.capabilities_needed(names, eval_config):
        return None
    judge = restore_run(workdir).scorer()
    if judge is None:
        raise ValueError(f"evals.clipscore_workdir {workdir} holds a run whose trainer cannot "
                         "embed (no 'scorer' capability); point it at a two-tower run")
    return judge
