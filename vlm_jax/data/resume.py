"""What a checkpoint records about the data, and whether a resume continues it exactly.

The data position is a function of the global step (pipeline.py), so a resume needs only the
step, plus proof that the order is the same: global batch, seed, source and batch format. The
process count is recorded too; changing it is exact (each process recomputes its slice of the
same global batches), so it is allowed and reported. Anything else is one clear error.
"""

from __future__ import annotations

from typing import Any

import ml_collections

# Data fields that change which example sits at which position (or what it becomes).
ORDER_FIELDS = ("source", "world_seed", "array_record_pattern", "tfds_name", "tfds_split",
                "tfds_data_dir", "image_key", "caption_key", "shuffle", "flip", "format",
                "mixture", "caption_prompt", "max_images", "image_tokens")


def run_record(data_config: ml_collections.ConfigDict, global_batch: int, seed: int,
               process_count: int) -> dict[str, Any]:
    """The JSON-ready description of a run's data order, saved with every checkpoint."""
    data = {field: data_config.get(field) for field in ORDER_FIELDS}
    data["mixture"] = [list(pair) for pair in data["mixture"] or ()]
    return {"process_count": int(process_count), "global_batch": int(global_batch),
            "seed": int(seed), "data": data}


def data_state(step: int, record: dict[str, Any], corrupt_records: int) -> dict[str, Any]:
    """What the loop saves with the checkpoint of `step`."""
    return {"step": int(step), "run": record, "corrupt_records": int(corrupt_records)}


def check_resume(saved: dict[str, Any], record: dict[str, Any], step: int) -> str:
    """'' or a note (a changed process count: exact, elastic); ValueError naming the field when
    the order would not continue where the checkpoint of `step` left it."""
    if "run" not in saved:
        raise ValueError(
            f"the checkpoint at step {step} predates data records (it saved one iterator state "
            "from process 0, which does not resume several processes exactly); resume it with "
            "the vlm_jax version that wrote it, or use a new --workdir")
    before = saved["run"]
    changed = []
    for key in ("global_batch", "seed"):
        if before.get(key) != record[key]:
            changed.append(f"{'batch_size' if key == 'global_batch' else key}: "
                           f"{before.get(key)!r} -> {record[key]!r}")
    for field, value in record["data"].items():
        if before.get("data", {}).get(field) != value:
            changed.append(f"data.{field}: {before.get('data', {}).get(field)!r} -> {value!r}")
    if changed:
        raise ValueError(
            f"the checkpoint at step {step} was written with another data order ("
            + "; ".join(changed) + "); resuming would not continue its examples. Restore those "
            "values, or use a new --workdir")
    if before.get("process_count") != record["process_count"]:
        return (f"resuming on {record['process_count']} process(es), the checkpoint ran on "
                f"{before.get('process_count')}: the global batches continue exactly")
    return ""
