"""Evaluations on the synthetic world: zero-shot classification, retrieval, compositional probes.

Each eval is `run(scorer, eval_config) -> {"<eval>/<split>/<metric>": float}`; `run_evals`
runs a list of them by name and `format_table` prints the results for the console.
"""

import numbers
from collections.abc import Callable, Mapping, Sequence

import ml_collections

from vlm_jax.evals import compositional, retrieval, zeroshot
from vlm_jax.evals.scoring import Scorer

EVALS: dict[str, Callable[[Scorer, ml_collections.ConfigDict], dict[str, float]]] = {
    "zeroshot": zeroshot.run,
    "retrieval": retrieval.run,
    "compositional": compositional.run,
}

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
        }
    )


def _check_eval_config(eval_config) -> None:
    missing = [name for name in (*_SIZE_FIELDS, "seed") if not hasattr(eval_config, name)]
    if missing:
        raise ValueError(
            f"eval_config lacks {missing}; start from vlm_jax.evals.default_eval_config()."
        )
    for name in _SIZE_FIELDS:
        value = getattr(eval_config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"eval_config.{name} must be a positive integer, got {value!r}.")


def run_evals(names: Sequence[str] | str, scorer: Scorer, eval_config) -> dict[str, float]:
    """Results of the evals `names` (a list, or one comma-separated string), merged in order."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in names if name not in EVALS]
    if unknown:
        raise ValueError(f"unknown evals {unknown}; choose from {sorted(EVALS)}.")
    _check_eval_config(eval_config)
    results = {}
    for name in dict.fromkeys(names):  # each eval once, in the order given
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
