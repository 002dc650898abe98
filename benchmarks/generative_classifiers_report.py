"""Score the families' runs as classifiers every way each supports, on the same eval sets, and
write docs/generative_classifiers.md: zero-shot and the relation / attribute / count probes by
embedding cosine, caption likelihood, debiased caption likelihood and image likelihood.

    python benchmarks/generative_classifiers_report.py        # reuse runs/families, evaluate
    python benchmarks/generative_classifiers_report.py --families=/path/to/runs/families
    python benchmarks/generative_classifiers_report.py --micro --steps=2 --out=/tmp/gc.md  # smoke

The runs are the families report's (`benchmarks/families_report.py`, one folder per run in
--families, default runs/families; --micro: runs/families_micro): a run missing there is
trained into it with the families report's own config and steps (`reports.train_or_reuse`;
Chameleon's VQ tokenizer first), a finished one is reused. Each model is scored with every
scoring its trainer serves (SCORINGS):

- cosine (a "scorer": CLIP, SigLIP, Llip, FLAVA, CoCa's towers): `zeroshot`, `compositional`;
- caption likelihood log P(t|i) (a "captioner": CoCa, Chameleon): `genzeroshot`,
  `gencompositional`;
- debiased caption likelihood log P(t|i) - alpha log P(t) (a captioner): `gendebiased`, every
  alpha of `evals.prior_alphas`, and its blind text-prior score;
- image likelihood log p(image codes | prompt) (an "image_likelihood": Chameleon):
  `imgzeroshot`, `imgcompositional`.

The zero-shot images are the same for every scoring (`zeroshot_size` is set to
`genzeroshot_size`). The likelihood evals score the world's seen-class split only; the
held-out split (the 24 seen classes and 4 colour-shape pairs never captioned in training, 28
names) is scored here through the same evals' class-score functions (`heldout_zeroshot`).
Results go to --results (default: <families>/generative_classifiers_results.json).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import families_report, reports  # noqa: E402
from benchmarks.reports import cell, table  # noqa: E402
from vlm_jax import evals, restore  # noqa: E402
from vlm_jax.data import world  # noqa: E402
from vlm_jax.evals import debiased_caption, generative_zeroshot, image_likelihood_zeroshot  # noqa: E402,E501
from vlm_jax.evals.zeroshot import zeroshot_metrics  # noqa: E402

# The models of the page, in its order (run names of families_report.FAMILIES). Other
# captioners (the prefix-LM rows: Frozen, LLaVA, ...) can be added with --models.
MODELS = ("clip_tiny", "siglip_tiny", "llip_tiny", "flava_tiny", "coca_tiny", "chameleon_tiny")
# scoring -> (the capability it needs, its evals)
SCORINGS = {
    "cosine": ("scorer", ("zeroshot", "compositional")),
    "caption likelihood": ("captioner", ("genzeroshot", "gencompositional")),
    "debiased": ("captioner", ("gendebiased",)),
    "image likelihood": ("image_likelihood", ("imgzeroshot", "imgcompositional")),
}
SEEN, HELDOUT = "single_object", "heldout_single_object"  # zero-shot split names
GROUP_CHANCE = 1 / 6  # random scores: s00 and s11 the two largest of four, 2! 2! / 4!
MICRO_PRIOR_IMAGES = 4  # reference images of gendebiased's text prior under --micro


def scorings_of(capabilities: frozenset) -> list[str]:
    """The SCORINGS a trainer with `capabilities` serves, in SCORINGS' order."""
    return [name for name, (needed, _) in SCORINGS.items() if needed in capabilities]


