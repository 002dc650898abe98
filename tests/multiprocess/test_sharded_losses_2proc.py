"""The sharded contrastive losses across 2 processes x 4 CPU devices (jax.distributed, gloo).

Each process builds its half of the global batch; every variant's loss and gradients must
equal the single-device reference (tests/multiprocess/sharded_loss_worker.py). A dead or hung
process fails the test within its deadline instead of hanging the run (process_group.py).
"""

import time
from pathlib import Path

import pytest
from process_group import ProcessGroupError, run_process_group
from sharded_loss_worker import CASES

WORKER = Path(__file__).with_name("sharded_loss_worker.py")
DEADLINE_S = 150  # ~20 s on 2 idle cores; the rest is headroom for a loaded machine

pytestmark = pytest.mark.multiprocess


def test_every_variant_equals_reference_across_2_processes(tmp_path):
    results = run_process_group(WORKER, num_processes=2, devices_per_process=4,
                                workdir=tmp_path, timeout_s=DEADLINE_S)
    # Each process held its own half of the batch, on a mesh over both processes' devices.
    assert [r["process_id"] for r in results] == [0, 1]
    assert all((r["process_count"], r["global_devices"], r["local_devices"]) == (2, 8, 4)
               for r in results)
    assert sorted(tuple(r["local_rows"]) for r in results) == [(0, 20), (20, 40)]
    for result in results:
        assert len(result["cases"]) == len(CASES)
        for name, case in result["cases"].items():
            where = f"process {result['process_id']}, {name}"
            assert case["loss_relative_error"] <= 1e-5, where
            assert case["accuracy"] == case["reference_accuracy"], where
            for grad, ratio in case["gradient_error_over_tolerance"].items():
                assert ratio <= 1.0, f"{where}: d/d{grad} off by {ratio:.2f}x the tolerance"


def test_a_crashed_process_fails_the_group_at_once(tmp_path):
    # Process 1 dies after start-up; process 0 would block in its first collective.
    started = time.monotonic()
    with pytest.raises(ProcessGroupError, match=r"a process failed(.|\n)*exit status 3"):
        run_process_group(WORKER, num_processes=2, devices_per_process=4, workdir=tmp_path,
                          timeout_s=DEADLINE_S, extra_args=["--crash-process", "1"])
    assert time.monotonic() - started < 60


def test_a_hung_group_is_killed_at_its_deadline(tmp_path):
    # Process 1 sleeps after start-up, so process 0 waits in a gloo collective for ever.
    started = time.monotonic()
    with pytest.raises(ProcessGroupError, match="still running after 12 s"):
        run_process_group(WORKER, num_processes=2, devices_per_process=4, workdir=tmp_path,
                          timeout_s=12, extra_args=["--hang-process", "1"])
    assert time.monotonic() - started < 30
