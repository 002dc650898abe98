"""docs/text_to_image.md and docs/text_to_image.png: Chameleon tiny's text -> image samples for
seen and held-out colour-shape prompts, without and with classifier-free guidance, scored by a
colour check and a contrastive judge's CLIPScore beside their ceilings and chance.

    PYTHONPATH=. python benchmarks/text_to_image_report.py              # train what is missing
    PYTHONPATH=. python benchmarks/text_to_image_report.py --vq=runs/families/vq_tiny \
        --judge=runs/families/siglip_tiny                              # reuse trained runs
    PYTHONPATH=. python benchmarks/text_to_image_report.py --micro --steps=2 \
        --out=/tmp/t2i/text_to_image.md                                # smoke

Runs live in --root (default runs/text_to_image): vq_tiny (configs/vq.py:tiny, unless --vq),
siglip_tiny (the judge, configs/siglip.py:tiny, unless --judge) and chameleon_t2i
(configs/chameleon.py:tiny,t2i on that VQ). A finished run is reused; --retrain starts over.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import reports  # noqa: E402
from benchmarks.reports import table  # noqa: E402
from vlm_jax import early_fusion_generation as generation  # noqa: E402
from vlm_jax import pictures, restore  # noqa: E402
from vlm_jax.data import world  # noqa: E402
from vlm_jax.data.world_scene import COLOURS  # noqa: E402
from vlm_jax.evals import text_to_image as t2i_eval  # noqa: E402
from vlm_jax.evals.caption_metrics import clip_score  # noqa: E402
from vlm_jax.models import early_fusion, vq  # noqa: E402

NAME = "text_to_image"
SPECS = {"vq_tiny": "configs/vq.py:tiny", "siglip_tiny": "configs/siglip.py:tiny",
         "chameleon_t2i": "configs/chameleon.py:tiny,t2i,vq={vq}"}
PROMPT_SETS = (("seen", False), ("held-out", True))
PICTURE_SAMPLES = 4  # samples shown per grid row


def prompt_images(prompts: list[str], heldout: bool, image_size: int) -> np.ndarray:
    """uint8 [P, S, S, 3]: the world image each prompt (a caption from colour_prompts) was
    written for: the ceiling of both scores."""
    source = world.World("heldout" if heldout else "val", image_size=image_size)
    wanted, found, index = set(prompts), {}, 0
    while len(found) < len(wanted):
        example = source[index]
        if str(example["caption"]) in wanted:
            found.setdefault(str(example["caption"]), example["image"])
        index += 1
    return np.stack([found[p] for p in prompts])


def scores(judge, images: np.ndarray, prompts: list[str], colours: list[str]) -> dict:
    """images [P, n, S, S, 3]: colour-check accuracy and mean CLIPScore (each with its standard
    error over the P * n images) against the right prompts and against shuffled ones (each
    prompt's images scored against the next prompt: every colour moved, the chance reference)."""
    p, n = images.shape[:2]
    flat = images.reshape(p * n, *images.shape[2:])
    out = {}
    for key, shift in (("", 0), ("shuffled_", 1)):
        texts = [prompts[(k + shift) % p] for k in range(p) for _ in range(n)]
        wanted = [colours[(k + shift) % p] for k in range(p) for _ in range(n)]
        right = np.array([f == c for f, c in zip(t2i_eval.dominant_colours(flat), wanted,
                                                  strict=True)], np.float64)
        clip = clip_score(judge.encode_images(flat), judge.encode_texts(judge.tokenize(texts)))
        out[key + "colour"] = float(right.mean())
        out[key + "colour_se"] = float(np.sqrt(right.mean() * (1 - right.mean()) / len(right)))
        out[key + "clipscore"] = float(np.mean(clip))
        out[key + "clipscore_se"] = float(np.std(clip) / np.sqrt(len(clip)))
    out["images"] = p * n
    return out


def caption_kl(run, image_tokenizer, prompts: list[str], images: np.ndarray) -> dict:
    """Mean (and standard error over prompts) of KL(cond || uncond) in nats a code, teacher-forced
    on each prompt's real image codes."""
    vocab = early_fusion.image_vocabulary(run.tokenizer, image_tokenizer.codebook_size)
    codes = vq.tokenize(image_tokenizer.model, image_tokenizer.params, images)  # [P, T]
    prompt, lengths = generation.image_prompts(
        run.tokenizer, vocab, prompts, run.config.data.text_length - image_tokenizer.num_codes - 1)
    kl = np.asarray(jax.jit(generation.caption_kl, static_argnums=(0, 2))(
        run.model, run.params, vocab, prompt, lengths, codes))  # [P, T]
    per_prompt = kl.mean(1)
    return {"mean": float(per_prompt.mean()),
            "se": float(per_prompt.std() / np.sqrt(len(per_prompt))), "max": float(kl.max())}


def last_losses(workdir: str) -> dict[str, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [row for row in map(json.loads, f) if "train/image_loss" in row]
    return {"step": rows[-1]["step"], "text_loss": rows[-1]["train/text_loss"],
            "image_loss": rows[-1]["train/image_loss"]}


def evaluate(run, image_tokenizer, judge, samples: int, guidance: float, prompts_per_set: int
             ) -> tuple[dict, list, list]:
    """{set: {kind: scores, "kl": ...}} and the grid's rows and labels."""
    size = image_tokenizer.image_size
    kinds = (("real images (ceiling)", None), ("unconditional stream only", 0.0),
             ("no guidance", 1.0), (f"guidance s={guidance:g}", guidance))
    results, rows, labels = {}, [], []
    for prompt_set, heldout in PROMPT_SETS:
        prompts, colours = t2i_eval.colour_prompts(prompts_per_set, size, heldout=heldout)
        real = prompt_images(prompts, heldout, size)
        results[prompt_set] = {"kl": caption_kl(run, image_tokenizer, prompts, real)}
        for kind, scale in kinds:
            if scale is None:
                images = real[:, None]
            else:
                sampling = generation.ImageSampling(samples, scale, 1.0, seed=0)
                images = generation.text_to_image(run.model, run.params, run.tokenizer,
                                                  image_tokenizer, prompts, sampling)
                if scale != 0.0:
                    for k, prompt in enumerate(prompts):
                        rows.append(list(images[k, :PICTURE_SAMPLES]))
                        labels.append(f"{prompt_set} | {kind}\n{prompt[:48]}")
            results[prompt_set][kind] = scores(judge, images, prompts, colours)
    return results, rows, labels


def markdown(results: dict, setup: dict) -> str:
    """The page from the results ({set: {kind: scores, "kl": ...}}) and the run's setup."""
    def pm(s: dict, key: str) -> str:
        return f"{s[key]:.3f} ± {s[key + '_se']:.3f}"

    sections = []
    for prompt_set, _ in PROMPT_SETS:
        by_kind = results[prompt_set]
        rows = [[kind, str(s["images"]), pm(s, "colour"), pm(s, "shuffled_colour"),
                 pm(s, "clipscore"), pm(s, "shuffled_clipscore")]
                for kind, s in by_kind.items() if kind != "kl"]
        kl = by_kind["kl"]
        sections.append(
            f"### {prompt_set} prompts\n\n" + table(
                ["images", "n", "colour check", "colour, shuffled prompts", "CLIPScore",
                 "CLIPScore, shuffled prompts"], rows)
            + f"\n\nKL(cond || uncond) of the next-code distributions, teacher-forced on the "
              f"prompts' real image codes: {kl['mean']:.4f} ± {kl['se']:.4f} nats a code "
              f"(max over codes {kl['max']:.3f}).")
    return TEMPLATE.format(command=setup["command"], runs=setup["runs"],
                           losses=setup["losses"], chance=1 / len(COLOURS),
                           sections="\n\n".join(sections), reading=reading(results))


def reading(results: dict) -> str:
    """Whether text -> image leaves chance: the guided and unguided colour checks against the
    shuffled-prompt chance, by more than two standard errors."""
    lines = []
    for prompt_set, _ in PROMPT_SETS:
        for kind, s in results[prompt_set].items():
            if kind in ("kl", "real images (ceiling)", "unconditional stream only"):
                continue
            margin = s["colour"] - s["shuffled_colour"]
            se = np.hypot(s["colour_se"], s["shuffled_colour_se"])
            verdict = "above chance" if margin > 2 * se else "at chance"
            lines.append(f"- {prompt_set}, {kind}: colour check {s['colour']:.3f} vs "
                         f"{s['shuffled_colour']:.3f} with shuffled prompts ({margin:+.3f}, "
                         f"2 SE = {2 * se:.3f}): **{verdict}**; CLIPScore "
                         f"{s['clipscore']:.3f} vs {s['shuffled_clipscore']:.3f}.")
    return "\n".join(lines)


TEMPLATE = """# Text -> image (Chameleon tiny)

Written by `benchmarks/text_to_image_report.py` (do not edit by hand; rerun it):

    {command}

{runs}

Last logged training batch of the Chameleon run: {losses}.

Each prompt is the caption of a one-object world scene (`vlm_jax/evals/text_to_image.py`,
`colour_prompts`): **seen** prompts cycle through the 7 colours on val scenes; **held-out**
prompts name the colour-shape pairs never captioned in training. Samples are drawn at
temperature 1 (`vlm_jax/early_fusion_generation.py`): from the unconditional stream `BOS <boi>`
alone (guidance scale 0: the caption-free baseline), from the caption (no guidance) and with
classifier-free guidance `uncond + s (cond - uncond)`. The colour check asks whether the
dominant non-background palette colour is the prompt's colour (chance {chance:.3f} = 1/7);
CLIPScore is the judge's `2.5 max(cos, 0)`. "Shuffled prompts" scores each prompt's images
against the next prompt (a different colour): the chance reference. ± is one standard error
over the images (binomial for the colour check).

{sections}

![samples](text_to_image.png)

Rows: per prompt set, samples without guidance, then with guidance, four per prompt.

## Reading

{reading}
"""


def main() -> None:
    parser = reports.arg_parser(__doc__.split("\n")[0], NAME)
    parser.add_argument("--vq", default="", help="a finished configs/vq.py run to reuse")
    parser.add_argument("--judge", default="", help="a finished contrastive run (CLIPScore)")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt and setting")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--prompts", type=int, default=7, help="prompts per set")
    args = parser.parse_args()
    load = os.getloadavg()
    root, batch = reports.root(args, NAME), reports.batch(args)
    steps = args.steps or (2 if args.micro else 0)
    vq_dir = args.vq or os.path.join(root, "vq_tiny")
    judge_dir = args.judge or os.path.join(root, "siglip_tiny")
    wanted = {name: spec.format(vq=vq_dir) for name, spec in SPECS.items()
              if not (name == "vq_tiny" and args.vq or name == "siglip_tiny" and args.judge)}
    outcomes, configs = {}, {}
    for name, spec in wanted.items():  # in order: the Chameleon config reads the VQ run
        configs[name] = reports.run_config(spec, steps, batch, args.micro)
        outcomes |= reports.train_all({name: configs[name]}, {name: spec}, root, args.retrain)
    workdir = os.path.join(root, "chameleon_t2i")
    run = restore.restore_run(workdir)
    image_tokenizer = generation.load_image_tokenizer(run.config)
    judge = restore.restore_run(judge_dir).scorer()
    results, rows, labels = evaluate(run, image_tokenizer, judge, args.samples, args.guidance,
                                     args.prompts)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    pictures.save_labelled_image_grid(os.path.join(out_dir, "text_to_image.png"), rows, labels,
                                       label_width=300)
    runs = table(["run", "config", "steps × batch", "training"], [
        [name, f"`{wanted[name]}`", f"{c.total_steps} × {c.batch_size}",
         reports.describe_training(outcomes[name])] for name, c in configs.items()]
        + [[os.path.basename(d), "reused (--vq / --judge)", "—", d]
           for d in (args.vq, args.judge) if d])
    losses = last_losses(workdir)
    setup = {"command": "PYTHONPATH=. python " + " ".join(sys.argv),
             "runs": runs + f"\n\nLoad average when the report started: {load[0]:.1f} / "
                            f"{load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min).",
             "losses": f"step {losses['step']}, text_loss {losses['text_loss']:.3f}, "
                       f"image_loss {losses['image_loss']:.3f} nats a token"}
    with open(args.out, "w") as f:
        f.write(markdown(results, setup))
    with open(os.path.join(workdir, "text_to_image_report.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    print(f"wrote {args.out} and {os.path.join(out_dir, 'text_to_image.png')}")


if __name__ == "__main__":
    main()