def heldout_zeroshot(scoring: str, served: dict, eval_config) -> dict[str, float]:
    """The held-out zero-shot split (`genzeroshot_size` images, 28 names) scored as the
    likelihood evals score the seen one, under their metric names: <eval>/heldout_single_object
    /top1 (and gendebiased's top1_a<alpha>, blind_top1), plus the split's chance."""
    if scoring == "cosine":  # `zeroshot` scores both splits itself
        return {}
    images, labels, class_names = world.single_object_set(
        "heldout", eval_config.genzeroshot_size, seed=eval_config.seed,
        image_size=eval_config.image_size)
    templates, batch = world.ZEROSHOT_TEMPLATES, eval_config.batch_size
    names = tuple(class_names)
    if scoring == "image likelihood":
        scores = image_likelihood_zeroshot.image_class_scores(
            served["image_likelihood"], images, names, templates, batch)
        return {f"imgzeroshot/{HELDOUT}/top1": zeroshot_metrics(scores, labels)["top1"],
                f"imgzeroshot/{HELDOUT}/chance": 1 / len(names)}
    model = served["captioner"]
    if scoring == "caption likelihood":
        scores = generative_zeroshot.likelihood_class_scores(model, images, names, templates,
                                                             batch)
        return {f"genzeroshot/{HELDOUT}/top1": zeroshot_metrics(scores, labels)["top1"],
                f"genzeroshot/{HELDOUT}/chance": 1 / len(names)}
    prompts = [template.format(name) for template in templates for name in names]
    prior = debiased_caption.text_log_prior(
        model, prompts, debiased_caption.reference_images(eval_config), batch)
    likelihood, class_prior = debiased_caption.zeroshot_scores(model, images, names, templates,
                                                               prior, batch)
    results = {f"gendebiased/{HELDOUT}/chance": 1 / len(names),
               f"gendebiased/{HELDOUT}/blind_top1": zeroshot_metrics(
                   np.broadcast_to(class_prior[None], likelihood.shape), labels)["top1"]}
    for alpha in debiased_caption.alphas_of(eval_config):
        results[f"gendebiased/{HELDOUT}/top1_{debiased_caption.alpha_name(alpha)}"] = (
            zeroshot_metrics(likelihood - alpha * class_prior[None], labels)["top1"])
    return results


def evaluate(run: restore.RestoredRun, eval_config, only: tuple[str, ...] = tuple(SCORINGS)
             ) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, {scoring: wall seconds}) of every scoring of `only` the run's trainer serves
    (a scoring left out shows as "—" on the page)."""
    results, seconds = {}, {}
    for scoring in scorings_of(run.trainer.CAPABILITIES):
        if scoring not in only:
            continue
        names = SCORINGS[scoring][1]
        started = time.perf_counter()
        served = run.served(names)
        results.update(evals.run_served(names, served, eval_config))
        results.update(heldout_zeroshot(scoring, served, eval_config))
        seconds[scoring] = round(time.perf_counter() - started, 1)
    return results, seconds


def rows_of(scorings: list[str], alphas: tuple[float, ...]) -> list[tuple[str, str, str]]:
    """(row label, eval prefix, metric suffix) of each table row one model's scorings give:
    debiased gives one row per alpha > 0 (alpha = 0 is the caption-likelihood row)."""
    rows = []
    for scoring in scorings:
        if scoring == "debiased":
            rows += [(f"debiased α={alpha:g}", "gendebiased",
                      f"_{debiased_caption.alpha_name(alpha)}") for alpha in alphas if alpha]
        else:
            rows.append((scoring, {"cosine": "zeroshot", "caption likelihood": "genzeroshot",
                                   "image likelihood": "imgzeroshot"}[scoring], ""))
    return rows


def _probe_prefix(prefix: str) -> str:
    return {"zeroshot": "compositional", "genzeroshot": "gencompositional",
            "imgzeroshot": "imgcompositional"}.get(prefix, prefix)


def _blind_keys(prefix: str, kind: str | None) -> str | None:
    """The blind text-only score of a row's eval: cosine's mean-image probe baseline,
    gendebiased's text prior (zero-shot and probes); None where the eval gives none."""
    if kind is None:
        return "gendebiased/{split}/blind_top1" if prefix in ("genzeroshot",
                                                                 "gendebiased") else None
    if prefix == "zeroshot":
        return f"compositional/{kind}/blind_acc2"
    if prefix in ("genzeroshot", "gendebiased"):
        return f"gendebiased/{kind}/blind_acc2"
    return None


