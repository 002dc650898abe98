"""VQA accuracy on the world's question-answer pairs, per question kind (colour, count, spatial,
yes/no), by likelihood ranking over each kind's closed answer set.

A captioner trained on captions alone cannot be asked to *generate* an answer, but it can say
which answer it finds most likely: every candidate answer a of the item's kind is scored as
log p("<question> <answer>" | image), and the prediction is the best candidate. The question is
the same prefix for all candidates of an item, so log p(question | image) cancels and the
ranking is exactly that of log p(answer | image, question), end-of-text included (it says the
answer is complete, so a one-word answer cannot win by being the start of a longer one). Any
CaptionModel can be evaluated this way, whatever it was trained on; a captions-only model has
never seen a question, which this eval exposes rather than hides.

A model with a prompt format of its own (`CaptionModel.prompted_log_likelihood`: a VLM on a
pretrained LM) is asked in it instead: prompt "<image><question>", continuation the answer
(a chat model's user turn and answer). With `eval_config.vqa_shots` k > 0 such a model is also
asked k-shot (Frozen's few-shot prompting): k solved train questions of the same kind, each
with its image, precede the question in one interleaved prompt, "<image>q1 a1 <image>q2 a2
<image>q" (reported as vqa/val/<k>shot_<kind>).

Exact match on the closed set; a prediction counts only when the true answer is strictly
ahead of every other candidate, so a tie at the top is wrong and a constant model scores 0.
`chance` is the mean of 1 / (number of candidates) over the items. `prior_<kind>` is the
blind answer prior, computed without the model: every question of a kind answered with that
kind's most frequent answer among `eval_config.vqa_prior_size` TRAIN questions (a tie goes
to the earlier candidate). A model must beat it to show that it looks at the image.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from vlm_jax.data import world
from vlm_jax.data.world_scene import MAX_OBJECTS, grid_size, position_name
from vlm_jax.data.world_text import NUMBER_WORDS
from vlm_jax.evals.caption_model import (
    CaptionModel,
    candidate_log_likelihoods,
    prompted_log_likelihoods,
)
from vlm_jax.evals.scoring import Scorer, pessimistic_rank

SPLIT = "val"
ANSWER_FORMAT = "{question} {answer}"


def answer_candidates(kind: str, image_size: int) -> tuple[str, ...]:
    """The closed answer set of a question kind (positions depend on the grid of the size)."""
    if kind == "colour":
        return world.COLOURS
    if kind == "count":
        return NUMBER_WORDS[1 : MAX_OBJECTS + 1]  # a question always counts a present thing
    if kind == "spatial":
        grid = grid_size(image_size)
        return tuple(position_name(row, col, grid) for row in range(grid) for col in range(grid))
    if kind == "yesno":
        return ("yes", "no")
    raise ValueError(f"unknown question kind {kind!r}; valid kinds: {world.QA_KINDS}")


def answered_right(scores: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """bool [N]: the true candidate (index answers[i]) of row i strictly beats the others.

    scores [N, K] (item x candidate); ties at the top are wrong."""
    scores = np.asarray(scores)
    matches = np.arange(scores.shape[1])[None, :] == np.asarray(answers)[:, None]
    return pessimistic_rank(scores, matches) == 1


def answer_prior(train_items: list[world.QAItem], image_size: int) -> dict[str, str]:
    """{kind: the most frequent answer of that kind's train questions}; a tie goes to the
    earlier candidate (`answer_candidates` order)."""
    prior = {}
    for kind in world.QA_KINDS:
        counts = Counter(item.answer for item in train_items if item.kind == kind)
        if counts:
            candidates = answer_candidates(kind, image_size)
            prior[kind] = min(counts, key=lambda answer: (-counts[answer],
                                                          candidates.index(answer)))
    return prior


def shot_prompt(shots: list[world.QAItem]) -> str:
    """The solved examples of a k-shot prompt: "<image>q1 a1 <image>q2 a2 " (one image each)."""
    return "".join(f"<image>{ANSWER_FORMAT.format(question=shot.question, answer=shot.answer)} "
                   for shot in shots)


def answer_scores(model: CaptionModel, items: list[world.QAItem], candidates: tuple[str, ...],
                  batch_size: int, shots: list[list[world.QAItem]] | None = None) -> np.ndarray:
    """log p(candidate | image, question) [N, K], in the model's own prompt format when it
    has one (with the items' k-shot examples `shots[i]` before the question, if given)."""
    if model.prompted_log_likelihood is None:
        if shots:
            raise ValueError("few-shot VQA needs a CaptionModel with prompted_log_likelihood")
        images = np.stack([item.image for item in items])
        texts = [[ANSWER_FORMAT.format(question=item.question, answer=answer)
                  for answer in candidates] for item in items]
        return candidate_log_likelihoods(model, images, texts, batch_size)
    shots = shots or [[] for _ in items]
    rows = [np.stack([shot.image for shot in item_shots] + [item.image])
            for item, item_shots in zip(items, shots, strict=True)]  # [k + 1, S, S, 3] each
    prompts = [shot_prompt(item_shots) + "<image>" + item.question
               for item, item_shots in zip(items, shots, strict=True)]
    k = len(candidates)
    scores = prompted_log_likelihoods(
        model, np.repeat(np.stack(rows), k, axis=0), np.repeat(prompts, k).tolist(),
        list(candidates) * len(items), batch_size)
    return scores.reshape(len(items), k)


def run(model: CaptionModel, scorer: Scorer | None, eval_config) -> dict[str, float]:
    """vqa/val/{colour, count, spatial, yesno, overall, chance}, the blind prior's
    prior_{kind, overall} and, with vqa_shots k > 0, <k>shot_{kind, overall} on
    `eval_config.vqa_size` questions (the kinds in turn)."""
    del scorer  # answers are ranked by likelihood alone
    size, seed = eval_config.image_size, eval_config.seed
    shots_k = int(eval_config.get("vqa_shots", 0))
    if shots_k < 0:
        raise ValueError(f"eval_config.vqa_shots must be >= 0, got {shots_k}")
    items = world.qa_items(eval_config.vqa_size, SPLIT, seed=seed, image_size=size)
    train_items = world.qa_items(eval_config.vqa_prior_size, "train", seed=seed, image_size=size)
    prior = answer_prior(train_items, size)
    shot_rng = np.random.default_rng([seed, 3])
    results, correct, chance, prior_correct, shot_correct = {}, [], [], [], []
    for kind in world.QA_KINDS:
        kind_items = [item for item in items if item.kind == kind]
        if not kind_items:
            continue
        candidates = answer_candidates(kind, size)
        unknown = {item.answer for item in kind_items} - set(candidates)
        if unknown:
            raise ValueError(f"{kind} answers {sorted(unknown)} are not among the candidates "
                             f"{candidates}; the world's questions changed, update vqa.py.")
        answers = np.array([candidates.index(item.answer) for item in kind_items])
        scores = answer_scores(model, kind_items, candidates, eval_config.batch_size)
        kind_correct = answered_right(scores, answers)
        results[f"vqa/{SPLIT}/{kind}"] = float(np.mean(kind_correct))
        correct.extend(kind_correct)
        chance.extend([1.0 / len(candidates)] * len(kind_items))
        kind_prior = [item.answer == prior.get(kind) for item in kind_items]
        results[f"vqa/{SPLIT}/prior_{kind}"] = float(np.mean(kind_prior))
        prior_correct.extend(kind_prior)
        if shots_k and model.prompted_log_likelihood is not None:
            pool = [item for item in train_items if item.kind == kind]
            if len(pool) < shots_k:
                raise ValueError(f"{len(pool)} train {kind} questions cannot give {shots_k} "
                                 "shots; raise eval_config.vqa_prior_size")
            shots = [[pool[i] for i in shot_rng.choice(len(pool), shots_k, replace=False)]
                     for _ in kind_items]
            shot_scores = answer_scores(model, kind_items, candidates, eval_config.batch_size,
                                        shots)
            kind_shot_correct = answered_right(shot_scores, answers)
            results[f"vqa/{SPLIT}/{shots_k}shot_{kind}"] = float(np.mean(kind_shot_correct))
            shot_correct.extend(kind_shot_correct)
    results[f"vqa/{SPLIT}/overall"] = float(np.mean(correct))
    results[f"vqa/{SPLIT}/chance"] = float(np.mean(chance))
    results[f"vqa/{SPLIT}/prior_overall"] = float(np.mean(prior_correct))
    if shot_correct:
        results[f"vqa/{SPLIT}/{shots_k}shot_overall"] = float(np.mean(shot_correct))
    return results
