"""Command line: train (and evaluate) a model from a config.

    python -m vlm_jax.main --config=configs/siglip.py:tiny --workdir=/tmp/run \
        [--config.total_steps=100 --config.optim.lr=1e-3 ...]

Rerunning with the same --workdir resumes from its latest checkpoint. Wrong config keys or
values, a workdir of another model, or a NaN loss end with one line naming the problem
(vlm_jax/validate.py checks the config before anything is built). SIGTERM or Ctrl-C saves at
a step boundary and exits 0; before training starts it just exits 0.
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app, flags, logging

from vlm_jax import configlib, peers

_CONFIG = flags.DEFINE_string("config", None, "config file and arg: configs/siglip.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and results")


def _parse(argv: list[str]) -> list[str]:
    """absl parses the plain flags; `--config.a.b=value` overrides are kept for the config."""
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    flags.FLAGS([argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")])
    return overrides


def load(spec: str, overrides: list[str]):
    """The config named by `spec` with `--config.a.b=value` overrides applied (typed)."""
    config = configlib.load_config(spec)
    for item in overrides:
        key, has_value, value = item[len("--config."):].partition("=")
        if not has_value:
            raise configlib.ConfigError(f"override {item!r} needs a value: --config.{key}=...")
        configlib.override(config, key, value)
    return config


class Interrupted(Exception):
    """SIGTERM or Ctrl-C outside the train steps (start-up, final evals): nothing is lost."""


def _interrupt(signum, frame) -> None:
    del frame
    raise Interrupted(signal.Signals(signum).name)


def main(overrides: list[str]) -> None:
    # Until the train loop takes over (it saves at a step boundary), a SIGTERM or Ctrl-C stops
    # the run cleanly: checkpoints are written atomically, so whatever is there stays intact.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        _main(overrides)
    except Interrupted as stop:
        peers.mark_finished()
        print(f"stopped by {stop} before or after the train steps; the checkpoints in "
              f"{_WORKDIR.value} are as they were. Rerun the same command to resume", flush=True)
        sys.exit(0)


def _main(overrides: list[str]) -> None:
    if not _CONFIG.value or not _WORKDIR.value:
        sys.exit("error: both --config=configs/<model>.py[:arg] and --workdir=DIR are needed")
    try:
        config = load(_CONFIG.value, overrides)
    except configlib.ConfigError as error:
        sys.exit(f"error: {error}")
    # Imported after the config is known to be good, so config errors come back instantly.
    from vlm_jax import host_memory

    host_memory.keep_freed_memory()  # before XLA's CPU threads start: see host_memory.py
    import jax

    from vlm_jax import checkpoint, loop, parallel, trainers, validate

    logging.set_verbosity(logging.WARNING)  # orbax/grain info lines would bury the progress
    parallel.maybe_initialize_distributed()
    try:
        validate.check(config, _WORKDIR.value, jax.device_count())
        trainers.check_evals(config)  # evals the trainer cannot serve: an error now
    except configlib.ConfigError as error:
        sys.exit(f"error: {error}")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    print(config)
    try:
        loop.train(config, _WORKDIR.value)
        peers.mark_finished()
    except (configlib.ConfigError, checkpoint.CheckpointMismatchError,
            loop.NonFiniteLossError) as error:
        sys.exit(f"error: {error}")
    except Exception as error:
        peers.exit_if_peer_lost(error)  # a dead peer of a multi-process run: one line
        raise


def run() -> None:
    app.run(main, flags_parser=_parse)


if __name__ == "__main__":
    run()