def zeroshot_table(results: dict, labels: dict, models: dict) -> str:
    rows = []
    for name, scorings in models.items():
        result = results[name]
        for label, prefix, suffix in scorings:
            blind = _blind_keys(prefix, None)
            rows.append([labels[name], label]
                        + [cell(result, f"{prefix}/{split}/top1{suffix}") for split in
                           (SEEN, HELDOUT)]
                        + [cell(result, f"{prefix}/{split}/chance") for split in (SEEN, HELDOUT)]
                        + [cell(result, blind.format(split=split)) if blind else "—"
                           for split in (SEEN, HELDOUT)])
    return table(["model", "scoring", "seen top-1", "held-out top-1", "seen chance",
                  "held-out chance", "blind seen", "blind held-out"], rows)


def probes_table(results: dict, labels: dict, models: dict) -> str:
    rows = []
    for name, scorings in models.items():
        result = results[name]
        for label, prefix, suffix in scorings:
            row = [labels[name], label]
            for kind in world.PROBE_KINDS:
                blind = _blind_keys(prefix, kind)
                row += [cell(result, f"{_probe_prefix(prefix)}/{kind}/{metric}{suffix}")
                        for metric in ("acc2", "group")]
                row.append(cell(result, blind) if blind else "—")
            rows.append(row)
    rows.append(["chance", ""] + [f"{0.5:.3f}", f"{GROUP_CHANCE:.3f}", "—"]
                * len(world.PROBE_KINDS))
    header = ["model", "scoring"] + [f"{kind} {column}" for kind in world.PROBE_KINDS
                                     for column in ("acc2", "group", "blind acc2")]
    return table(header, rows)


def timing_table(timings: dict, labels: dict) -> str:
    """Rows in the page's model order (`labels`) and SCORINGS' order (a JSON round trip sorts
    the keys)."""
    rows = [[labels[name], scoring, f"{timings[name][scoring]:.0f}"]
            for name in labels if name in timings
            for scoring in SCORINGS if scoring in timings[name]]
    return table(["model", "scoring", "eval wall s"], rows)


