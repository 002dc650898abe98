"""The VQA blind answer prior: the most frequent TRAIN answer per question kind, scored on val,
against a brute-force count; it never calls the model."""

from collections import defaultdict

import numpy as np

from vlm_jax import evals
from vlm_jax.data import world
from vlm_jax.evals import vqa
from vlm_jax.evals.caption_model import CaptionModel


def test_prior_is_the_most_frequent_train_answer_per_kind():
    train = world.qa_items(400, "train", seed=0, image_size=32)
    prior = vqa.answer_prior(train, 32)
    counts = defaultdict(lambda: defaultdict(int))
    for item in train:
        counts[item.kind][item.answer] += 1
    for kind in world.QA_KINDS:
        best = max(counts[kind].values())
        winners = [a for a in vqa.answer_candidates(kind, 32) if counts[kind].get(a) == best]
        assert prior[kind] == winners[0]  # a tie goes to the earlier candidate
    assert prior["yesno"] in ("yes", "no")


def test_prior_accuracy_is_reported_beside_the_model_and_independent_of_it():
    eval_config = evals.default_eval_config()
    eval_config.update(vqa_size=40, vqa_prior_size=300, batch_size=16)
    calls = []

    def constant(images, texts):  # a model that never looks: every candidate ties
        calls.append(len(texts))
        return np.zeros(len(texts))

    results = vqa.run(CaptionModel(generate=None, log_likelihood=constant), None, eval_config)
    assert calls  # the model was asked, and its ties score 0
    assert results["vqa/val/overall"] == 0.0
    train = world.qa_items(300, "train", seed=0, image_size=32)
    val = world.qa_items(40, "val", seed=0, image_size=32)
    prior = vqa.answer_prior(train, 32)
    right = {kind: [item.answer == prior[kind] for item in val if item.kind == kind]
             for kind in world.QA_KINDS}
    for kind in world.QA_KINDS:
        assert results[f"vqa/val/prior_{kind}"] == np.mean(right[kind])
    assert results["vqa/val/prior_overall"] == np.mean(sum(right.values(), []))
    # The prior beats chance on the skewed kinds (yes/no is balanced by construction).
    assert results["vqa/val/prior_overall"] > results["vqa/val/chance"]
