"""Every check a config and its inputs can fail before anything is built, each one line.

`main` calls `check(config, workdir)` after loading the config and before jax builds a model,
so a mistake costs a second, not a compile, and is reported as `error: <field>: <fix>`.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile

import ml_collections

from vlm_jax.configlib import ConfigError
from vlm_jax.data import packaged

SOURCES = ("world", "array_record", "tfds", "retrieval", "instructions")  # data/sources.py


def check(config: ml_collections.ConfigDict, workdir: str, device_count: int) -> None:
    """Raise ConfigError naming the first wrong field of `config` (or the workdir) and its fix."""
    _check_steps(config)
    _check_batch(config, device_count)
    _check_names(config)
    _check_data(config.data)
    _check_source_decodes(config.data)
    _check_workdir(workdir)


def _positive(config, field: str, fix: str) -> None:
    if config[field] <= 0:
        raise ConfigError(f"{field}={config[field]} must be > 0; {fix}")


def _check_steps(config) -> None:
    _positive(config, "total_steps", "e.g. --config.total_steps=1000")
    _positive(config, "log_every", "e.g. --config.log_every=50")
    _positive(config, "checkpoint_every", "e.g. --config.checkpoint_every=500 (saving at the "
              "end and on SIGTERM happens anyway)")
    _positive(config, "keep_checkpoints", "it would let the final checkpoint be deleted; "
              "e.g. --config.keep_checkpoints=2")
    if config.eval_every < 0:
        raise ConfigError(f"eval_every={config.eval_every} must be >= 0 (0: at the end only)")


def _check_batch(config, device_count: int) -> None:
    from vlm_jax import parallel

    batch, accum = config.batch_size, config.grad_accum_steps
    if batch <= 0:
        raise ConfigError(f"batch_size={batch} must be > 0")
    if accum <= 0:
        raise ConfigError(f"grad_accum_steps={accum} must be >= 1")
    if batch % accum:
        raise ConfigError(f"batch_size={batch} is not divisible by grad_accum_steps={accum}; "
                          f"use a multiple of {accum}")
    for axis, size in config.mesh.items():
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis}={size}: use a positive size, or -1 for the rest "
                              "of the devices")
    try:
        data, fsdp, _ = parallel.mesh_shape(config.mesh, device_count)
    except ValueError as error:
        raise ConfigError(f"mesh: {error}") from None
    shards = data * fsdp * accum
    if batch % shards:
        raise ConfigError(
            f"batch_size={batch} is not divisible by the {data * fsdp} batch shards "
            f"(mesh data={data} x fsdp={fsdp}) times grad_accum_steps={accum}; use a multiple "
            f"of {shards}")


def _check_names(config) -> None:
    from vlm_jax import models, trainers

    for field, name, known in (("trainer", config.trainer, trainers.TRAINERS),
                               ("model.name", config.model.name, models.FAMILIES)):
        if name not in known and not name.startswith(models.MODULE_PREFIX):
            raise ConfigError(f"{field}={name!r} is unknown; use one of {', '.join(known)}, "
                              "or module:<import path> for one kept outside vlm_jax")
    for tower in ("image", "text"):
        if tower in config.model:
            try:
                models.tower_kwargs(config.model[tower])
            except ValueError as error:
                raise ConfigError(f"model.{tower}: {error}") from None
    if config.trainer == "contrastive" and "loss" in config:
        from vlm_jax.losses import terms

        if config.loss.name not in terms.LOSSES:
            raise ConfigError(f"loss.name={config.loss.name!r} is unknown; use one of "
                              f"{', '.join(terms.LOSSES)}")


def _check_data(data) -> None:
    if data.source not in SOURCES:
        raise ConfigError(f"data.source={data.source!r} is unknown; use one of "
                          f"{', '.join(SOURCES)}")
    if data.source == "array_record":
        if not data.array_record_pattern:
            raise ConfigError("data.source=array_record needs data.array_record_pattern "
                              "(e.g. --config.data.array_record_pattern='/data/train-*')")
        if not glob.glob(data.array_record_pattern):
            raise ConfigError(f"data.array_record_pattern={data.array_record_pattern!r} "
                              "matches no file; check the path")
    if data.source == "retrieval" and data.retrieval.k > 0 and not os.path.exists(
            os.path.join(data.retrieval.retriever, "config.json")):
        raise ConfigError(f"data.retrieval.retriever={data.retrieval.retriever!r} holds no run; "
                          "train configs/siglip.py:tiny and pass retriever=<its workdir>")
    if data.source == "tfds" and not data.tfds_name:
        raise ConfigError("data.source=tfds needs data.tfds_name (e.g. "
                          "--config.data.tfds_name=coco_captions)")
    tokenizer = data.tokenizer
    if (tokenizer != "world" and tokenizer not in packaged.PACKAGED_MODELS
            and not os.path.isfile(tokenizer)):
        raise ConfigError(f"data.tokenizer={tokenizer!r} is not a file; use 'world', a packaged "
                          f"model ({', '.join(packaged.PACKAGED_MODELS)}), a SentencePiece "
                          ".model, a tokenizer.json or a .gguf path")
    if tokenizer == "world" and data.vocab_size < 8:
        raise ConfigError(f"data.vocab_size={data.vocab_size} is too small for the world "
                          "tokenizer; use e.g. 256")


# Records tried, evenly spread over the source: if none decodes, the data (or its format) is
# wrong, not noisy; the pipeline replaces the odd corrupt record later.
PROBE_RECORDS = 8


def _check_source_decodes(data) -> None:
    """Opens a file-backed train source and decodes a few records: an all-corrupt source, a TFDS
    dataset that is not prepared or whose features would import TensorFlow, are one line now,
    not a traceback from a data worker after the model compiled."""
    if data.source not in ("array_record", "tfds"):  # generated, or built on the world
        return
    from vlm_jax.data import sources

    had_tensorflow = "tensorflow" in sys.modules
    try:
        source = sources.make_source(data, "train")
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"data.source={data.source}: {error}") from None
    if len(source) == 0:
        raise ConfigError(f"data: {source!r} holds no records; point the data paths at "
                          "written shards")
    failures = []
    for index in sorted({int(i) for i in _spread(len(source), PROBE_RECORDS)}):
        try:
            source[index]
        except sources.CorruptRecordError as error:
            if _needs_tensorflow(error):
                raise ConfigError(_TENSORFLOW_FIX.format(name=data.tfds_name)) from None
            failures.append(error)
        else:
            break
    else:
        raise ConfigError(f"data: none of {len(failures)} records tried decodes (last: "
                          f"{failures[-1]}); these are not vlm_jax examples: write them with "
                          "python -m vlm_jax.data.convert (or sources.write_array_record)")
    if data.source == "tfds" and not had_tensorflow and "tensorflow" in sys.modules:
        raise ConfigError(_TENSORFLOW_FIX.format(name=data.tfds_name))


_TENSORFLOW_FIX = ("data.tfds_name={name!r}: reading its features imports TensorFlow; prepare it "
                   "with `tfds build {name} --file_format=array_record` (read without TF) or "
                   "convert it: python -m vlm_jax.data.convert --format=tfds")


def _spread(size: int, count: int) -> list[int]:
    return [round(k * (size - 1) / max(1, count - 1)) for k in range(min(size, count))]


def _needs_tensorflow(error: BaseException) -> bool:
    """Whether a decode failed because TensorFlow is missing (tfds decodes some features,
    e.g. tf.string-encoded images of a TFRecord-era builder, only through TF)."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == \
                "tensorflow":
            return True
        error = error.__cause__ or error.__context__
    return False


def _check_workdir(workdir: str) -> None:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir} is a file; name a directory")
    parent = workdir
    while not os.path.exists(parent):  # the nearest folder that exists must take new files
        parent = os.path.dirname(parent) or "."
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as error:
        raise ConfigError(f"--workdir={workdir} cannot be written ({error.strerror} in "
                          f"{parent}); choose a writable directory") from None