def reading(results: dict, labels: dict, models: dict) -> str:
    """Bullet points read off the numbers (so they stay true when the report reruns): where a
    generative scoring beats the same model's or the best cosine, the best alpha, and image
    likelihood against chance."""
    lines = []
    cosine = {name: results[name] for name, rows in models.items()
              if any(prefix == "zeroshot" for _, prefix, _ in rows)}
    for split, words in ((SEEN, "seen"), (HELDOUT, "held-out")):
        best_cosine = max(((result[f"zeroshot/{split}/top1"], labels[name])
                           for name, result in cosine.items()
                           if f"zeroshot/{split}/top1" in result), default=None)
        generative = [(results[name][f"{prefix}/{split}/top1{suffix}"], f"{labels[name]} {label}")
                      for name, rows in models.items() for label, prefix, suffix in rows
                      if prefix != "zeroshot" and f"{prefix}/{split}/top1{suffix}" in results[name]]
        if best_cosine is not None and generative:
            best = max(generative)
            verdict = "beats" if best[0] > best_cosine[0] else "does not beat"
            lines.append(f"- **zero-shot {words}**: the best generative scoring ({best[1]}, top-1 "
                         f"{best[0]:.3f}) {verdict} the best cosine ({best_cosine[1]}, "
                         f"{best_cosine[0]:.3f}).")
    for kind in world.PROBE_KINDS:
        best_cosine = max(((result[f"compositional/{kind}/acc2"], labels[name])
                           for name, result in cosine.items()
                           if f"compositional/{kind}/acc2" in result), default=None)
        generative = []
        for name, rows in models.items():
            for label, prefix, suffix in rows:
                key = f"{_probe_prefix(prefix)}/{kind}/acc2{suffix}"
                if prefix != "zeroshot" and key in results[name]:
                    generative.append((results[name][key], f"{labels[name]} {label}"))
        if best_cosine is None or not generative:
            continue
        best = max(generative)
        verdict = "beats" if best[0] > best_cosine[0] else "does not beat"
        lines.append(f"- **{kind}**: the best generative scoring ({best[1]}, acc2 "
                     f"{best[0]:.3f}) {verdict} the best cosine ({best_cosine[1]}, "
                     f"{best_cosine[0]:.3f}); chance 0.500.")
    for name, rows in models.items():
        result = results[name]
        if not any(prefix == "gendebiased" for _, prefix, _ in rows):
            continue
        alphas = [0.0] + [float(suffix[2:]) for _, prefix, suffix in rows
                          if prefix == "gendebiased"]
        for target, key in (("zero-shot seen top-1", f"gendebiased/{SEEN}/top1_{{}}"),
                            ("zero-shot held-out top-1", f"gendebiased/{HELDOUT}/top1_{{}}"),
                            *((f"{kind} acc2", f"gendebiased/{kind}/acc2_{{}}")
                              for kind in world.PROBE_KINDS)):
            values = {alpha: result.get(key.format(debiased_caption.alpha_name(alpha)))
                      for alpha in alphas}
            values = {alpha: value for alpha, value in values.items() if value is not None}
            if len(values) < 2:
                continue
            best_alpha = max(values, key=lambda alpha: (values[alpha], -alpha))
            change = values[best_alpha] - values[0.0]
            lines.append(f"- {labels[name]}, {target}: debiasing "
                         + (f"helps most at α={best_alpha:g} ({values[0.0]:.3f} → "
                            f"{values[best_alpha]:.3f})" if change > 0 else
                            f"does not help (α=0: {values[0.0]:.3f}; "
                            + ", ".join(f"α={a:g}: {v:.3f}" for a, v in values.items() if a)
                            + ")") + ".")
    for name, rows in models.items():
        result = results[name]
        if not any(prefix == "imgzeroshot" for _, prefix, _ in rows):
            continue
        parts = []
        for split, words in ((SEEN, "seen"), (HELDOUT, "held-out")):
            top1, chance = (result.get(f"imgzeroshot/{split}/{m}") for m in ("top1", "chance"))
            if top1 is not None and chance is not None:
                parts.append(f"{words} top-1 {top1:.3f} against chance {chance:.3f} ("
                             + ("above" if top1 > chance else "not above") + ")")
        for kind in world.PROBE_KINDS:
            acc2 = result.get(f"imgcompositional/{kind}/acc2")
            if acc2 is not None:
                parts.append(f"{kind} acc2 {acc2:.3f}")
        if parts:
            lines.append(f"- {labels[name]} image likelihood: " + "; ".join(parts) + ".")
    return "\n".join(lines) or "- (no comparisons: the runs lack the metrics)"


def alpha_zero_gap(results: dict) -> float | None:
    """The largest |gendebiased α=0 − plain likelihood| over the metrics both report (0 by
    construction: a check that the two evals scored the same sets the same way)."""
    gaps = []
    for result in results.values():
        for key, value in result.items():
            if key.startswith("gendebiased/") and key.endswith("_a0"):
                eval_, split, metric = key.split("/")
                plain = ("genzeroshot" if split in (SEEN, HELDOUT) else "gencompositional")
                other = result.get(f"{plain}/{split}/{metric[:-3]}")
                if other is not None:
                    gaps.append(abs(value - other))
    return max(gaps) if gaps else None


def markdown(results: dict, timings: dict, setup: dict) -> str:
    """docs/generative_classifiers.md from {run: metrics}, {run: {scoring: seconds}} and the
    setup (command, labels, capabilities, alphas, eval sizes, runs table rows)."""
    labels, alphas = setup["labels"], tuple(setup["alphas"])
    models = {name: rows_of(scorings_of(frozenset(setup["capabilities"][name])), alphas)
              for name in results}
    gap = alpha_zero_gap(results)
    return TEMPLATE.format(
        command=setup["command"], runs=setup["runs"],
        eval_sizes=", ".join(f"{k}={v}" for k, v in setup["eval_sizes"].items()),
        alphas=", ".join(f"{a:g}" for a in alphas), zeroshot=zeroshot_table(results, labels,
                                                                           models),
        probes=probes_table(results, labels, models), reading=reading(results, labels, models),
        timings=timing_table(timings, labels), probe_note=setup["probe_size"],
        gap="—" if gap is None else f"{gap:.1e}")


