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

Exact match on the closed set; a prediction counts only when the true answer is strictly
ahead of every other candidate, so a tie at the top is wrong and a constant model scores 0.
`chance` is the mean of 1 / (number of candidates) over the items.
"""

from __future__ import annotations

import numpy as np

from vlm_jax.data import world
from vlm_jax.data.world_scene import MAX_OBJECTS, grid_size, position_name
from vlm_jax.data.world_text import NUMBER_WORDS
from vlm_jax.evals.caption_model import CaptionModel, candidate_log_likelihoods
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


def run(model: CaptionModel, scorer: Scorer | None, eval_config) -> dict[str, float]:
    """vqa/val/{colour, count, spatial, yesno, overall, chance} on `eval_config.vqa_size`
    questions (the kinds in turn)."""
    del scorer  # answers are ranked by likelihood alone
    items = world.qa_items(
        eval_config.vqa_size, SPLIT, seed=eval_config.seed, image_size=eval_config.image_size)
    results, correct, chance = {}, [], []
    for kind in world.QA_KINDS:
        kind_items = [item for item in items if item.kind == kind]
        if not kind_items:
            continue
        candidates = answer_candidates(kind, eval_config.image_size)
        unknown = {item.answer for item in kind_items} - set(candidates)
        if unknown:
            raise ValueError(f"{kind} answers {sorted(unknown)} are not among the candidates "
                             f"{candidates}; the world's questions changed, update vqa.py.")
        images = np.stack([item.image for item in kind_items])
        texts = [[ANSWER_FORMAT.format(question=item.question, answer=answer)
                  for answer in candidates] for item in kind_items]
        scores = candidate_log_likelihoods(model, images, texts, eval_config.batch_size)
        answers = np.array([candidates.index(item.answer) for item in kind_items])
        kind_correct = answered_right(scores, answers)
        results[f"vqa/{SPLIT}/{kind}"] = float(np.mean(kind_correct))
        correct.extend(kind_correct)
        chance.extend([1.0 / len(candidates)] * len(kind_items))
    results[f"vqa/{SPLIT}/overall"] = float(np.mean(correct))
    results[f"vqa/{SPLIT}/chance"] = float(np.mean(chance))
    return results
