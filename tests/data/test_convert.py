"""The converter (vlm_jax/data/convert.py): webdataset tars, folder + CSV/JSONL, TFDS-like
sources -> ArrayRecord shards that the pipeline reads and trains on."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from configs import common
from vlm_jax.data import convert, images, pipeline, sources
from vlm_jax.data.world import World

WORLD = World("train", seed=0, image_size=32)


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_tar(path, first: int, count: int, *, corrupt: int | None = None,
              no_caption: int | None = None) -> dict[str, tuple[bytes, str]]:
    """A webdataset shard of world examples [first, first + count); returns key -> (jpg, txt).

    Sample `corrupt` gets a truncated JPEG, sample `no_caption` no .txt (both relative indices).
    """
    written = {}
    with tarfile.open(path, "w") as archive:
        for k in range(count):
            example = WORLD[first + k]
            key = f"{first + k:06d}"
            jpg = _jpeg(example["image"])
            if k == corrupt:
                jpg = jpg[: len(jpg) // 3]
            _add(archive, f"{key}.jpg", jpg)
            _add(archive, f"{key}.json", json.dumps({"source_id": first + k}).encode())
            if k != no_caption:
                _add(archive, f"{key}.txt", example["caption"].encode())
                if k != corrupt:
                    written[key] = (jpg, example["caption"])
    return written


@pytest.fixture
def tars(tmp_path):
    folder = tmp_path / "wds"
    folder.mkdir()
    expected = write_tar(folder / "00000.tar", 0, 12, corrupt=3, no_caption=7)
    expected |= write_tar(folder / "00001.tar", 12, 12)
    return folder, expected


def _records(pattern):
    source = sources.ArrayRecordSource(pattern)
    return source, [source._records[i] for i in range(len(source))]


def test_webdataset_converts_skips_and_counts(tars, tmp_path):
    folder, expected = tars
    out = tmp_path / "ar"
    summary = convert.convert("webdataset", str(folder / "*.tar"), str(out), progress=False)
    assert (summary["shards"], summary["examples"]) == (2, 22)
    assert (summary["skipped"], summary["corrupt"]) == (1, 1)
    assert summary["corrupt_examples"][0].startswith("000003")
    on_disk = json.loads((out / "train-summary.json").read_text())
    assert on_disk["corrupt"] == 1 and on_disk["examples"] == 22
    source, records = _records(summary["pattern"])
    assert len(source) == 22
    for index, record in enumerate(records):
        key = f"{convert.read_metadata(record)['key']}"
        jpg, caption = expected[key]
        example = source[index]
        assert example["caption"] == caption
        # The stored bytes are the file's own; decoding equals Pillow's decode of that file.
        np.testing.assert_array_equal(example["image"],
                                      np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")))
    meta = convert.read_metadata(records[0])
    assert meta["source_id"] == 0 and (meta["width"], meta["height"]) == (32, 32)


def test_resume_redoes_only_unfinished_shards(tars, tmp_path):
    folder, _ = tars
    out = tmp_path / "ar"
    convert.convert("webdataset", str(folder), str(out), progress=False)
    first, second = (str(out / f"train-0000{i}-of-00002.array_record") for i in (0, 1))
    kept = os.stat(first)
    reference = open(second, "rb").read()
    # What a kill during shard 1 leaves: shard 0 finished, shard 1 only as a partial file.
    os.remove(second)
    os.remove(convert.done_path(second))
    with open(second + ".partial", "wb") as f:
        f.write(b"half a shard")
    summary = convert.convert("webdataset", str(folder), str(out), progress=False)
    assert summary["converted_now"] == 1 and summary["examples"] == 22
    after = os.stat(first)
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # not redone
    assert open(second, "rb").read() == reference
    assert not os.path.exists(second + ".partial")
    # A finished output without its done mark (killed between rename and mark) is redone.
    os.remove(convert.done_path(first))
    assert convert.convert("webdataset", str(folder), str(out),
                           progress=False)["converted_now"] == 1


def test_parallel_workers_give_the_same_shards(tars, tmp_path):
    folder, _ = tars
    serial = convert.convert("webdataset", str(folder), str(tmp_path / "a"), progress=False)
    parallel = convert.convert("webdataset", str(folder), str(tmp_path / "b"), workers=2,
                               progress=False)
    assert serial["examples"] == parallel["examples"]
    for name in ("train-00000-of-00002.array_record", "train-00001-of-00002.array_record"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_empty_or_unreadable_input_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert convert.main(["--format=webdataset", f"--input={tmp_path / 'empty'}",
                         f"--output={tmp_path / 'out'}", "--no_progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no tar shards match" in err[0]
    (tmp_path / "bad.tar").write_bytes(b"this is not a tar archive" * 40)
    assert convert.main(["--format=webdataset", f"--input={tmp_path / 'bad.tar'}",
                         f"--output={tmp_path / 'out'}", "--no_progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.tar" in err[0]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_folder_with_captions(tmp_path, suffix):
    root = tmp_path / "imgs"
    root.mkdir()
    rows = []
    for i in range(5):
        png = root / f"img{i}.png"
        Image.fromarray(WORLD[i]["image"]).save(png)
        rows.append({"image": png.name, "caption": WORLD[i]["caption"], "licence": "cc0"})
    rows.append({"image": "missing.png", "caption": "a red circle.", "licence": "cc0"})
    (root / "img_bad.png").write_bytes(b"\x89PNG broken")
    rows.append({"image": "img_bad.png", "caption": "a blue square.", "licence": "cc0"})
    captions = tmp_path / f"captions.{suffix}"
    if suffix == "csv":
        captions.write_text("image,caption,licence\n" + "".join(
            f'{r["image"]},"{r["caption"]}",{r["licence"]}\n' for r in rows))
    else:
        captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = convert.convert("folder", str(root), str(tmp_path / "ar"), captions=str(captions),
                              examples_per_shard=3, progress=False)
    assert (summary["shards"], summary["examples"], summary["skipped"],
            summary["corrupt"]) == (3, 5, 1, 1)
    source, records = _records(summary["pattern"])
    for i in range(5):  # PNG is lossless: the decoded pixels are the world's
        np.testing.assert_array_equal(source[i]["image"], WORLD[i]["image"])
        assert source[i]["caption"] == WORLD[i]["caption"]
    assert convert.read_metadata(records[0])["licence"] == "cc0"


class FakeTfds:
    """What tfds.data_source returns: len + getitem -> feature dicts (decoded images)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if index == 2:
            return {"image": np.zeros((4, 4, 3), np.uint8), "captions": {"text": np.array([])}}
        example = WORLD[index]
        return {"image": example["image"],
                "captions": {"text": np.array([example["caption"].encode(), b"second"])}}


