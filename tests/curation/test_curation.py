"""Each curation function against a hand-computed expectation on a tiny set."""

import numpy as np
import pytest

from vlm_jax.curation import clip_score, heuristics, metaclip, semdedup


def test_pair_scores_are_row_cosines():
    images = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    texts = np.array([[4.0, 3.0], [-1.0, 0.0], [0.0, 5.0]])
    # (12 + 12) / 25 = 0.96; -1; 1.
    np.testing.assert_allclose(clip_score.pair_scores(images, texts), [0.96, -1.0, 1.0],
                               rtol=1e-6)


def test_clip_score_top_fraction_and_threshold():
    scores = np.array([0.1, 0.9, 0.3, 0.9, 0.5])
    # Top 40% of 5 = 2 items: the two 0.9s (indices 1, 3).
    assert clip_score.clip_score_keep(scores, top_fraction=0.4).tolist() == [
        False, True, False, True, False]
    assert clip_score.clip_score_keep(scores, threshold=0.3).tolist() == [
        False, True, True, True, True]
    with pytest.raises(ValueError, match="exactly one"):
        clip_score.clip_score_keep(scores)


def test_semdedup_drops_all_but_the_first_of_a_duplicate_group():
    # One cluster. Items 0 and 2 are near-duplicates (cos 0.9995), 1 and 3 are far apart.
    x = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.03, 0.0], [0.0, 0.0, 1.0]])
    # Centroid ~ normalise(sum): cos to it: item0 .58, item1 .56, item2 .59, item3 .56.
    # Farthest first among 0 and 2 is item 0 (lower centroid cosine), so item 2 is dropped.
    assert semdedup.semdedup_keep(x, eps=0.01).tolist() == [True, True, False, True]
    # eps 0.0001: threshold 0.9999 > cos(0, 2) = 0.99955, nothing dropped.
    assert semdedup.semdedup_keep(x, eps=0.0001).all()


def test_spherical_kmeans_separates_two_groups():
    x = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    assign, _ = semdedup.spherical_kmeans(x, 2, seed=0)
    assert assign[0] == assign[1] and assign[2] == assign[3] and assign[0] != assign[2]
    # Duplicates in different clusters are never compared: one per cluster stays.
    dup = np.array([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0], [0.001, 1.0]])
    assert semdedup.semdedup_keep(dup, eps=0.01, num_clusters=2).sum() == 2


def test_metaclip_matching_is_whole_words():
    captions = ["a red circle left of a blue square.", "reddish squares", "two red crosses."]
    entries = ["red", "square", "squares", "left of", "crosses"]
    assert metaclip.match_entries(captions, entries).tolist() == [
        [True, True, False, True, False],
        [False, False, True, False, False],
        [True, False, False, False, True]]


def test_metaclip_probabilities():
    np.testing.assert_allclose(metaclip.entry_probabilities(np.array([0, 5, 10, 40]), 10),
                               [1.0, 1.0, 1.0, 0.25])


def test_metaclip_sampling_rates_over_ten_thousand_draws():
    # "circle" in 12,000 captions (p = 2400 / 12000 = 0.2), "square" in 100 (p = 1), "cross"
    # with circle in 2,000 (p = 1). The 10,000 circle-only pairs are 10,000 Bernoulli draws.
    captions = (["a red circle."] * 10000 + ["a red circle and a cross."] * 2000
                + ["a square."] * 100 + ["nothing here."] * 50)
    entries = ["circle", "square", "cross"]
    keep, counts = metaclip.metaclip_keep(captions, entries, t=2400,
                                          rng=np.random.default_rng(0))
    assert counts.tolist() == [12000, 100, 2000]
    assert abs(keep[:10000].mean() - 0.2) < 0.02
    # Kept if either entry passes: 1 - (1 - 0.2)(1 - 1) = 1. No match: dropped.
    assert keep[10000:12100].all() and not keep[12100:].any()
    # t = 600: circle 0.05, cross 0.3 -> a pair with both: 1 - 0.95 * 0.7 = 0.335.
    keep, _ = metaclip.metaclip_keep(captions, entries, t=600, rng=np.random.default_rng(1))
    assert abs(keep[:10000].mean() - 0.05) < 0.02
    assert abs(keep[10000:12000].mean() - 0.335) < 0.035  # 2,000 draws: 3 sd of 0.011


def test_caption_heuristics():
    captions = ["a red circle.", "red", "red red red red circle.", "a b", "a blue square above."]
    # words: 3 / 1 / 5 with "red" 4 of 5 > 0.5 / 2 / 4.
    assert heuristics.caption_keep(captions).tolist() == [True, False, False, False, True]


def test_cli_writes_keep_list_set_and_report(tmp_path):
    import json

    from vlm_jax.curation import cli
    from vlm_jax.data import sources

    examples = [{"image": np.full((4, 4, 3), i, np.uint8), "caption": caption}
                for i, caption in enumerate(["a red circle.", "red", "a blue square above."])]
    sources.write_array_record(str(tmp_path / "in.array_record"), examples)
    assert cli.main(["heuristics", f"--input={tmp_path / 'in.array_record'}",
                     f"--output={tmp_path / 'out'}"]) == 0
    assert json.loads((tmp_path / "out" / "keep.json").read_text()) == [0, 2]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["input_examples"], report["kept"]) == (3, 2)
    curated = sources.ArrayRecordSource(str(tmp_path / "out" / "*.array_record"))
    assert [curated[i]["caption"] for i in range(2)] == ["a red circle.", "a blue square above."]
    assert curated[1]["image"][0, 0, 0] == 2
