"""Config mistakes are one line naming the field and the fix, before any model is built."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from vlm_jax import configlib, validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**fields):
    config = configlib.load_config(os.path.join(ROOT, "configs/siglip.py:tiny"))
    for dotted, value in fields.items():
        *parents, leaf = dotted.split("__")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


@pytest.mark.parametrize("fields,expected", [
    (dict(batch_size=0), "batch_size=0 must be > 0"),
    (dict(batch_size=-4), "batch_size=-4 must be > 0"),
    (dict(batch_size=30, grad_accum_steps=4), "not divisible by grad_accum_steps=4"),
    (dict(batch_size=12), "not divisible by the 8 batch shards"),
    (dict(mesh__fsdp=0), "mesh.fsdp=0"),
    (dict(mesh__data=3, mesh__fsdp=2), "mesh: "),
    (dict(log_every=0), "log_every=0 must be > 0"),
    (dict(checkpoint_every=0), "checkpoint_every=0 must be > 0"),
    (dict(keep_checkpoints=0), "keep_checkpoints=0 must be > 0"),
    (dict(trainer="contrastiv"), "trainer='contrastiv' is unknown"),
    (dict(model__name="two_towers"), "model.name='two_towers' is unknown"),
    (dict(model__image__variant="Q/16", model__image__width=0), "model.image: "),
    (dict(loss__name="sigmoidd"), "loss.name='sigmoidd' is unknown"),
    (dict(data__tokenizer="/no/such.model"), "data.tokenizer='/no/such.model' is not a file"),
    (dict(data__source="webdataset"), "data.source='webdataset' is unknown"),
    (dict(data__source="array_record"), "needs data.array_record_pattern"),
    (dict(data__source="array_record", data__array_record_pattern="/no/*.ar"),
     "matches no file"),
    (dict(data__source="tfds"), "needs data.tfds_name"),
])
def test_config_mistake_names_the_field(tmp_path, fields, expected):
    with pytest.raises(configlib.ConfigError, match=None) as error:
        validate.check(_config(**fields), str(tmp_path / "run"), device_count=8)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_good_config_passes(tmp_path):
    validate.check(_config(), str(tmp_path / "run"), device_count=8)


def test_workdir_that_is_a_file_or_read_only(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(configlib.ConfigError, match="is a file"):
        validate.check(_config(), str(tmp_path / "file"), device_count=8)
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(configlib.ConfigError, match="cannot be written"):
        validate.check(_config(), str(tmp_path / "ro" / "run"), device_count=8)


def test_cli_reports_one_line_before_building(tmp_path):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", PYTHONPATH=ROOT)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "")
    result = subprocess.run(
        [sys.executable, "-m", "vlm_jax.main", "--config=configs/siglip.py:tiny",
         f"--workdir={tmp_path}/run", "--config.batch_size=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines == ["error: batch_size=0 must be > 0"], lines
    assert not (tmp_path / "run").exists()  # nothing was created for a run that never began


def _raw_shard(path, records: list[bytes]) -> str:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()
    return str(path)


def _example(caption: str) -> bytes:
    from vlm_jax.data.sources import encode_example

    return encode_example({"image": np.zeros((4, 4, 3), np.uint8), "caption": caption})


def test_all_corrupt_source_is_one_line(tmp_path):
    pattern = _raw_shard(tmp_path / "bad.array_record", [b"\x00garbage"] * 20)
    with pytest.raises(configlib.ConfigError) as error:
        validate.check(_config(data__source="array_record", data__array_record_pattern=pattern),
                       str(tmp_path / "run"), device_count=8)
    message = str(error.value)
    assert "none of 8 records tried decodes" in message and "\n" not in message, message
    assert "vlm_jax.data.convert" in message


def test_mostly_corrupt_source_passes(tmp_path):
    # Only the last record decodes: noisy data, which the pipeline's fallbacks handle.
    pattern = _raw_shard(tmp_path / "noisy.array_record", [b"\x00garbage"] * 19 + [_example("a")])
    validate.check(_config(data__source="array_record", data__array_record_pattern=pattern),
                   str(tmp_path / "run"), device_count=8)


def test_pickled_record_never_suggests_allow_pickle(tmp_path):
    from vlm_jax.data.sources import CorruptRecordError, decode_example

    buffer = io.BytesIO()
    np.savez(buffer, image=np.zeros((4, 4, 3), np.uint8),
             caption=np.array(["a", 1], dtype=object))
    with pytest.raises(CorruptRecordError) as error:
        decode_example(buffer.getvalue())
    assert "pickled" in str(error.value) and "allow_pickle" not in str(error.value)


class _NeedsTensorflow:
    """A source whose decode fails the way tfds does without TensorFlow installed."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        from vlm_jax.data.sources import CorruptRecordError

        try:
            raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
        except ModuleNotFoundError as missing:
            raise CorruptRecordError(f"record {index}: {missing}") from missing


class _ImportsTensorflow(_NeedsTensorflow):
    """A source whose decode imports TensorFlow (as tfds does for some features when TF is
    installed)."""

    def __getitem__(self, index):
        sys.modules.setdefault("tensorflow", type(sys)("tensorflow"))
        return {"image": np.zeros((4, 4, 3), np.uint8), "caption": "a"}


@pytest.mark.parametrize("source", [_NeedsTensorflow, _ImportsTensorflow])
def test_tfds_that_needs_tensorflow_is_one_line(tmp_path, monkeypatch, source):
    from vlm_jax.data import sources

    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setattr(sources, "make_source", lambda data, split: source())
    with pytest.raises(configlib.ConfigError) as error:
        validate.check(_config(data__source="tfds", data__tfds_name="coco_captions"),
                       str(tmp_path / "run"), device_count=8)
    message = str(error.value)
    assert "imports TensorFlow" in message and "--file_format=array_record" in message
    assert "\n" not in message
    sys.modules.pop("tensorflow", None)


def test_unprepared_tfds_is_one_line(tmp_path):
    with pytest.raises(configlib.ConfigError) as error:
        validate.check(_config(data__source="tfds", data__tfds_name="no_such_dataset",
                               data__tfds_data_dir=str(tmp_path)),
                       str(tmp_path / "run"), device_count=8)
    assert "tfds build no_such_dataset" in str(error.value) and "\n" not in str(error.value)
