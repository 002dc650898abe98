"""Evaluations: zero-shot classification, retrieval, compositional probes; for generative
models, captioning, VQA, POPE hallucination and likelihood-scored zero-shot and compositional
probes (plain and debiased by the model's own text prior); for text -> image models (early
fusion), zero-shot and probes scored by image likelihood; for models with an image-text
matching head, ITM-reranked retrieval and ITM-scored compositional probes; for masked-image
models, reconstructions of masked images (a number and a PNG in `evals.output_dir`); for a
text-only LM, the blind baseline of its caption prior (`text_prior`).
Zero-shot, retrieval (ITM-reranked too) and captioning read the dataset their `evals.<name>`
spec names (`datasets`: the synthetic world by default); the probes and reconstructions read
the world.

Each embedding eval is `run(scorer, eval_config)`, each generative one
`run(caption_model, scorer_or_None, eval_config)`, each matching one
`run(matcher, scorer_or_None, eval_config)`, each image-likelihood one
`run(image_likelihood, scorer_or_None, eval_config)`, each reconstruction one
`run(reconstructor, eval_config)`, the blind text-prior one `run(text_prior, None,
eval_config)` (EVALS, GENERATIVE_EVALS, MATCHER_EVALS, IMAGE_LIKELIHOOD_EVALS,
RECONSTRUCTION_EVALS, TEXT_PRIOR_EVALS), all returning
{"<eval>/<split>/<metric>": float}. `run_served` runs a list of them by name from one dict of
what a model serves ({"scorer": Scorer, "captioner": CaptionModel, "matcher": Matcher,
"image_likelihood": ImageLikelihood, "reconstructor": Reconstructor, "text_prior":
TextPrior}, `capabilities_needed`
says which each eval needs); `run_evals` is the same for a Scorer and a CaptionModel given
apart; `format_table` prints the results for the console.
Evals never import trainers or the loop: the caller passes what they need.
"""

import numbers
from collections.abc import Callable, Mapping, Sequence

import ml_collections

from vlm_jax.evals import (
    captioning,
    compositional,
    datasets,
    debiased_caption,
    generative_compositional,
    generative_zeroshot,
    image_likelihood_zeroshot,
    pope,
    reconstruction,
    retrieval,
    text_prior,
    vqa,
    zeroshot,
)
from vlm_jax.evals.caption_model import CaptionModel
from vlm_jax.evals.image_likelihood import ImageLikelihood
from vlm_jax.evals.matching import Matcher
from vlm_jax.evals.reconstruction import Reconstructor
from vlm_jax.evals.scoring import Scorer
from vlm_jax.evals.text_prior import TextPrior

EVALS: dict[str, Callable[[Scorer, ml_collections.ConfigDict], dict[str, float]]] = {
    "zeroshot": zeroshot.run,
    "retrieval": retrieval.run,
    "compositional": compositional.run,
}
# Evals of a generative model (a CaptionModel); the scorer, when the model has one, is used
# for the contrastive zero-shot score beside the likelihood one (captioning gets the judge).
GENERATIVE_EVALS: dict[
    str, Callable[[CaptionModel, Scorer | None, ml_collections.ConfigDict], dict[str, float]]
] = {
    "captioning": captioning.run,
    "vqa": vqa.run,
    "pope": pope.run,
    "genzeroshot": generative_zeroshot.run,
    "gencompositional": generative_compositional.run,
    "gendebiased": debiased_caption.run,
}
# Evals of an image-text matching head (a Matcher, a cross-encoder's ITM logit); the
# reranked retrieval takes its candidates from the Scorer, which it then needs too.
MATCHER_EVALS: dict[
    str, Callable[[Matcher, Scorer | None, ml_collections.ConfigDict], dict[str, float]]
] = {
    "itm_retrieval": retrieval.run_itm,
    "itm_compositional": compositional.run_itm,
}
# Evals of a text -> image model's likelihood of an image given a text (an ImageLikelihood).
IMAGE_LIKELIHOOD_EVALS: dict[
    str, Callable[[ImageLikelihood, Scorer | None, ml_collections.ConfigDict], dict[str, float]]
] = {
    "imgzeroshot": image_likelihood_zeroshot.run_zeroshot,
    "imgcompositional": image_likelihood_zeroshot.run_compositional,
}
# Evals of a masked-image model's reconstructions (a Reconstructor); they write a picture to
# eval_config.output_dir (the loop fills it with the workdir).
RECONSTRUCTION_EVALS: dict[
    str, Callable[[Reconstructor, ml_collections.ConfigDict], dict[str, float]]
] = {
    "reconstruction": reconstruction.run,
}
# Evals of a text-only model's caption prior (a TextPrior): the blind baseline.
TEXT_PRIOR_EVALS: dict[
    str, Callable[[TextPrior, Scorer | None, ml_collections.ConfigDict], dict[str, float]]
] = {
    "blindprior": text_prior.run,
}
# capability -> the evals that take it as their first argument
_EVALS_OF = {"scorer": EVALS, "captioner": GENERATIVE_EVALS, "matcher": MATCHER_EVALS,
             "image_likelihood": IMAGE_LIKELIHOOD_EVALS, "reconstructor": RECONSTRUCTION_EVALS,
             "text_prior": TEXT_PRIOR_EVALS}

