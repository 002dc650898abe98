"""POPE-style object hallucination (Li et al., 2023): yes/no polling about present and absent
objects, "is there a <colour> <shape> in the image?", on val images of the world.

Per image, up to `eval_config.pope_questions` of its distinct colour-shape pairs are asked
about (answer yes), and as many absent pairs (answer no), so every split is balanced. The
positives are the same in all three splits; only the way the absent pairs are chosen differs:
  random:      uniformly among the split's pairs that are not in the image;
  popular:     the absent pairs seen in the most train scenes (the model's prior);
  adversarial: the absent pairs most likely to be confused with what is there. POPE ranks them
               by train co-occurrence with the present objects, but the world draws an image's
               pairs independently, so those counts are flat up to noise. We rank first by
               whether the pair shares a colour or a shape with a present object (a red square
               beside a red circle and a blue square: what a model that does not bind colour
               to shape hallucinates), then by co-occurrence.
Frequencies and co-occurrences come from the first `eval_config.pope_stats_size` train scenes.

Answering with a likelihood model: the answer is "yes" iff
    log p("<question> yes" | image) > log p("<question> no" | image),
the question prefix cancelling as in VQA, so it compares log p(yes | image, question) with
log p(no | image, question). (The alternative, "there is a X" vs "there is no X" as captions,
pits a caption against a negation no world caption contains, so its answer is set by that
prior rather than by the image.) A tie answers "no". Reported: accuracy, precision, recall and
F1 of "yes" for the present objects, the yes-ratio (0.5 for an unbiased model), and auc: how
often a present object's yes-no margin strictly beats an absent one's (ties lose), which says
whether the model can tell them apart even when its yes/no threshold is off.
"""

from __future__ import annotations

from collections import Counter
from itertools import permutations

import numpy as np

from vlm_jax.data import world
from vlm_jax.data.world_scene import SEEN_PAIRS, Scene
from vlm_jax.evals.caption_model import CaptionModel, log_likelihoods, prompted_log_likelihoods
from vlm_jax.evals.scoring import Scorer

SAMPLINGS = ("random", "popular", "adversarial")
SPLIT = "val"
QUESTION = "is there a {colour} {shape} in the image?"
ANSWER_FORMAT = "{question} {answer}"

Pair = tuple[str, str]  # (colour, shape)


