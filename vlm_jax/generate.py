"""Ask a trained generative run about one image file:

    python -m vlm_jax.generate --workdir=DIR --image=FILE.png --prompt="what colour is the circle?"
    python -m vlm_jax.generate --workdir=DIR --image=FILE.jpg --prompts=questions.txt
    python -m vlm_jax.generate --workdir=DIR --image=FILE.png --strategy=sample --temperature=0.7

The run is restored from its workdir (`vlm_jax.restore`: its recorded config, latest
checkpoint, params only). The image (PNG, JPEG, anything Pillow opens) is centre-cropped and
resized to the run's data.image_size. `--prompts` reads one prompt per line (blank lines
skipped) and answers them in one batch; without a prompt the model captions the image. A
prompt may place the image with "<image>"; otherwise it comes first (in a chat model's user
turn). Decoding follows the run's `config.decode`; the flags override its fields.
Prints one "prompt -> answer" line per prompt.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from vlm_jax import serving
from vlm_jax.data import images as image_files

# Decoding flags that override the run's config.decode fields of the same name.
_OVERRIDES = ("strategy", "max_len", "temperature", "top_k", "top_p", "beam_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; argparse rather than absl flags, so importing this module next to
    vlm_jax.main (which defines --workdir too) defines nothing global."""
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.generate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained run's workdir")
    parser.add_argument("--image", required=True, help="the image file (PNG, JPEG, ...)")
    parser.add_argument("--prompt", help="one prompt (default: caption the image)")
    parser.add_argument("--prompts", help="a file of prompts, one per line")
    parser.add_argument("--strategy", choices=["greedy", "sample", "beam"],
                        help="decoding strategy (default: config.decode.strategy)")
    parser.add_argument("--max_len", type=int, help="new tokens at most")
    parser.add_argument("--temperature", type=float, help="sampling temperature")
    parser.add_argument("--top_k", type=int, help="sample among the k most probable (0: off)")
    parser.add_argument("--top_p", type=float, help="nucleus sampling mass (1: off)")
    parser.add_argument("--beam_size", type=int, help="beam search width")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    return parser.parse_args(argv)


class UsageError(ValueError):
    """A flag or input file is wrong; the message says which and what to do."""


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[str] | None:
    """The prompts of the flags: one, the lines of a file, or None (caption the image)."""
    if prompt is not None and prompts_file is not None:
        raise UsageError("give --prompt or --prompts, not both")
    if prompts_file is None:
        return None if prompt is None else [prompt]
    try:
        with open(prompts_file, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as error:
        raise UsageError(f"cannot read --prompts file {prompts_file!r}: {error.strerror}") from None
    prompts = [line for line in lines if line]
    if not prompts:
        raise UsageError(f"--prompts file {prompts_file!r} holds no prompt (one per line)")
    return prompts


def load_image(path: str, size: int) -> np.ndarray:
    """uint8 [size, size, 3] of an image file, centre-cropped and resized like eval images."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise UsageError(f"cannot read --image {path!r}: {error.strerror}") from None
    try:
        pixels = image_files.decode_image(data)
    except Exception as error:  # Pillow raises several types for files it cannot decode
        raise UsageError(f"--image {path!r} is not an image Pillow can open ({error}); give a "
                         "PNG or JPEG file") from None
    return image_files.center_crop_resize(pixels, size)


def answer(workdir: str, image_path: str, prompts: list[str] | None, seed: int = 0,
           **overrides) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of the run in `workdir` about the image; `overrides` replace
    fields of its decode settings (None values are ignored)."""
    from vlm_jax import restore  # jax and the model stack load only once the flags are good

    run = restore.restore_run(workdir)
    if "captioner" not in run.trainer.CAPABILITIES:
        raise UsageError(f"the run in {workdir} ({run.config.trainer}) cannot generate text; "
                         "use a generative run (Frozen, LLaVA, CoCa)")
    pixels = load_image(image_path, run.config.data.image_size)
    config = run.config  # the restored record: decoding and the sampling seed come from it
    config.decode.update({k: v for k, v in overrides.items() if v is not None})
    config.seed = seed
    serving.decode_settings(config)  # bad settings fail here, in one line
    captioner = run.trainer.make_captioner(run.model, run.params, run.tokenizer, run.mesh,
                                           config)
    shown = prompts or ["(caption)"]
    images = np.repeat(pixels[None], len(shown), axis=0)
    texts = captioner.generate(images, prompts)
    return list(zip(shown, texts, strict=True))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        prompts = read_prompts(args.prompt, args.prompts)
        pairs = answer(args.workdir, args.image, prompts, args.seed,
                       **{name: getattr(args, name) for name in _OVERRIDES})
    except (UsageError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for prompt, text in pairs:
        print(f"{prompt} -> {text}")


if __name__ == "__main__":
    main()
