"""Convert image-text data to ArrayRecord shards of encoded images that the pipeline reads.

    python -m vlm_jax.data.convert --format=webdataset --input='/data/wds/*.tar' --output=/data/ar
    python -m vlm_jax.data.convert --format=folder --input=/data/imgs --captions=/data/caps.jsonl \
        --output=/data/ar --examples_per_shard=5000 --workers=4
    python -m vlm_jax.data.convert --format=tfds --tfds_name=coco_captions --output=/data/ar \
        --caption_key=captions/text

Inputs: webdataset / img2dataset tar shards (`KEY.jpg` + `KEY.txt` and/or `KEY.json` per
sample), a folder of images with a CSV or JSONL of (image path, caption), or a prepared TFDS
dataset (read with `tfds.data_source`, no TensorFlow). Every input shard (a tar, or
`examples_per_shard` rows / examples) becomes one output shard
`{output}/{prefix}-NNNNN-of-MMMMM.array_record` of records holding the image file's bytes as
they are (or re-encoded when `max_side` shrinks it), the caption and a metadata JSON string
(see vlm_jax/data/sources.py). Shards are converted in parallel (`workers` processes); each is
written to a temporary name, renamed, then marked done by `NAME.done.json` with its counts, so a
rerun after a kill converts only the shards without a mark. Samples without an image or
caption are skipped; images Pillow cannot decode are counted as corrupt. The totals go to
`{output}/{prefix}-summary.json`. Train on the result with
`--config.data.source=array_record --config.data.array_record_pattern='{output}/{prefix}-*'`.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import multiprocessing
import os
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vlm_jax.data import images

FORMATS = ("webdataset", "folder", "tfds")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_FIELDS = ("caption", "text", "txt")  # JSON / CSV keys tried in order
PATH_FIELDS = ("image", "path", "file", "filename", "url")
MAX_REASONS = 20  # corrupt-sample reasons kept per shard in its done file


class ConvertError(Exception):
    """An input that cannot be converted at all (missing, empty, unreadable)."""


def encode_record(image_bytes: bytes, caption: str, metadata: dict[str, Any]) -> bytes:
    """One converted record: np.savez of image_bytes uint8 [n], caption and metadata (JSON)."""
    buffer = io.BytesIO()
    np.savez(buffer, image_bytes=np.frombuffer(image_bytes, np.uint8),
             caption=np.array(str(caption)), metadata=np.array(json.dumps(metadata)))
    return buffer.getvalue()


def read_metadata(record: bytes) -> dict[str, Any]:
    """The metadata dict of a converted record."""
    with np.load(io.BytesIO(record), allow_pickle=False) as arrays:
        return json.loads(str(arrays["metadata"]))


@dataclass
class ShardTask:
    """One input shard: what to read (`kind` + `spec`) and which output shard it becomes."""

    kind: str  # "webdataset" | "folder" | "tfds"
    spec: dict[str, Any]
    output_path: str
    max_side: int
    quality: int


@dataclass
class ShardStats:
    output_path: str
    examples: int = 0
    skipped: int = 0  # no image or no caption in the sample
    corrupt: int = 0  # an image Pillow cannot decode
    reasons: list[str] = field(default_factory=list)


# --- readers: each yields (image bytes or None, caption or None, metadata, sample name) -------


def _caption_from(record: dict[str, Any]) -> str | None:
    for key in CAPTION_FIELDS:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _webdataset_key(name: str) -> tuple[str, str]:
    """"dir/000123.jpg" -> ("dir/000123", "jpg"): webdataset splits at the basename's first dot."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(folder, stem), ext.lower()