def pope_metrics(
    predicted_yes: np.ndarray, present: np.ndarray, margins: np.ndarray | None = None
) -> dict[str, float]:
    """accuracy, precision, recall, f1 and yes_ratio of yes/no answers (yes = "present"), and
    auc when `margins` (higher: more yes) are given. Precision with no "yes" answer is 0."""
    predicted_yes = np.asarray(predicted_yes, dtype=bool)
    present = np.asarray(present, dtype=bool)
    if predicted_yes.shape != present.shape or predicted_yes.ndim != 1 or not present.size:
        raise ValueError(f"need answers and truths of one shape [N], N > 0; got "
                         f"{predicted_yes.shape} and {present.shape}.")
    true_yes = int(np.sum(predicted_yes & present))
    precision = true_yes / max(int(predicted_yes.sum()), 1)
    recall = true_yes / max(int(present.sum()), 1)
    metrics = {
        "accuracy": float(np.mean(predicted_yes == present)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0,
        "yes_ratio": float(np.mean(predicted_yes)),
    }
    if margins is not None:
        margins = np.asarray(margins, dtype=np.float64)
        positive, negative = margins[present], margins[~present]
        if positive.size and negative.size:
            metrics["auc"] = float(np.mean(positive[:, None] > negative[None, :]))
    return metrics


def pair_statistics(scenes: list[Scene]) -> tuple[Counter, Counter]:
    """(scenes containing each pair, scenes containing each ordered pair of distinct pairs)."""
    frequency, cooccurrence = Counter(), Counter()
    for scene in scenes:
        pairs = set(scene.pair_counts())
        frequency.update(pairs)
        cooccurrence.update(permutations(pairs, 2))
    return frequency, cooccurrence


def absent_pairs(
    present: list[Pair],
    count: int,
    sampling: str,
    candidates: tuple[Pair, ...],
    frequency: Counter,
    cooccurrence: Counter,
    rng: np.random.Generator,
) -> list[Pair]:
    """`count` pairs from `candidates` that are not `present`, chosen per `sampling`."""
    absent = [pair for pair in candidates if pair not in present]
    if sampling == "random":
        return [absent[i] for i in rng.choice(len(absent), count, replace=False)]
    if sampling == "popular":
        key = lambda pair: frequency[pair]
    elif sampling == "adversarial":
        def key(pair):
            shares = any(pair[0] == p[0] or pair[1] == p[1] for p in present)
            return (shares, sum(cooccurrence[p, pair] for p in present))
    else:
        raise ValueError(f"unknown POPE sampling {sampling!r}; choose from {SAMPLINGS}.")
    return sorted(absent, key=key, reverse=True)[:count]  # stable: ties keep candidate order


def yes_no_margins(
    model: CaptionModel, images: np.ndarray, questions: list[str], batch_size: int
) -> np.ndarray:
    """log p(question yes | image) - log p(question no | image), float64 [N]; in the model's
    own prompt format when it has one (prompt "<image><question>", continuation yes / no)."""
    if model.prompted_log_likelihood is not None:
        prompts = [f"<image>{q}" for q in questions for _ in ("yes", "no")]
        scores = prompted_log_likelihoods(model, np.repeat(images, 2, axis=0)[:, None],
                                          prompts, ["yes", "no"] * len(questions), batch_size)
        return scores[0::2] - scores[1::2]
    texts = [ANSWER_FORMAT.format(question=q, answer=a) for q in questions for a in ("yes", "no")]
    scores = log_likelihoods(model, np.repeat(images, 2, axis=0), texts, batch_size)
    return scores[0::2] - scores[1::2]


def run(model: CaptionModel, scorer: Scorer | None, eval_config) -> dict[str, float]:
    """pope/{random, popular, adversarial}/{accuracy, precision, recall, f1, yes_ratio, auc}
    on the first `eval_config.pope_size` val images."""
    del scorer  # answers come from the likelihoods alone
    seed, image_size = eval_config.seed, eval_config.image_size
    train_world = world.World("train", seed=seed, image_size=image_size)
    frequency, cooccurrence = pair_statistics(
        [train_world.scene(i) for i in range(eval_config.pope_stats_size)])
    split_world = world.World(SPLIT, seed=seed, image_size=image_size)
    images = np.stack([split_world[i]["image"] for i in range(eval_config.pope_size)])
    positive_rng = np.random.default_rng([seed, 1])
    positives = []  # per image: the present pairs asked about
    for index in range(eval_config.pope_size):
        present = sorted(split_world.scene(index).pair_counts())
        keep = min(eval_config.pope_questions, len(present))
        positives.append([present[i] for i in sorted(positive_rng.choice(len(present), keep,
                                                                          replace=False))])
    results = {}
    for sampling_id, sampling in enumerate(SAMPLINGS):
        rng = np.random.default_rng([seed, 2, sampling_id])
        image_rows, questions, truths = [], [], []
        for index, asked in enumerate(positives):
            present = list(split_world.scene(index).pair_counts())
            negatives = absent_pairs(present, len(asked), sampling, SEEN_PAIRS, frequency,
                                     cooccurrence, rng)
            for pair, truth in [(p, True) for p in asked] + [(p, False) for p in negatives]:
                image_rows.append(index)
                questions.append(QUESTION.format(colour=pair[0], shape=pair[1]))
                truths.append(truth)
        margins = yes_no_margins(model, images[image_rows], questions, eval_config.batch_size)
        metrics = pope_metrics(margins > 0, np.array(truths), margins)
        for metric, value in metrics.items():
            results[f"pope/{sampling}/{metric}"] = value
    return results