# eval_config fields that must be positive integers, with their defaults.
SIZE_DEFAULTS = {
    "batch_size": 256,  # images or texts per encoder call
    "retrieval_size": 1000,  # examples per retrieval split
    "probe_size": 200,  # pairs per compositional probe kind
    "zeroshot_size": 1000,  # single-object images per zero-shot split
    "image_size": 32,  # eval images are resized to this (configs tie it to data.image_size)
    "captioning_size": 200,  # val images captioned
    "caption_references": 5,  # true captions per world image for CIDEr / BLEU
    "vqa_size": 400,  # questions, the four kinds in turn
    "vqa_prior_size": 2000,  # train questions counted for the blind answer prior (and shots)
    "pope_size": 200,  # val images polled
    "pope_questions": 3,  # present objects asked about per image (and as many absent ones)
    "pope_stats_size": 5000,  # train scenes counted for POPE's popular / adversarial objects
    "genzeroshot_size": 240,  # single-object images for likelihood zero-shot
    "itm_top_k": 16,  # candidates per query the Matcher re-ranks (itm_retrieval)
    "reconstruction_size": 64,  # val images masked and rebuilt (reconstruction)
    "reconstruction_pictures": 8,  # of them, shown in the PNG
}


def default_eval_config() -> ml_collections.ConfigDict:
    """`config.evals`: every field the evals read, with its default (configs/common.py uses
    this; the one place eval defaults live)."""
    return ml_collections.ConfigDict(
        {
            "names": tuple(EVALS),
            "seed": 0,  # world seed of every world eval set
            # a two-tower run judging CLIPScore; "": the evaluated model's own towers. The
            # caller restores it (`vlm_jax.restore.clipscore_judge`) and passes it as `judge`.
            "clipscore_workdir": "",
            "vqa_shots": 0,  # k > 0: also k-shot VQA, for models with a prompt format
            # gendebiased: train images of the Monte Carlo text prior log P(t), and the
            # weights alpha of log P(t|i) - alpha log P(t) reported (0: the plain likelihood)
            "prior_images": debiased_caption.DEFAULT_PRIOR_IMAGES,
            "prior_alphas": debiased_caption.DEFAULT_ALPHAS,
            # where evals write pictures (reconstruction's PNG); "": the run's workdir, which
            # loop.train and restore.restore_run fill in (configlib.with_workdir)
            "output_dir": "",
            **SIZE_DEFAULTS,
            **{name: datasets.dataset_spec() for name in datasets.DATASET_EVALS},
        }
    )


def _check_eval_config(eval_config) -> None:
    missing = [name for name in (*SIZE_DEFAULTS, "seed") if not hasattr(eval_config, name)]
    if missing:
        raise ValueError(
            f"eval_config lacks {missing}; start from vlm_jax.evals.default_eval_config()."
        )
    for name in SIZE_DEFAULTS:
        value = getattr(eval_config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"eval_config.{name} must be a positive integer, got {value!r}.")


def _split_names(names: Sequence[str] | str) -> list[str]:
    if isinstance(names, str):
        return [name.strip() for name in names.split(",") if name.strip()]
    return list(names)


def capabilities_needed(names: Sequence[str] | str, eval_config) -> dict[str, frozenset]:
    """{eval: the trainer capabilities it needs} for the evals `names` ("scorer",
    "captioner", "matcher"), after checking the names and their dataset specs (ValueError
    otherwise)."""
    names = _split_names(names)
    known = [name for table in _EVALS_OF.values() for name in table]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown evals {unknown}; choose from {sorted(known)}.")
    for name in names:
        if name in datasets.DATASET_EVALS:
            datasets.spec_of(eval_config, name)
    needed = {}
    for name in dict.fromkeys(names):
        if name in EVALS:
            needed[name] = frozenset({"scorer"})
        elif name == "itm_retrieval":  # the Scorer picks the candidates the Matcher re-ranks
            needed[name] = frozenset({"matcher", "scorer"})
        elif name in MATCHER_EVALS:
            needed[name] = frozenset({"matcher"})
        elif name in RECONSTRUCTION_EVALS:
            needed[name] = frozenset({"reconstructor"})
        elif name in TEXT_PRIOR_EVALS:
            needed[name] = frozenset({"text_prior"})
        elif name in IMAGE_LIKELIHOOD_EVALS:
            needed[name] = frozenset({"image_likelihood"})
        else:  # captioning's CLIPScore: judged by the model's own towers when it has them
            needed[name] = frozenset({"captioner"})
    return needed


