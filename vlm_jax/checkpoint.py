"""Checkpoints with orbax: the train state plus the data iterator state, async, atomic, checked.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; the next run resumes from the latest complete one.
Once a step's save has finished, its files' sizes and BLAKE2 digests go into
`<step>/checksums.json`; a restore verifies them and falls back, with one warning line, to the
newest step that is intact, so a damaged disk costs steps, never the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

CHECKSUMS = "checksums.json"


class CheckpointMismatchError(RuntimeError):
    """The checkpoint in a workdir does not fit the model being trained."""


class CheckpointDamagedError(RuntimeError):
    """A step's files differ from the checksums recorded when it was saved."""


def _digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def step_files(step_dir: str) -> dict[str, list]:
    """{relative path: [size, blake2b hex]} of every file under `step_dir` but the checksums."""
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, step_dir)
            if relative not in (CHECKSUMS, CHECKSUMS + ".tmp"):
                files[relative] = [os.path.getsize(path), _digest(path)]
    return files


def verify(step_dir: str) -> bool | None:
    """True: files match the recorded checksums; None: none recorded; CheckpointDamagedError."""
    path = os.path.join(step_dir, CHECKSUMS)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        raise CheckpointDamagedError(f"{path} is unreadable") from None
    found = step_files(step_dir)
    missing = sorted(set(recorded) - set(found))
    if missing:
        raise CheckpointDamagedError(f"missing {missing[0]}" + (
            f" and {len(missing) - 1} more file(s)" if len(missing) > 1 else ""))
    for name, (size, digest) in recorded.items():
        if found[name][0] != size:
            raise CheckpointDamagedError(f"{name} is {found[name][0]} bytes, saved {size}")
        if found[name][1] != digest:
            raise CheckpointDamagedError(f"{name} has other bytes than saved")
    return True


class Checkpointer:
    """Save/restore `{"state": TrainState, "data": iterator state}` under `workdir/checkpoints`."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
        if max_to_keep < 1:  # orbax would delete every step, the final one too
            raise ValueError(f"keep_checkpoints must be >= 1, got {max_to_keep}")
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,  # a save cut off by a kill is dropped
            ),
            item_names=("state", "data"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _record_checksums(self) -> None:
        """Checksums for every finished step without them (process 0; after the writes end)."""
        if jax.process_index() != 0:
            return
        for step in self.manager.all_steps():
            step_dir = self._step_dir(step)
            path = os.path.join(step_dir, CHECKSUMS)
            if os.path.isdir(step_dir) and not os.path.exists(path):
                with open(path + ".tmp", "w") as f:
                    json.dump(step_files(step_dir), f)
                os.replace(path + ".tmp", path)

    def save(self, step: int, state, data_state: dict) -> None:
        # Orbax would wait for the save in flight anyway; finishing it here lets it be sealed.
        self.wait()
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
        )

    def restore(self, step: int, abstract_state):
        """Restore onto `abstract_state`'s shapes and shardings (any mesh) -> (state, data)."""
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointMismatchError(
                f"the checkpoint at {self.directory}/{step} does not match this model's "
                f"parameters ({type(error).__name__}: {str(error).splitlines()[0][:300]}). "
                "Use a new --workdir for a different model; the old checkpoint was left untouched."
            ) from None
        return restored["state"], restored["data"]

    def restore_latest_intact(self, abstract_state):
        """(step, state, data) of the newest step whose files verify, or None if there are none.

        A damaged step (checksums differ; or, unrecorded, its files fail to read) is skipped
        with one warning line naming it and renamed `<step>.damaged`, kept for a look but out
        of the way of the steps the run will save again. A step that reads but does not fit
        the model is a CheckpointMismatchError; so is a workdir whose every step is damaged.
        """
        damaged, mismatch = [], None
        found = None
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                recorded = verify(self._step_dir(step))
            except CheckpointDamagedError as error:
                damaged.append((step, str(error)))
                continue
            try:
                state, data = self.restore(step, abstract_state)
            except CheckpointMismatchError as error:
                if recorded:  # the files are as saved: it really is another model
                    raise
                mismatch = mismatch or error
                damaged.append((step, "no checksums recorded and it does not restore"))
                continue
            except (OSError, RuntimeError) as error:
                damaged.append((step, f"{type(error).__name__}: "
                                      f"{str(error).splitlines()[0][:200]}"))
                continue
            found = (step, state, data)
            break
        if damaged and found is None:
            if mismatch is not None:
                raise mismatch
            raise CheckpointMismatchError(
                f"every checkpoint in {self.directory} is damaged (step {damaged[0][0]}: "
                f"{damaged[0][1]}); move that folder away to start over, or restore it from a "
                "backup")
        for step, reason in damaged:
            _warn(f"skipping damaged checkpoint {self._step_dir(step)} ({reason}); kept as "
                  f"{self._step_dir(step)}.damaged, resuming from step {found[0]}")
        if damaged:
            self._quarantine([step for step, _ in damaged])
        return found

    def _quarantine(self, steps: list[int]) -> None:
        """Rename damaged steps out of orbax's sight (process 0, the others waiting)."""
        synced = jax.process_count() > 1
        if synced:
            multihost_utils.sync_global_devices("vlm_jax checkpoint verified")
        if jax.process_index() == 0:
            for step in steps:
                target = self._step_dir(step) + ".damaged"
                suffix = 1
                while os.path.exists(target):
                    suffix += 1
                    target = f"{self._step_dir(step)}.damaged{suffix}"
                os.rename(self._step_dir(step), target)
        if synced:
            multihost_utils.sync_global_devices("vlm_jax checkpoint quarantined")
        self.manager.reload()

    def wait(self) -> None:
        """Block until the save in flight is on disk, then record its checksums."""
        self.manager.wait_until_finished()
        self._record_checksums()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)