TEMPLATE = """# Generative models as classifiers, beside the contrastive ones

Written by `benchmarks/generative_classifiers_report.py` (do not edit by hand; rerun it):

    {command}

Runs (the families report's, `docs/families.md`): {runs}.

Every model is scored with each scoring its trainer serves, on the same eval sets ({eval_sizes};
val split, seed 0; the held-out split for zero-shot):

- **cosine**: embedding similarity of the contrastive towers (`zeroshot.py`, `compositional.py`).
- **caption likelihood**: log P(t | i), the class or caption whose text the captioner finds
  likeliest given the image (`generative_zeroshot.py`, `generative_compositional.py`).
- **debiased α**: log P(t | i) − α·log P(t), the text prior P(t) a logmeanexp of log P(t | i)
  over `prior_images` train images (`debiased_caption.py`, VisualGPTScore); α ∈ {{{alphas}}},
  α = 0 being the caption-likelihood row (largest difference between the two evals' α = 0
  numbers: {gap}). Its **blind** score ranks by log P(t) alone, no image: the blind columns
  of all of a captioner's rows (one text prior per model).
- **image likelihood**: log p(image codes | prompt), Bayes under a uniform class prior
  (`image_likelihood_zeroshot.py`; early fusion only). On the probes its acc2 is the clean
  number (each image picks the caption that makes its codes likelier).

A cell is "—" where the scoring does not give the number (cosine has no text-prior blind
score on zero-shot; image likelihood has none at all). Zero-shot: top-1 over the 24 seen
colour × shape classes, and over all 28 names on images of the 4 pairs never captioned in
training (held-out; for the likelihood scorings this split is scored by the report through
the evals' own class-score functions). Ties count as wrong everywhere.

## Zero-shot classification

{zeroshot}

## Compositional probes (relation, attribute binding, count)

acc2: per image, the true caption strictly beats the swapped one (chance 0.5); group: the
Winoground group score (both images pick their caption and both captions their image; chance
1/6 for random scores). Blind acc2: cosine against the mean val-image embedding, or the
debiased eval's text prior log P(t): a text-only score, at most 0.5 by construction.

{probes}

## What the numbers show

Read off the tables above by the script (it recomputes these on every run):

{reading}

These are tiny models on a synthetic world; a difference of a few points on {probe_note}
pairs is within noise.

## Eval wall time

Seconds per model and scoring (every eval of the scoring, the held-out split included), on the
machine that ran the report (a shared 2-core CPU for the committed page).

{timings}
"""


def save(path: str, results: dict, timings: dict, capabilities: dict, sizes: dict) -> None:
    with open(path, "w") as f:
        json.dump({"results": results, "timings": timings, "capabilities": capabilities,
                   "eval_sizes": sizes}, f, indent=1, sort_keys=True)


