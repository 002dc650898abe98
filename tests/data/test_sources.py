"""Example sources: the world, ArrayRecord shards (our record format), TFDS without TensorFlow."""

import io
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter

from configs import common
from vlm_jax.data.pipeline import make_train_dataset
from vlm_jax.data.sources import (
    ArrayRecordSource,
    CorruptRecordError,
    TfdsSource,
    WorldSource,
    decode_example,
    encode_example,
    make_source,
    write_array_record,
)
from vlm_jax.data.world import World


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The configs' data fields at test sizes (8 px images, 8 tokens), with `overrides`."""
    return common.data_config(**{"image_size": 8, "text_length": 8, **overrides})


def example(index: int, size: int = 8) -> dict:
    return {"image": np.full((size, size, 3), index, np.uint8), "caption": f"thing number {index}"}


def assert_same_example(got: dict, expected: dict) -> None:
    assert set(got) == {"image", "caption"}
    np.testing.assert_array_equal(got["image"], expected["image"])
    assert got["image"].dtype == np.uint8 and got["caption"] == expected["caption"]


def test_record_round_trip():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    record = encode_example({"image": image, "caption": "ünïcode left of a square"})
    assert_same_example(decode_example(record),
                        {"image": image, "caption": "ünïcode left of a square"})


def test_record_errors():
    with pytest.raises(CorruptRecordError, match="not an encode_example record"):
        decode_example(b"\x00 definitely not a record")
    other_arrays = io.BytesIO()
    np.savez(other_arrays, pixels=np.zeros(3))
    with pytest.raises(CorruptRecordError):
        decode_example(other_arrays.getvalue())
    with pytest.raises(ValueError, match="uint8"):
        encode_example({"image": np.zeros((4, 4, 3), np.float32), "caption": "x"})


def test_array_record_shards_read_in_sorted_order(tmp_path):
    for shard in (1, 0):  # written out of order; read sorted by name
        count = write_array_record(tmp_path / f"data-{shard}.array_record",
                                   [example(10 * shard + i) for i in range(10)])
        assert count == 10
    source = ArrayRecordSource(str(tmp_path / "data-*.array_record"))
    assert len(source) == 20
    for index in (0, 9, 10, 19):
        assert_same_example(source[index], example(index))


def test_array_record_corrupt_record_and_missing_files(tmp_path):
    path = str(tmp_path / "bad.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    writer.write(encode_example(example(0)))
    writer.write(b"garbage")
    writer.close()
    source = ArrayRecordSource(path)
    assert_same_example(source[0], example(0))
    with pytest.raises(CorruptRecordError, match="record 1 of ArrayRecordSource"):
        source[1]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        ArrayRecordSource(str(tmp_path / "nothing-here-*.array_record"))


def test_make_source_world():
    source = make_source(data_config(world_seed=1, image_size=16), "train")
    assert isinstance(source, WorldSource) and len(source) == 1_000_000
    expected = World("train", seed=1, image_size=16)[3]
    assert_same_example(source[3], {"image": expected["image"], "caption": expected["caption"]})
    assert len(make_source(data_config(image_size=16), "val")) == 10_000


def test_make_source_array_record_fills_in_the_split(tmp_path):
    write_array_record(tmp_path / "val-0.array_record", [example(i) for i in range(3)])
    config = data_config(source="array_record",
                         array_record_pattern=str(tmp_path / "{split}-*.array_record"))
    assert len(make_source(config, "val")) == 3
    with pytest.raises(FileNotFoundError, match="train-"):
        make_source(config, "train")


def test_make_source_errors(tmp_path):
    with pytest.raises(ValueError, match="array_record_pattern"):
        make_source(data_config(source="array_record"), "train")
    with pytest.raises(ValueError, match="tfds_name"):
        make_source(data_config(source="tfds"), "train")
    with pytest.raises(ValueError, match="Unknown data.source 'webdataset'.*'array_record'"):
        make_source(data_config(source="webdataset"), "train")
    with pytest.raises(FileNotFoundError, match="tfds build no_such_dataset"):
        make_source(data_config(source="tfds", tfds_name="no_such_dataset",
                                tfds_data_dir=str(tmp_path)), "train")


class VlmJaxTinyCaptions(tfds.core.GeneratorBasedBuilder):
    """Six captioned 8x8 images; image stored as a raw Tensor, so no TensorFlow or PIL is used."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index in range(6):
            yield index, example(index)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    VlmJaxTinyCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_source_without_tensorflow(tfds_dir):
    config = data_config(source="tfds", tfds_name="vlm_jax_tiny_captions", tfds_data_dir=tfds_dir)
    source = make_source(config, "train")
    assert isinstance(source, TfdsSource) and len(source) == 6
    seen = []
    for index in range(6):
        got = source[index]
        number = int(got["caption"].split()[-1])  # TFDS stores the examples shuffled
        assert_same_example(got, example(number))
        seen.append(number)
    assert sorted(seen) == list(range(6))
    config.tfds_split = "train[:50%]"
    assert len(make_source(config, "train")) == 3
    assert "tensorflow" not in sys.modules


def test_tfds_source_errors(tfds_dir):
    with pytest.raises(KeyError, match="no feature 'text'.*'caption', 'image'"):
        TfdsSource("vlm_jax_tiny_captions", data_dir=tfds_dir, caption_key="text")[0]
    with pytest.raises(IndexError):
        TfdsSource("vlm_jax_tiny_captions", data_dir=tfds_dir)[6]
    with pytest.raises(FileNotFoundError, match="split 'val'"):
        TfdsSource("vlm_jax_tiny_captions", split="val", data_dir=tfds_dir)


def test_tfds_source_feeds_the_pipeline(tfds_dir):
    class Tokenizer:
        pad_id = 0

        def encode(self, texts, max_len):
            return np.array([[int(t.split()[-1]) + 2, 1] + [0] * (max_len - 2) for t in texts],
                            np.int32)

    source = TfdsSource("vlm_jax_tiny_captions", data_dir=tfds_dir)
    iterator = iter(make_train_dataset(source, data_config(), Tokenizer(), 6, seed=0))
    try:
        batch = next(iterator)
    finally:
        iterator.close()
    numbers = batch["text_tokens"][:, 0] - 2
    assert sorted(numbers.tolist()) == list(range(6))
    np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], numbers)
