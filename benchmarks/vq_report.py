"""The "Image tokenizer" section of docs/early_fusion.md: configs/vq.py:tiny trained (or its
finished run reused) in runs/vq/vq_tiny, evaluated on world val images by vlm_jax.vq_tokenizer,
its reconstructions copied to docs/vq_reconstructions.png.

    PYTHONPATH=. python benchmarks/vq_report.py            # train (once) + write the section
    PYTHONPATH=. python benchmarks/vq_report.py --micro    # smoke run: 20 steps, batch 16

Only the section between its two markers is rewritten; the rest of the page is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reports  # noqa: E402  (benchmarks/ is not a package)

from vlm_jax import vq_tokenizer  # noqa: E402

NAME = "vq"
SPEC = "configs/vq.py:tiny"
BEGIN, END = "<!-- vq_report: begin -->", "<!-- vq_report: end -->"
PICTURE = "vq_reconstructions.png"


def last_train_metrics(workdir: str) -> dict[str, float]:
    """The last logged row of train/* metrics in workdir/metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [row for row in map(json.loads, f) if "train/loss" in row]
    return rows[-1]


def section(config, outcome: dict, load: tuple[float, float, float], train: dict,
            evaluation: dict) -> str:
    factor = evaluation["mean_colour_mse"] / evaluation["mse"]
    return "\n".join([
        BEGIN,
        "## Image tokenizer",
        "",
        f"`{SPEC}` (`vlm_jax/models/vq.py`, `vlm_jax/trainers/vq.py`): a VQ-VAE with an EMA "
        f"codebook of {config.model.codebook_size} codes of width {config.model.code_dim}, "
        f"{config.data.image_size} px world images -> "
        f"{config.data.image_size // 2 ** len(config.model.channels)} x "
        f"{config.data.image_size // 2 ** len(config.model.channels)} codes, "
        f"{config.total_steps} steps at batch {config.batch_size}, "
        f"{reports.describe_training(outcome)} on the shared 2-core CPU (load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} over 1 / 5 / 15 min when the report "
        "started). Pixels are on [-1, 1]; the MSE is over pixels and channels.",
        "",
        reports.table(
            ["measure", "value"],
            [["reconstruction MSE, world val (tokenize -> detokenize)",
              f"{evaluation['mse']:.4f}"],
             ["mean-colour baseline MSE (each image by its own mean colour)",
              f"{evaluation['mean_colour_mse']:.4f}"],
             ["baseline / tokenizer", f"{factor:.1f}x"],
             [f"codes used over {evaluation['num_images']} val images",
              f"{evaluation['codes_used']} of {evaluation['codebook_size']}"],
             ["code perplexity over those images", f"{evaluation['perplexity']:.1f}"],
             ["last logged training batch: reconstruction MSE",
              f"{train['train/reconstruction_mse']:.4f}"],
             ["last logged training batch: perplexity", f"{train['train/perplexity']:.1f}"],
             ["last logged training batch: dead codes (restarted that step)",
              f"{train['train/dead_codes']:.0f}"]]),
        "",
        f"![originals and reconstructions]({PICTURE})",
        "",
        "Rows alternate: world val images, then their reconstructions from the codes. Written "
        "by `benchmarks/vq_report.py`; `python -m vlm_jax.vq_tokenizer --workdir=<run>` "
        "evaluates any run the same way.",
        END,
    ])


def write_section(path: str, text: str) -> None:
    """Replace the section between BEGIN and END in `path` (append it when absent)."""
    page = open(path).read() if os.path.exists(path) else "# Early fusion\n"
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        page = head + text + rest.split(END, 1)[1]
    else:
        page = page.rstrip("\n") + "\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(page)


def main() -> None:
    parser = reports.arg_parser(__doc__.split("\n")[0], NAME)
    parser.set_defaults(out="docs/early_fusion.md")
    args = parser.parse_args()
    load = os.getloadavg()
    steps = args.steps or (20 if args.micro else 0)
    config = reports.run_config(SPEC, steps, reports.batch(args), args.micro)
    root = reports.root(args, NAME)
    outcome = reports.train_all({"vq_tiny": config}, {"vq_tiny": SPEC}, root,
                                args.retrain)["vq_tiny"]
    workdir = os.path.join(root, "vq_tiny")
    evaluation = vq_tokenizer.evaluate_run(workdir, num_images=64 if args.micro else 512)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(os.path.join(workdir, "reconstructions.png"), os.path.join(out_dir, PICTURE))
    write_section(args.out, section(config, outcome, load, last_train_metrics(workdir),
                                    evaluation))
    print(json.dumps(evaluation, indent=1, sort_keys=True))
    print(f"wrote {args.out} and {os.path.join(out_dir, PICTURE)}")


if __name__ == "__main__":
    main()