def main(argv: list[str] | None = None) -> None:
    parser = reports.arg_parser(__doc__.splitlines()[0], "generative_classifiers")
    parser.add_argument("--families", default="",
                        help="the families report's runs folder (default runs/families; "
                             "--micro: runs/families_micro); --root is the same")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated run names of families_report.FAMILIES")
    parser.add_argument("--results", default="",
                        help="JSON of the metrics (default <families>/"
                             "generative_classifiers_results.json)")
    parser.add_argument("--eval_sizes", default="",
                        help="eval-set overrides, e.g. genzeroshot_size=96,probe_size=100 "
                             "(Chameleon's likelihoods cost about linearly in both)")
    parser.add_argument("--reuse_results", action="store_true",
                        help="read --results and evaluate only the models it lacks (a run "
                             "cut short resumes; a finished one rewrites the page, no evals)")
    parser.add_argument("--scorings", default=",".join(SCORINGS),
                        help=f"comma-separated scorings to evaluate, of {', '.join(SCORINGS)} "
                             "(the others show as —; e.g. Chameleon's caption likelihoods "
                             "take over an hour on a 2-core CPU)")
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.scorings.split(",") if name.strip())
    if set(only) - set(SCORINGS):
        raise SystemExit(f"--scorings {sorted(set(only) - set(SCORINGS))} unknown; choose from "
                         f"{', '.join(SCORINGS)}")
    root = args.families or reports.root(args, "families")
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in families_report.FAMILIES]
    if unknown:
        raise SystemExit(f"--models {unknown} are not families_report.FAMILIES rows; choose "
                         f"from {sorted(families_report.FAMILIES)}")
    results_path = args.results or os.path.join(root, "generative_classifiers_results.json")

    run_specs = families_report.specs(root)
    # Prerequisites first: Chameleon's config reads the VQ run's sizes.
    prerequisites = [name for name in families_report.PREREQUISITES
                     if any(f"{root}/{name}" in run_specs[model] for model in names)]
    configs = families_report.plan({name: run_specs[name] for name in prerequisites},
                                   args.steps, args.batch, args.micro)
    outcomes = reports.train_all(configs, run_specs, root, args.retrain)
    rows = families_report.plan({name: run_specs[name] for name in names}, args.steps,
                                args.batch, args.micro)
    outcomes |= reports.train_all(rows, run_specs, root, args.retrain)

    eval_config = rows[names[0]].evals
    if args.micro:
        eval_config.prior_images = MICRO_PRIOR_IMAGES
    for item in filter(None, args.eval_sizes.split(",")):
        key, _, value = item.partition("=")
        if key not in ("genzeroshot_size", "probe_size", "prior_images", "batch_size"):
            raise SystemExit(f"--eval_sizes {key!r}: give genzeroshot_size, probe_size, "
                             "prior_images or batch_size")
        eval_config[key] = int(value)
    eval_config.zeroshot_size = eval_config.genzeroshot_size  # one image set for every scoring
    sizes = {key: eval_config[key] for key in ("genzeroshot_size", "probe_size", "prior_images")}
    results, timings, capabilities = {}, {}, {}
    if args.reuse_results and os.path.exists(results_path):
        with open(results_path) as f:
            saved = json.load(f)
        if saved.get("eval_sizes") != sizes:
            raise SystemExit(f"{results_path} holds results on eval sets {saved.get('eval_sizes')}"
                             f", not {sizes}; drop --reuse_results or pass another --results")
        results, timings, capabilities = saved["results"], saved["timings"], saved[
            "capabilities"]
    for name in names:
        if name in results:
            continue
        print(f"== evaluating {name}", flush=True)
        run = restore.restore_run(os.path.join(root, name))
        results[name], timings[name] = evaluate(run, eval_config, only)
        capabilities[name] = sorted(run.trainer.CAPABILITIES)
        print(f"   {timings[name]}", flush=True)
        save(results_path, results, timings, capabilities, sizes)  # --reuse_results resumes here
    print(evals.format_table({f"{name}:{key}": value for name, result in results.items()
                              for key, value in result.items()}))

    command = "python benchmarks/generative_classifiers_report.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    runs = "; ".join(f"{families_report.FAMILIES[name][0]} `{run_specs[name]}` "
                     f"({rows[name].total_steps} × {rows[name].batch_size}, "
                     f"{reports.describe_training(outcomes[name])})" for name in names)
    setup = {"command": command.strip(), "runs": runs, "eval_sizes": sizes,
             "labels": {name: families_report.FAMILIES[name][0] for name in names},
             "capabilities": capabilities, "alphas": list(debiased_caption.alphas_of(
                 eval_config)), "probe_size": eval_config.probe_size}
    with open(args.out, "w") as f:
        f.write(markdown({name: results[name] for name in names}, timings, setup))
    print(f"wrote {args.out} and {results_path}")


if __name__ == "__main__":
    main()
