"""BLEU-4, CIDEr-D and CLIPScore against hand-computed values and the COCO caption toolkit
(pycocoevalcap: recorded numbers always, the live package when it is installed)."""

import math

import numpy as np
import pytest

from vlm_jax.evals.caption_metrics import (
    caption_words,
    cider_d_scores,
    clip_score,
    corpus_bleu,
    corpus_cider_d,
)

# A fixed corpus with the awkward cases: exact and partial matches, a one-word and an empty
# candidate, a repeated word (clipped counts), punctuation, references of unequal number.
CANDIDATES = (
    "a red circle at the top left",
    "two blue squares and a green cross",
    "a small yellow triangle",
    "there is a purple cross to the right of a white circle",
    "circle",
    "",
    "a red red red circle",
)
REFERENCES = (
    ("a red circle", "there is a red circle at the top left", "one red circle",
     "a small red circle in the top left corner", "a picture with a red circle"),
    ("two blue squares and a green cross", "a green cross with two blue squares",
     "three objects: two blue squares and a green cross"),
    ("a large yellow triangle", "a yellow triangle on a dark background",
     "just a yellow triangle", "the picture shows a yellow triangle"),
    ("a purple cross right of a white circle", "a white circle is left of a purple cross",
     "there is a purple cross to the right of a white circle, two objects in all"),
    ("a cyan circle", "one cyan circle"),
    ("a red square", "a drawing of a red square"),
    ("a red circle", "there is one red circle", "a red circle, nothing else"),
)
# pycocoevalcap 1.2 on this corpus (words joined by spaces): Bleu(4) and Cider().
TOOLKIT_BLEU = (0.8915541039737888, 0.866898058975172, 0.8362204243554728, 0.8338335697401942)
TOOLKIT_CIDER = (2.9918665952933496, 7.61294240260161, 2.1770872257829903, 4.92231468561063,
                 0.6282868924489027, 0.0, 1.1492840881778716)


def corpus_words():
    return ([caption_words(c) for c in CANDIDATES],
            [[caption_words(r) for r in refs] for refs in REFERENCES])


def test_caption_words_lowercases_and_drops_punctuation():
    assert caption_words("Three objects: a RED circle, two crosses.") == [
        "three", "objects", "a", "red", "circle", "two", "crosses"]
    assert caption_words("") == []


def test_bleu4_by_hand():
    cand = "the cat sat on the mat".split()
    ref = "the cat sat on a mat".split()
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert corpus_bleu([cand], [[ref]]) == pytest.approx(expected, rel=1e-8)
    # All precisions 1, but 4 words against 6: brevity penalty exp(1 - 6/4).
    assert corpus_bleu([cand[:4]], [[ref]]) == pytest.approx(math.exp(-0.5), rel=1e-8)
    # Of references 3 and 5 words long, both 1 away from the candidate's 4, the shorter
    # counts (as in the toolkit): no penalty, where the longer would give exp(1 - 5/4).
    assert corpus_bleu([cand[:4]], [[cand[:3], cand[:4] + ["x"]]]) == pytest.approx(1.0, rel=1e-8)


def test_bleu_counts_are_clipped_by_the_references():
    # "the" x7 against a reference with two: unigram precision 2/7; no bigram in common.
    score = corpus_bleu([["the"] * 7], [[["the", "cat", "the", "mat"]]], max_order=1)
    assert score == pytest.approx(2 / 7, rel=1e-8)


def test_cider_d_of_a_perfect_and_of_a_disjoint_candidate():
    # Two images with no n-gram in common: every n-gram has idf log 2 > 0, a candidate equal
    # to all its references has cosine 1 for n = 1..4 and no length penalty: 10 * 1.
    references = [[["a", "red", "circle", "at", "the", "top"]] * 2,
                  [["two", "blue", "squares", "below", "green", "crosses"]] * 2]
    candidates = [references[0][0], ["yellow", "triangle"]]
    np.testing.assert_allclose(cider_d_scores(candidates, references), [10.0, 0.0], atol=1e-12)


def test_bleu_and_cider_equal_the_recorded_toolkit_numbers():
    candidates, references = corpus_words()
    for order, expected in enumerate(TOOLKIT_BLEU, start=1):
        assert corpus_bleu(candidates, references, max_order=order) == pytest.approx(
            expected, abs=1e-6)
    np.testing.assert_allclose(cider_d_scores(candidates, references), TOOLKIT_CIDER, atol=1e-6)
    assert corpus_cider_d(candidates, references) == pytest.approx(np.mean(TOOLKIT_CIDER),
                                                                   abs=1e-6)


def test_bleu_and_cider_equal_the_live_toolkit():
    bleu_module = pytest.importorskip("pycocoevalcap.bleu.bleu")
    cider_module = pytest.importorskip("pycocoevalcap.cider.cider")
    candidates, references = corpus_words()
    gts = {i: [" ".join(ref) for ref in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(cand)] for i, cand in enumerate(candidates)}
    bleu, _ = bleu_module.Bleu(4).compute_score(gts, res, verbose=0)
    cider, per_image = cider_module.Cider().compute_score(gts, res)
    assert corpus_bleu(candidates, references) == pytest.approx(bleu[3], abs=1e-6)
    assert corpus_cider_d(candidates, references) == pytest.approx(float(cider), abs=1e-6)
    np.testing.assert_allclose(cider_d_scores(candidates, references), per_image, atol=1e-6)


def test_metrics_reject_strings_and_mismatched_corpora():
    with pytest.raises(TypeError, match="word lists"):
        corpus_bleu(["a red circle"], [["a red circle"]])
    with pytest.raises(ValueError, match="one candidate and one list of references"):
        corpus_cider_d([["a"]], [])
    with pytest.raises(ValueError, match="at least one reference"):
        corpus_bleu([["a"]], [[]])


def test_clip_score_is_the_clipped_scaled_cosine():
    images = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    captions = np.array([[3.0, 4.0], [-1.0, 0.0], [0.0, 5.0]])
    np.testing.assert_allclose(clip_score(images, captions), [2.5 * 0.6, 0.0, 2.5])
    with pytest.raises(ValueError, match="one shape"):
        clip_score(images, captions[:2])
