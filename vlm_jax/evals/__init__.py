"""Evaluations on the synthetic world: zero-shot classification, retrieval, compositional probes;
and, for generative models, captioning, VQA, POPE hallucination and likelihood-scored
zero-shot and compositional probes.

Each contrastive eval is `run(scorer, eval_config)`, each generative one
`run(caption_model, scorer_or_None, eval_config)` (EVALS, GENERATIVE_EVALS), both returning
{"<eval>/<split>/<metric>": float}; `run_evals` runs a list of them by name and
`format_table` prints the results for the console.
"""

import numbers
from collections.abc import Callable, Mapping, Sequence

import ml_collections

from vlm_jax.evals import (
    captioning,
    compositional,
    generative_compositional,
    generative_zeroshot,
    pope,
    retrieval,
    vqa,
    zeroshot,
)
from vlm_jax.evals.caption_model import CaptionModel
from vlm_jax.evals.scoring import Scorer

EVALS: dict[str, Callable[[Scorer, ml_collections.ConfigDict], dict[str, float]]] = {
    "zeroshot": zeroshot.run,
    "retrieval": retrieval.run,
    "compositional": compositional.run,
}
# Evals of a generative model (a CaptionModel); the scorer, when the model has one, is used
# for CLIPScore and the contrastive zero-shot score beside the likelihood one.
GENERATIVE_EVALS: dict[
    str, Callable[[CaptionModel, Scorer | None, ml_collections.ConfigDict], dict[str, float]]
] = {
    "captioning": captioning.run,
    "vqa": vqa.run,
    "pope": pope.run,
    "genzeroshot": generative_zeroshot.run,
    "gencompositional": generative_compositional.run,
}
# eval_config fields of the generative evals, with their defaults; a config that lacks them
# (e.g. one recorded before they existed) gets these.
GENERATIVE_DEFAULTS = {
    "captioning_size": 200,  # val images captioned
    "caption_references": 5,  # true captions per image for CIDEr / BLEU
    "clipscore_workdir": "",  # a two-tower run judging CLIPScore; "": the evaluated model's
    "vqa_size": 400,  # questions, the four kinds in turn
    "pope_size": 200,  # val images polled
    "pope_questions": 3,  # present objects asked about per image (and as many absent ones)
    "pope_stats_size": 5000,  # train scenes counted for POPE's popular / adversarial objects
    "genzeroshot_size": 240,  # single-object images for likelihood zero-shot
}
_GENERATIVE_SIZE_FIELDS = tuple(
    name for name, value in GENERATIVE_DEFAULTS.items() if isinstance(value, int))

# eval_config fields that must be positive integers.
_SIZE_FIELDS = ("batch_size", "retrieval_size", "probe_size", "zeroshot_size", "image_size")


def default_eval_config() -> ml_collections.ConfigDict:
    """The eval_config fields every eval reads, with their defaults."""
    return ml_collections.ConfigDict(
        {
            "names": list(EVALS),
            "batch_size": 256,  # images or texts per encoder call
            "retrieval_size": 1000,  # examples per retrieval split
            "probe_size": 200,  # pairs per compositional probe kind
            "zeroshot_size": 1000,  # single-object images per zero-shot split
            "seed": 0,  # world seed of every eval set
            "image_size": 32,
            **GENERATIVE_DEFAULTS,
        }
    )


def _check_eval_config(eval_config) -> None:
    missing = [name for name in (*_SIZE_FIELDS, "seed") if not hasattr(eval_config, name)]
    if missing:
        raise ValueError(
            f"eval_config lacks {missing}; start from vlm_jax.evals.default_eval_config()."
        )
    _check_positive(eval_config, _SIZE_FIELDS)


def _check_positive(eval_config, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(eval_config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"eval_config.{name} must be a positive integer, got {value!r}.")


def _split_names(names: Sequence[str] | str) -> list[str]:
    if isinstance(names, str):
        return [name.strip() for name in names.split(",") if name.strip()]
    return list(names)


def needs_caption_model(names: Sequence[str] | str) -> bool:
    """Whether any of the evals `names` is a generative one (wants a CaptionModel)."""
    return any(name in GENERATIVE_EVALS for name in _split_names(names))


def _with_generative_defaults(eval_config) -> ml_collections.ConfigDict:
    completed = ml_collections.ConfigDict(dict(eval_config))
    for name, value in GENERATIVE_DEFAULTS.items():
        if name not in completed:
            completed[name] = value
    _check_positive(completed, _GENERATIVE_SIZE_FIELDS)
    return completed


def run_evals(
    names: Sequence[str] | str,
    scorer: Scorer | None,
    eval_config,
    caption_model: CaptionModel | None = None,
) -> dict[str, float]:
    """Results of the evals `names` (a list, or one comma-separated string), merged in order.

    Contrastive evals need `scorer`, generative ones `caption_model` (e.g.
    `caption_model.from_captioner(trainer.make_captioner(...))`)."""
    names = _split_names(names)
    unknown = [name for name in names if name not in EVALS and name not in GENERATIVE_EVALS]
    if unknown:
        raise ValueError(
            f"unknown evals {unknown}; choose from {sorted(EVALS) + sorted(GENERATIVE_EVALS)}.")
    generative = [name for name in names if name in GENERATIVE_EVALS]
    if generative and caption_model is None:
        raise ValueError(f"evals {generative} need a generative model (a trainer with "
                         "make_captioner, e.g. CoCa); this model only embeds.")
    if scorer is None and any(name in EVALS for name in names):
        raise ValueError(f"evals {[n for n in names if n in EVALS]} need a Scorer.")
    _check_eval_config(eval_config)
    if generative:
        eval_config = _with_generative_defaults(eval_config)
    results = {}
    for name in dict.fromkeys(names):  # each eval once, in the order given
        if name in GENERATIVE_EVALS:
            results.update(GENERATIVE_EVALS[name](caption_model, scorer, eval_config))
        else:
            results.update(EVALS[name](scorer, eval_config))
    return results


def format_table(results: Mapping[str, float]) -> str:
    """An aligned table, one metric per row: eval, split, metric, value (4 decimals)."""
    rows = []
    for key, value in results.items():
        parts = key.split("/", 2)
        parts += [""] * (3 - len(parts))
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        else:
            text = f"{float(value):.4f}"
        rows.append((*parts, text))
    header = ("eval", "split", "metric", "value")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(4)]
    lines = []
    for row in [header, *rows]:
        left = "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=False))
        lines.append(f"{left}  {row[3].rjust(widths[3])}")
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