def run_evals(
    names: Sequence[str] | str,
    scorer: Scorer | None,
    eval_config,
    caption_model: CaptionModel | None = None,
    judge: Scorer | None = None,
) -> dict[str, float]:
    """`run_served` of a model serving `scorer` and `caption_model` (either may be None)."""
    return run_served(names, {"scorer": scorer, "captioner": caption_model}, eval_config,
                      judge=judge)


def run_served(
    names: Sequence[str] | str,
    served: Mapping[str, object],
    eval_config,
    judge: Scorer | None = None,
) -> dict[str, float]:
    """Results of the evals `names` (a list, or one comma-separated string), merged in order.

    `served` maps capabilities to what the model serves ("scorer": a Scorer, "captioner": a
    CaptionModel, "matcher": a Matcher, "image_likelihood": an ImageLikelihood,
    "reconstructor": a Reconstructor; a missing or None
    entry: not served), e.g. every `trainers.serve` of the trainer's CAPABILITIES.
    Captioning's CLIPScore is judged by `judge`, or the served scorer when None; with
    `eval_config.clipscore_workdir` set the caller must pass that run's Scorer as judge.
    """
    names = _split_names(names)
    needed = capabilities_needed(names, eval_config)
    unknown = sorted(set(served) - set(_EVALS_OF))
    if unknown:
        raise ValueError(f"served capabilities {unknown} are not known to the evals; known: "
                         f"{sorted(_EVALS_OF)}")
    for name, capabilities in needed.items():
        if name == "captioning" and judge is not None:
            capabilities = capabilities - {"scorer"}
        lacking = sorted(c for c in capabilities if served.get(c) is None)
        if lacking:
            raise ValueError(f"eval {name!r} needs a {' and a '.join(lacking)}, which this "
                             f"model does not serve ({_WHO_SERVES[lacking[0]]}).")
    if "captioning" in names and eval_config.get("clipscore_workdir", "") and judge is None:
        raise ValueError(f"evals.clipscore_workdir={eval_config.clipscore_workdir!r} names the "
                         "CLIPScore judge, but no judge was passed: pass "
                         "judge=vlm_jax.restore.clipscore_judge(eval_config, names)")
    _check_eval_config(eval_config)
    scorer = served.get("scorer")
    results = {}
    for name in dict.fromkeys(names):  # each eval once, in the order given
        if name == "captioning":
            results.update(captioning.run(served["captioner"], judge or scorer, eval_config))
        elif name in GENERATIVE_EVALS:
            results.update(GENERATIVE_EVALS[name](served["captioner"], scorer, eval_config))
        elif name in MATCHER_EVALS:
            results.update(MATCHER_EVALS[name](served["matcher"], scorer, eval_config))
        elif name in RECONSTRUCTION_EVALS:
            results.update(RECONSTRUCTION_EVALS[name](served["reconstructor"], eval_config))
        elif name in TEXT_PRIOR_EVALS:
            results.update(TEXT_PRIOR_EVALS[name](served["text_prior"], scorer, eval_config))
        elif name in IMAGE_LIKELIHOOD_EVALS:
            results.update(IMAGE_LIKELIHOOD_EVALS[name](served["image_likelihood"], scorer,
                                                        eval_config))
        else:
            results.update(EVALS[name](scorer, eval_config))
    return results


# capability -> which models serve it, for the error naming what is missing
_WHO_SERVES = {
    "scorer": "a trainer with the 'scorer' capability embeds images and texts",
    "captioner": "a generative model: a trainer with the 'captioner' capability, e.g. CoCa",
    "matcher": "a model with an image-text matching head: a trainer with the 'matcher' "
               "capability, e.g. MaskVLM",
    "image_likelihood": "a text -> image model scoring an image given a text: a trainer with "
                        "the 'image_likelihood' capability, e.g. early_fusion (Chameleon)",
    "reconstructor": "a masked-image model: a trainer with the 'reconstructor' capability, "
                     "e.g. MaskVLM, or FLAVA with mim.target='pixels'",
    "text_prior": "a text-only model scoring log P(text): a trainer with the 'text_prior' "
                  "capability, e.g. lm (configs/lm.py)",
}


def format_table(results: Mapping[str, float]) -> str:
    """An aligned table, one metric per row: eval, split, metric, value (4 decimals)."""
    rows = []
    for key, value in results.items():
        parts = key.split("/", 2)
        parts += [""] * (3 - len(parts))
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        else:
            text = f"{float(value):.4f}"
        rows.append((*parts, text))
    header = ("eval", "split", "metric", "value")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(4)]
    lines = []
    for row in [header, *rows]:
        left = "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=False))
        lines.append(f"{left}  {row[3].rjust(widths[3])}")
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