def test_tfds_like_source(tmp_path):
    # Only the reading of tfds.data_source's examples is tested: building a real TFDS
    # dataset needs TensorFlow, which is not installed here.
    summary = convert.convert("tfds", "", str(tmp_path / "ar"), tfds_name="fake",
                              caption_key="captions/text", examples_per_shard=2,
                              tfds_examples=FakeTfds(5), progress=False)
    assert (summary["shards"], summary["examples"], summary["skipped"]) == (3, 4, 1)
    source, _ = _records(summary["pattern"])
    np.testing.assert_array_equal(source[0]["image"], WORLD[0]["image"])
    assert [source[i]["caption"] for i in range(4)] == [WORLD[i]["caption"] for i in (0, 1, 3, 4)]


def test_max_side_reencodes(tmp_path):
    folder = tmp_path / "wds"
    folder.mkdir()
    big = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    with tarfile.open(folder / "0.tar", "w") as archive:
        _add(archive, "a.jpg", _jpeg(big))
        _add(archive, "a.txt", b"a red circle.")
    summary = convert.convert("webdataset", str(folder), str(tmp_path / "ar"), max_side=48,
                              progress=False)
    source, _ = _records(summary["pattern"])
    assert source[0]["image"].shape == (32, 48, 3)


def test_pipeline_reads_converted_and_old_records(tars, tmp_path):
    folder, expected = tars
    summary = convert.convert("webdataset", str(folder), str(tmp_path / "ar"), progress=False)
    # An old raw-array shard beside the converted ones still loads through the same source.
    sources.write_array_record(str(tmp_path / "ar" / "train-old.array_record"),
                               [WORLD[i] for i in range(2)])
    source = sources.ArrayRecordSource(str(tmp_path / "ar" / "train-*.array_record"))
    assert len(source) == 24
    np.testing.assert_array_equal(source[23]["image"], WORLD[1]["image"])

    config = common.data_config(source="array_record",
                                array_record_pattern=summary["pattern"], image_size=16,
                                crop="random_resized", flip=True, prefetch=0)

    class Words:
        pad_id = 0

        def encode(self, captions, length):
            return np.zeros((len(captions), length), np.int32)

    dataset = pipeline.make_train_dataset(sources.ArrayRecordSource(summary["pattern"]),
                                          config, Words(), 8, seed=0)
    batch = next(iter(dataset))
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8
    # The first example, rebuilt by hand: the crop from stream (seed, position, 1), the flip
    # coin from (seed, position), exactly as before the crop existed.
    order = pipeline.ProcessOrder(22, 8, 0, 1, seed=0, shuffle=True)
    position, index = order[0][0]
    raw = sources.ArrayRecordSource(summary["pattern"])[index]
    view = images.random_resized_crop(raw["image"], 16, np.random.default_rng((0, position, 1)))
    if np.random.default_rng((0, position)).random() < 0.5:
        view = view[:, ::-1]
    np.testing.assert_array_equal(batch["image"][0], view)


def test_flip_swaps_left_right_after_a_random_crop():
    class One:
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return {"image": np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3),
                    "caption": "a red circle left of a blue square."}

    data_config = common.data_config(image_size=8, flip=True, crop="random_resized")
    load = pipeline.LoadChunk(One(), data_config, seed=0)
    flips = [np.random.default_rng((0, p)).random() < 0.5 for p in range(6)]
    chunk = load([(p, 0) for p in range(6)])
    for p, flipped in enumerate(flips):
        word = "right" if flipped else "left"
        assert chunk["caption"][p] == f"a red circle {word} of a blue square."
    assert any(flips) and not all(flips)


@pytest.mark.slow  # a whole loop.train of SigLIP tiny on the converted shards (~30-60 s)
def test_converted_shards_train_siglip_tiny(tars, tmp_path):
    from vlm_jax import configlib, loop

    folder, _ = tars
    summary = convert.convert("webdataset", str(folder), str(tmp_path / "ar"), progress=False)
    config = configlib.load_config("configs/siglip.py:tiny,steps=3,batch=8")
    config.data.source, config.data.array_record_pattern = "array_record", summary["pattern"]
    config.data.crop = "random_resized"
    config.log_every, config.evals.names = 1, ()
    loop.train(config, str(tmp_path / "run"))
    metrics = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert len(losses) == 3 and all(np.isfinite(losses))