def read_webdataset(spec: dict[str, Any]) -> Iterator[tuple]:
    path = spec["path"]
    try:
        archive = tarfile.open(path)
    except (OSError, tarfile.TarError) as error:
        raise ConvertError(f"cannot read tar shard {path} ({error}); check the file or drop it "
                           "from --input") from error
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    with archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue
                key, ext = _webdataset_key(member.name)
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                samples[key][ext] = archive.extractfile(member).read()
        except (OSError, tarfile.TarError, EOFError) as error:
            raise ConvertError(f"tar shard {path} is damaged ({error}); re-download it or "
                               "drop it from --input") from error
    for key in order:
        parts = samples[key]
        metadata: dict[str, Any] = {"key": os.path.basename(key), "shard": os.path.basename(path)}
        caption = None
        if "json" in parts:
            try:
                info = json.loads(parts["json"])
                if isinstance(info, dict):
                    metadata.update({k: v for k, v in info.items() if k not in metadata})
                    caption = _caption_from(info)
            except (ValueError, UnicodeDecodeError):
                pass  # a broken .json loses its metadata only; the .txt caption still counts
        if "txt" in parts:
            caption = parts["txt"].decode("utf-8", errors="replace").strip() or caption
        image = next((parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None)
        yield image, caption, metadata, key


def read_caption_rows(captions_path: str) -> list[dict[str, Any]]:
    """The rows of a CSV (with a header) or JSONL caption file."""
    try:
        with open(captions_path, newline="", encoding="utf-8") as f:
            if captions_path.endswith((".jsonl", ".json")):
                rows = [json.loads(line) for line in f if line.strip()]
            else:
                rows = list(csv.DictReader(f))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ConvertError(f"cannot read captions file {captions_path} ({error}); it must be "
                           "a CSV with a header or JSONL with 'image' and 'caption'") from error
    if not rows:
        raise ConvertError(f"captions file {captions_path} has no rows; nothing to convert")
    if not any(key in rows[0] for key in PATH_FIELDS):
        raise ConvertError(f"captions file {captions_path} has no image path column (one of "
                           f"{PATH_FIELDS}); its columns are {sorted(rows[0])}")
    return rows


def read_folder(spec: dict[str, Any]) -> Iterator[tuple]:
    for row in spec["rows"]:
        relative = next((row[key] for key in PATH_FIELDS if row.get(key)), "")
        metadata = {k: v for k, v in row.items() if k not in CAPTION_FIELDS}
        path = os.path.join(spec["root"], relative)
        try:
            with open(path, "rb") as f:
                image = f.read()
        except OSError:
            image = None  # a missing file is skipped, not corrupt
        yield image, _caption_from(row), metadata, relative


def _tfds_examples(spec: dict[str, Any]):
    import tensorflow_datasets as tfds  # only for --format=tfds; tfds.data_source needs no TF

    return tfds.data_source(spec["name"], split=spec["split"], data_dir=spec["data_dir"] or None,
                            download=False)


def _feature(features: Any, key: str) -> Any:
    for part in key.split("/"):
        features = features[part]
    return features


def tfds_image_bytes(image: Any) -> bytes:
    """A TFDS image feature (encoded bytes, or a decoded uint8 [H, W, C] array) -> file bytes."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    array = np.asarray(image)
    if array.dtype == np.object_ or array.dtype.kind == "S":
        return bytes(array.item())
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    return images.encode_image(array.astype(np.uint8), "PNG")  # lossless for decoded pixels


def read_tfds(spec: dict[str, Any], examples: Any = None) -> Iterator[tuple]:
    examples = _tfds_examples(spec) if examples is None else examples
    for index in range(spec["start"], spec["stop"]):
        try:
            features = examples[index]
            image = tfds_image_bytes(_feature(features, spec["image_key"]))
            caption = _feature(features, spec["caption_key"])
        except (KeyError, IndexError, TypeError, ValueError) as error:
            yield None, None, {"error": str(error)}, f"{spec['name']}[{index}]"
            continue
        caption = np.asarray(caption)
        caption = caption.reshape(-1)[0] if caption.size else ""  # first of several captions
        if isinstance(caption, np.ndarray | np.generic):
            caption = caption.item()
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8", errors="replace")
        metadata = {"tfds_name": spec["name"], "split": spec["split"], "index": index}
        yield image, (str(caption).strip() or None), metadata, f"{spec['name']}[{index}]"


READERS = {"webdataset": read_webdataset, "folder": read_folder, "tfds": read_tfds}


# --- one shard --------------------------------------------------------------------------------


def done_path(output_path: str) -> str:
    return output_path + ".done.json"


def convert_shard(task: ShardTask, examples: Any = None) -> ShardStats:
    """Read one input shard, write its output shard (temporary name, then rename), mark it done."""
    from array_record.python.array_record_module import ArrayRecordWriter

    stats = ShardStats(task.output_path)
    samples = (read_tfds(task.spec, examples) if task.kind == "tfds" and examples is not None
               else READERS[task.kind](task.spec))
    partial = task.output_path + ".partial"
    writer = ArrayRecordWriter(partial, "group_size:1")
    try:
        for image, caption, metadata, name in samples:
            if image is None or caption is None:
                stats.skipped += 1
                continue
            try:
                decoded = images.open_image(image)  # the whole file must decode
                stored = images.limit_side(image, task.max_side, task.quality)
            except (images.UndecodableImageError, OSError, ValueError, SyntaxError) as error:
                stats.corrupt += 1
                if len(stats.reasons) < MAX_REASONS:
                    stats.reasons.append(f"{name}: {error}")
                continue
            metadata = {**metadata, "width": decoded.width, "height": decoded.height}
            writer.write(encode_record(stored, caption, metadata))
            stats.examples += 1
    finally:
        writer.close()
    os.replace(partial, task.output_path)
    with open(done_path(task.output_path) + ".partial", "w") as f:
        json.dump(asdict(stats), f)
    os.replace(done_path(task.output_path) + ".partial", done_path(task.output_path))
    return stats


# --- planning and the whole conversion ---------------------------------------------------------


def _output_name(output: str, prefix: str, index: int, count: int) -> str:
    return os.path.join(output, f"{prefix}-{index:05d}-of-{count:05d}.array_record")


def plan_specs(fmt: str, input_pattern: str, *, captions: str = "", examples_per_shard: int = 1000,
               tfds_name: str = "", tfds_split: str = "train", tfds_data_dir: str = "",
               image_key: str = "image", caption_key: str = "caption",
               tfds_length: int | None = None) -> list[dict[str, Any]]:
    """The input shards, in order, as reader specs; ConvertError when there are none."""
    if fmt == "webdataset":
        paths = sorted(glob.glob(os.path.expanduser(input_pattern)))
        if os.path.isdir(os.path.expanduser(input_pattern)):
            paths = sorted(glob.glob(os.path.join(os.path.expanduser(input_pattern), "*.tar")))
        if not paths:
            raise ConvertError(f"no tar shards match --input={input_pattern!r}; pass a glob like "
                               "'/data/wds/*.tar' or a folder holding .tar files")
        return [{"path": path} for path in paths]
    if examples_per_shard < 1:
        raise ConvertError(f"--examples_per_shard must be >= 1, got {examples_per_shard}")
    if fmt == "folder":
        root = os.path.expanduser(input_pattern)
        if not os.path.isdir(root):
            raise ConvertError(f"--input={input_pattern!r} is not a folder; for --format=folder "
                               "pass the folder the caption file's image paths are relative to")
        if not captions:
            raise ConvertError("--format=folder needs --captions=FILE.csv or FILE.jsonl")
        rows = read_caption_rows(os.path.expanduser(captions))
        return [{"root": root, "rows": rows[start:start + examples_per_shard]}
                for start in range(0, len(rows), examples_per_shard)]
    if fmt == "tfds":
        if not tfds_name:
            raise ConvertError("--format=tfds needs --tfds_name, e.g. coco_captions")
        base = {"name": tfds_name, "split": tfds_split, "data_dir": tfds_data_dir,
                "image_key": image_key, "caption_key": caption_key}
        if tfds_length is None:
            try:
                tfds_length = len(_tfds_examples(base))
            except Exception as error:  # tfds raises many types for a dataset it cannot open
                raise ConvertError(
                    f"cannot open TFDS dataset {tfds_name!r} split {tfds_split!r} "
                    f"({type(error).__name__}: {error}); prepare it in ArrayRecord format with "
                    f"`tfds build {tfds_name} --file_format=array_record`") from error
        if tfds_length == 0:
            raise ConvertError(f"TFDS dataset {tfds_name!r} split {tfds_split!r} is empty")
        return [{**base, "start": start, "stop": min(start + examples_per_shard, tfds_length)}
                for start in range(0, tfds_length, examples_per_shard)]
    raise ConvertError(f"unknown --format={fmt!r}; choose one of {FORMATS}")


def convert(fmt: str, input_pattern: str, output: str, *, prefix: str = "train",
            workers: int = 1, max_side: int = 0, quality: int = 95, progress: bool = True,
            tfds_examples: Any = None, **plan_options) -> dict[str, Any]:
    """Convert every input shard not yet done; returns (and writes) the summary.

    `tfds_examples` stands in for `tfds.data_source(...)` (any len/getitem object), e.g. in tests.
    """
    if tfds_examples is not None:
        plan_options["tfds_length"] = len(tfds_examples)
    specs = plan_specs(fmt, input_pattern, **plan_options)
    os.makedirs(output, exist_ok=True)
    tasks = [ShardTask(fmt, spec, _output_name(output, prefix, i, len(specs)), max_side, quality)
             for i, spec in enumerate(specs)]
    finished = {task.output_path for task in tasks
                if os.path.exists(task.output_path) and os.path.exists(done_path(task.output_path))}
    pending = [task for task in tasks if task.output_path not in finished]
    if tfds_examples is not None or workers <= 1 or len(pending) <= 1:
        results = (convert_shard(task, tfds_examples) for task in pending)
        pool = None
    else:
        # spawn, not fork: the caller may hold JAX or grain threads that a fork would copy.
        pool = multiprocessing.get_context("spawn").Pool(min(workers, len(pending)))
        results = pool.imap_unordered(convert_shard, pending)
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), initial=len(finished), unit="shard", disable=not progress,
                   desc=f"convert {fmt}")
        for stats in results:
            bar.update(1)
            bar.set_postfix(examples=stats.examples, corrupt=stats.corrupt)
        bar.close()
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    summary = summarise(tasks, fmt, input_pattern, output, prefix, redone=len(pending))
    with open(os.path.join(output, f"{prefix}-summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def summarise(tasks: Sequence[ShardTask], fmt: str, input_pattern: str, output: str,
              prefix: str, redone: int) -> dict[str, Any]:
    shards = []
    for task in tasks:
        with open(done_path(task.output_path)) as f:
            shards.append(json.load(f))
    return {
        "format": fmt, "input": input_pattern,
        "pattern": os.path.join(output, f"{prefix}-*-of-*.array_record"),
        "shards": len(shards), "converted_now": redone,
        "examples": sum(s["examples"] for s in shards),
        "skipped": sum(s["skipped"] for s in shards),
        "corrupt": sum(s["corrupt"] for s in shards),
        "corrupt_examples": [reason for s in shards for reason in s["reasons"]][:MAX_REASONS],
        "per_shard": shards,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--input", default="", help="tar glob/folder (webdataset) or image folder")
    parser.add_argument("--output", required=True, help="folder for the ArrayRecord shards")
    parser.add_argument("--prefix", default="train", help="shard names: PREFIX-NNNNN-of-MMMMM")
    parser.add_argument("--captions", default="", help="CSV/JSONL of image path + caption")
    parser.add_argument("--examples_per_shard", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="processes converting shards")
    parser.add_argument("--max_side", type=int, default=0,
                        help="re-encode images whose longer side exceeds this (0: keep bytes)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality when re-encoding")
    parser.add_argument("--tfds_name", default="")
    parser.add_argument("--tfds_split", default="train")
    parser.add_argument("--tfds_data_dir", default="")
    parser.add_argument("--image_key", default="image")
    parser.add_argument("--caption_key", default="caption")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = convert(
            args.format, args.input, args.output, prefix=args.prefix, workers=args.workers,
            max_side=args.max_side, quality=args.quality, progress=not args.no_progress,
            captions=args.captions, examples_per_shard=args.examples_per_shard,
            tfds_name=args.tfds_name, tfds_split=args.tfds_split,
            tfds_data_dir=args.tfds_data_dir, image_key=args.image_key,
            caption_key=args.caption_key)
    except ConvertError as error:
        # One line (tarfile's messages span several); finished shards stay for a rerun.
        print("convert: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    print(f"{summary['examples']} examples in {summary['shards']} shards "
          f"({summary['converted_now']} converted now), {summary['skipped']} skipped, "
          f"{summary['corrupt']} corrupt -> {summary['pattern']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
