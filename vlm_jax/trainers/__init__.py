"""Training loops selected by `config.trainer`: each module adds only what is special to it.

The trainer contract. A trainer module defines
  CAPABILITIES: frozenset of what it can serve to the evals, a subset of FACTORIES' keys;
  init_batch(config) -> dict: sample inputs its model is initialised with, as keyword
      arguments: the loop calls `model.init(rng, **init_batch(config))`;
  make_loss_fn(model, config, mesh=None) -> loss_fn(params, batch, rng) -> (loss, metrics);
and, for each capability, its factory (model, params, tokenizer, mesh, config) -> ...:
  "scorer":    make_scorer    -> vlm_jax.evals.scoring.Scorer (embedding evals);
  "captioner": make_captioner -> vlm_jax.evals.caption_model.CaptionModel (generative evals);
  "matcher":   make_matcher   -> vlm_jax.evals.matching.Matcher (ITM evals: reranked
               retrieval, ITM-scored probes);
  "image_likelihood": make_image_likelihood -> vlm_jax.evals.image_likelihood.ImageLikelihood
               (log p(image | text) of a text -> image model: image-likelihood zero-shot and
               probes);
  "reconstructor": make_reconstructor -> vlm_jax.evals.reconstruction.Reconstructor
               (masked-image reconstructions: a number and a PNG);
  "text_prior": make_text_prior -> vlm_jax.evals.text_prior.TextPrior (log P(text) of a
               text-only model: the blind baseline).
`config.workdir` is the run's directory during a run (loop.train fills it; "" outside one):
a trainer may keep files made for the run there (FLAVA's k-means codebook).
The shared loop in `vlm_jax.loop` does the rest (state, step, checkpoints, metrics, evals).

`config.trainer` names a module here (TRAINERS) or, for a family kept elsewhere (a project,
a test), "module:<importable.module.path>": a new family needs no edit to this package.
`check_evals(config)` refuses, before any model is built, evals the trainer cannot serve.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections
import numpy as np

from vlm_jax import configlib, evals

TRAINERS = ("contrastive", "llip", "coca", "vq", "flava", "maskvlm", "lm", "blip2", "prefix_lm",
            "early_fusion", "cm3leon")
# capability -> the factory a trainer with it defines
FACTORIES = {"scorer": "make_scorer", "captioner": "make_captioner", "matcher": "make_matcher",
             "image_likelihood": "make_image_likelihood", "reconstructor": "make_reconstructor",
             "text_prior": "make_text_prior"}
_MODULE_PREFIX = "module:"


def get_trainer(name: str) -> ModuleType:
    """The trainer module `name` (see the module docstring), checked against the contract."""
    if name.startswith(_MODULE_PREFIX):
        path = name[len(_MODULE_PREFIX):]
        try:
            module = importlib.import_module(path)
        except ImportError as error:
            raise ValueError(f"trainer {name!r}: cannot import {path!r} ({error}); give an "
                             "importable module path, e.g. module:my_project.trainer") from None
    elif name in TRAINERS:
        module = importlib.import_module(f"vlm_jax.trainers.{name}")
    else:
        raise ValueError(f"unknown trainer {name!r}; known: {', '.join(TRAINERS)}, or "
                         "module:<path> for a trainer module kept elsewhere")
    _check_contract(name, module)
    return module


def _check_contract(name: str, module: ModuleType) -> None:
    capabilities = getattr(module, "CAPABILITIES", None)
    if not isinstance(capabilities, frozenset) or not capabilities <= set(FACTORIES):
        raise ValueError(f"trainer {name!r} must declare CAPABILITIES, a frozenset of "
                         f"{sorted(FACTORIES)}; it has {capabilities!r}")
    required = ["init_batch", "make_loss_fn", *(FACTORIES[c] for c in sorted(capabilities))]
    missing = [function for function in required if not callable(getattr(module, function, None))]
    if missing:
        raise ValueError(f"trainer {name!r} ({module.__name__}) lacks {', '.join(missing)}, "
                         "which the trainer contract (vlm_jax/trainers/__init__.py) requires "
                         f"of a trainer with CAPABILITIES {sorted(capabilities)}")


def serve(trainer: ModuleType, capability: str, model, params, tokenizer, mesh,
          config: ml_collections.ConfigDict):
    """The trainer's `capability` (a Scorer, a CaptionModel, a Matcher) of the model, or None
    without it."""
    if capability not in trainer.CAPABILITIES:
        return None
    return getattr(trainer, FACTORIES[capability])(model, params, tokenizer, mesh, config)


def serve_evals(trainer: ModuleType, names, model, params, tokenizer, mesh,
                config: ml_collections.ConfigDict) -> dict:
    """{capability: what the trainer serves} for the evals `names`: the one dict
    `evals.run_served` takes. It holds every capability those evals need, and the scorer
    whenever the trainer has one (generative evals score with it beside their likelihoods);
    a capability the trainer lacks is None."""
    needed = set().union(*evals.capabilities_needed(names, config.evals).values())
    needed |= {"scorer"} & trainer.CAPABILITIES
    return {capability: serve(trainer, capability, model, params, tokenizer, mesh, config)
            for capability in sorted(needed)}


def check_evals(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first eval of `config.evals.names` the trainer cannot serve
    (or an unknown trainer or eval, or a bad eval dataset spec), before any model is built."""
    try:
        trainer = get_trainer(config.trainer)
        needed = evals.capabilities_needed(config.evals.names, config.evals)
    except ValueError as error:
        raise configlib.ConfigError(str(error)) from None
    for eval_name, capabilities in needed.items():
        lacking = sorted(capabilities - trainer.CAPABILITIES)
        if lacking:
            raise configlib.ConfigError(
                f"eval {eval_name!r} needs a {' and a '.join(lacking)}, which trainer "
                f"{config.trainer!r} cannot make (its capabilities: "
                f"{', '.join(sorted(trainer.CAPABILITIES)) or 'none'}); drop {eval_name!r} from "
                "config.evals.names, or use a trainer that offers it")


def image_text_init_batch(config: ml_collections.ConfigDict) -> dict:
    """{"images": uint8 [1, S, S, 3], "text_tokens": int32 [1, L]}: the init inputs of the
    image-text families (S = data.image_size, L = data.text_length)."""
    size, length = config.data.image_size, config.data.text_length
    return {"images": np.zeros((1, size, size, 3), np.uint8),
            "text_tokens": np.zeros((1, length), np.int32)}
