"""Checkpoint faults: a damaged newest step falls back to the newest intact one with one warning
line; keep_checkpoints=0 is refused; checksums are recorded once a save has finished."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import checkpoint


def _state(value: float) -> dict:
    return {"w": jnp.full((64,), value, jnp.float32), "step": jnp.asarray(int(value), jnp.int32)}


def _abstract():
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0.0))


def _save_steps(workdir, steps=(1, 2, 3)):
    ckpt = checkpoint.Checkpointer(str(workdir), max_to_keep=5)
    for step in steps:
        ckpt.save(step, _state(float(step)), {"iterator": {"position": step}})
    ckpt.close()


def _biggest_file(step_dir):
    files = checkpoint.step_files(str(step_dir))
    return os.path.join(step_dir, max(files, key=lambda name: files[name][0]))


def _flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [_flip_byte, _truncate, os.remove])
def test_damaged_newest_step_falls_back_to_the_newest_intact(tmp_path, capsys, damage):
    _save_steps(tmp_path)
    newest = tmp_path / "checkpoints" / "3"
    assert json.loads((newest / checkpoint.CHECKSUMS).read_text())  # recorded at save
    damage(_biggest_file(newest))
    step, state, data = checkpoint.Checkpointer(str(tmp_path)).restore_latest_intact(_abstract())
    assert step == 2 and data == {"iterator": {"position": 2}}
    np.testing.assert_array_equal(state["w"], np.full((64,), 2.0, np.float32))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "checkpoints/3" in warnings[0] and "step 2" in warnings[0]
    # Kept for a look, out of the way of the step the resumed run saves again.
    assert (tmp_path / "checkpoints" / "3.damaged").is_dir() and not newest.exists()
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(3, _state(3.0), {"iterator": {"position": 3}})
    ckpt.close()
    assert checkpoint.verify(str(newest)) is True


def test_every_step_damaged_is_one_error_not_a_fresh_start(tmp_path):
    _save_steps(tmp_path, steps=(1,))
    _flip_byte(_biggest_file(tmp_path / "checkpoints" / "1"))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="every checkpoint"):
        checkpoint.Checkpointer(str(tmp_path)).restore_latest_intact(_abstract())


def test_intact_steps_verify_and_restore_the_newest(tmp_path):
    _save_steps(tmp_path)
    for step in (1, 2, 3):
        assert checkpoint.verify(str(tmp_path / "checkpoints" / str(step))) is True
    step, state, _ = checkpoint.Checkpointer(str(tmp_path)).restore_latest_intact(_abstract())
    assert step == 3 and int(state["step"]) == 3


def test_keep_checkpoints_zero_cannot_delete_the_final_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1"):
        checkpoint.Checkpointer(str(tmp_path), max_to_keep=0)
