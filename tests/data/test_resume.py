"""Exact resume: the data position is a function of the global step, for any process count,
with corrupt records replaced by position; the epoch seed; the run record's checks."""

import numpy as np
import pytest

from tests.data.test_pipeline import FakeTokenizer, data_config, fake_example, index_of
from vlm_jax.data import resume
from vlm_jax.data.pipeline import ProcessOrder, make_train_dataset
from vlm_jax.data.sources import ArrayRecordSource, encode_example

GLOBAL_BATCH = 8


def shard(tmp_path, size: int, corrupt: set[int]) -> ArrayRecordSource:
    from array_record.python.array_record_module import ArrayRecordWriter

    path = str(tmp_path / "shard.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    for index in range(size):
        writer.write(b"\x00garbage" if index in corrupt else encode_example(fake_example(index)))
    writer.close()
    return ArrayRecordSource(path)


def global_batches(source, config, steps: int, *, processes: int, start_step: int = 0) -> list:
    """The global batches of steps [start_step, start_step + steps) built from `processes`
    per-process iterators in this one test process (rows of process p at [p*b, (p+1)*b))."""
    iterators = [iter(make_train_dataset(source, config, FakeTokenizer(), GLOBAL_BATCH, seed=3,
                                         process_index=p, process_count=processes,
                                         start_step=start_step)) for p in range(processes)]
    try:
        out = []
        for _ in range(steps):
            parts = [next(it) for it in iterators]
            out.append({key: np.concatenate([part[key] for part in parts]) for key in parts[0]})
        return out
    finally:
        for iterator in iterators:
            iterator.close()


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("before, after", [(2, 1), (2, 4), (1, 2)])
def test_resume_on_another_process_count_sees_the_same_examples(tmp_path, shuffle, before, after):
    # 36 records: 4 steps of 8 per epoch. The record at global position 6 of step 0 lies in
    # process 1's slice when two processes run (positions 4..7); make it corrupt.
    order = ProcessOrder(36, GLOBAL_BATCH, 0, 1, seed=3, shuffle=shuffle)
    corrupt = order.example_index(6)
    source = shard(tmp_path, 36, {corrupt})
    config = data_config(shuffle=shuffle, flip=True)
    straight = global_batches(source, config, 10, processes=1)
    first = global_batches(source, config, 3, processes=before)
    resumed = global_batches(source, config, 7, processes=after, start_step=3)
    for expected, got in zip(straight, first + resumed, strict=True):
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    # Failed decodes sit exactly at the positions whose record is the corrupt one (position 6
    # and its place in later epochs): replaced there, nothing else shifted.
    counts = np.concatenate([b["num_corrupt"] for b in straight])
    meets = [p for p in range(80) if order.example_index(p) == corrupt]
    assert meets[0] == 6 and np.flatnonzero(counts).tolist() == meets
    assert corrupt not in index_of(straight[0]["image"]).tolist()


def test_epoch_seeds_are_a_hash_of_seed_and_epoch():
    def epoch_order(seed, epoch):
        order = ProcessOrder(64, 16, 0, 1, seed=seed, shuffle=True)
        return [order.example_index(epoch * 64 + k) for k in range(64)]

    # seed + epoch made these two the same permutation.
    assert epoch_order(0, 1) != epoch_order(1, 0)
    assert epoch_order(0, 2) != epoch_order(1, 1) != epoch_order(2, 0)
    assert sorted(epoch_order(0, 1)) == list(range(64))


def record(**changes):
    config = data_config(**changes.pop("data", {}))
    fields = {"global_batch": 8, "seed": 0, "process_count": 2, **changes}
    return resume.run_record(config, fields["global_batch"], fields["seed"],
                             fields["process_count"])


def test_resume_checks_the_run_record():
    saved = resume.data_state(4, record(), corrupt_records=1)
    assert resume.check_resume(saved, record(), 4) == ""
    note = resume.check_resume(saved, record(process_count=4), 4)
    assert "on 4 process(es)" in note and "ran on 2" in note
    with pytest.raises(ValueError, match=r"batch_size: 8 -> 16.*new --workdir"):
        resume.check_resume(saved, record(global_batch=16), 4)
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
        resume.check_resume(saved, record(seed=1), 4)
    with pytest.raises(ValueError, match=r"data.source: 'world' -> 'array_record'"):
        resume.check_resume(saved, record(data={"source": "array_record"}), 4)
    with pytest.raises(ValueError, match=r"data.mixture"):
        resume.check_resume(saved, record(data={"mixture": (("caption", 1.0),)}), 4)
    with pytest.raises(ValueError, match="predates data records"):
        resume.check_resume({"iterator": {}, "corrupt_records": 0}, record(), 4)
