"""Checkpoints with orbax: the train state plus the data iterator state, async and atomic.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; the next run resumes from the latest complete one.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp


class CheckpointMismatchError(RuntimeError):
    """The checkpoint in a workdir does not fit the model being trained."""


class Checkpointer:
    """Save/restore `{"state": TrainState, "data": iterator state}` under `workdir/checkpoints`."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
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

    def save(self, step: int, state, data_state: dict) -> None:
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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
