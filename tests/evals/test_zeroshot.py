import numpy as np
import pytest

from vlm_jax.evals.scoring import Scorer, cosine_similarity
from vlm_jax.evals.zeroshot import class_scores, zeroshot_metrics


def test_zeroshot_metrics_on_a_hand_built_matrix():
    scores = np.array(
        [
            [0.9, 0.1, 0.0],  # label 0: right
            [0.5, 0.5, 0.0],  # label 1: tied at the top -> wrong
            [0.2, 0.1, 0.3],  # label 2: right
            [0.0, 0.7, 0.1],  # label 0: wrong
        ]
    )
    metrics = zeroshot_metrics(scores, np.array([0, 1, 2, 0]))
    assert metrics == {"top1": 0.5, "chance": pytest.approx(1 / 3)}  # no top5 with 3 classes


def test_zeroshot_top5_counts_the_true_class_among_the_best_five():
    scores = np.array(
        [
            [7.0, 6, 5, 4, 3, 2, 1, 0],  # label 4 is 5th -> top5 hit
            [7.0, 6, 5, 4, 3, 2, 1, 0],  # label 5 is 6th -> miss
            [7.0, 6, 5, 4, 3, 3, 1, 0],  # label 4 ties the 6th -> rank 6 -> miss
        ]
    )
    metrics = zeroshot_metrics(scores, np.array([4, 5, 4]))
    assert metrics["top1"] == 0.0
    assert metrics["top5"] == pytest.approx(1 / 3)
    assert metrics["chance"] == pytest.approx(1 / 8)


def test_a_constant_scorer_gets_zero_not_chance():
    metrics = zeroshot_metrics(np.ones((50, 24)), np.arange(50) % 24)
    assert metrics["top1"] == 0.0
    assert metrics["top5"] == 0.0


def test_random_scores_are_at_chance():
    rng = np.random.default_rng(0)
    num_images, num_classes = 4000, 24
    metrics = zeroshot_metrics(
        rng.normal(size=(num_images, num_classes)), rng.integers(0, num_classes, num_images)
    )
    for metric, chance in (("top1", 1 / num_classes), ("top5", 5 / num_classes)):
        standard_error = np.sqrt(chance * (1 - chance) / num_images)
        assert abs(metrics[metric] - chance) < 3 * standard_error, metric


def test_zeroshot_metrics_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        zeroshot_metrics(np.zeros((2, 3)), np.array([0, 3]))


TEMPLATES = ("a {}.", "a photo of a {}.", "there is a {}.")
CLASS_NAMES = ("red circle", "blue square", "green cross", "white triangle")


def vector_scorer(similarity=cosine_similarity):
    """Texts are token ids -> fixed random vectors summed; images are already vectors."""
    table = np.random.default_rng(3).normal(size=(64, 5))
    table[0] = 0.0  # padding adds nothing
    vocabulary = {}

    def tokenize(texts):
        ids = [
            [vocabulary.setdefault(word, len(vocabulary) + 1) for word in text.split()]
            for text in texts
        ]
        tokens = np.zeros((len(texts), 8), np.int32)
        for row, text_ids in enumerate(ids):
            tokens[row, : len(text_ids)] = text_ids
        return tokens

    return Scorer(
        encode_images=lambda images: images,
        encode_texts=lambda tokens: table[tokens].sum(axis=1),
        tokenize=tokenize,
        similarity=similarity,
    )


def template_embeddings(scorer):
    """[T, C, D] text embeddings, computed one prompt at a time."""
    return np.array(
        [
            [
                scorer.encode_texts(scorer.tokenize([template.format(name)]))[0]
                for name in CLASS_NAMES
            ]
            for template in TEMPLATES
        ]
    )


def test_class_scores_ensemble_embeddings_for_cosine_scorers():
    scorer = vector_scorer()
    images = np.random.default_rng(4).normal(size=(6, 5))
    prompts = template_embeddings(scorer)
    unit_prompts = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
    class_embeddings = unit_prompts.mean(axis=0)
    class_embeddings /= np.linalg.norm(class_embeddings, axis=-1, keepdims=True)
    unit_images = images / np.linalg.norm(images, axis=-1, keepdims=True)
    expected = unit_images @ class_embeddings.T
    scores = class_scores(scorer, images, CLASS_NAMES, TEMPLATES, batch_size=5)
    np.testing.assert_allclose(scores, expected, rtol=1e-10, atol=1e-12)


def test_class_scores_average_scores_for_other_similarities():
    def dot_plus_norm(images, texts):  # not a cosine: ensembling embeddings would be wrong
        return images @ texts.T + np.linalg.norm(texts, axis=-1)[None, :]

    scorer = vector_scorer(similarity=dot_plus_norm)
    images = np.random.default_rng(5).normal(size=(6, 5))
    expected = np.mean(
        [dot_plus_norm(images, prompts) for prompts in template_embeddings(scorer)], axis=0
    )
    scores = class_scores(scorer, images, CLASS_NAMES, TEMPLATES, batch_size=4)
    np.testing.assert_allclose(scores, expected, rtol=1e-10)


def test_class_scores_average_scores_for_multi_vector_embeddings():
    # A caption-conditioned scorer: images [N, K, D], texts [M, D]; score = best of K.
    def best_of_k(images, texts):
        return np.einsum("nkd,md->nmk", images, texts).max(axis=-1)

    scorer = vector_scorer(similarity=best_of_k)
    images = np.random.default_rng(6).normal(size=(6, 3, 5))
    expected = np.mean(
        [best_of_k(images, prompts) for prompts in template_embeddings(scorer)], axis=0
    )
    scores = class_scores(scorer, images, CLASS_NAMES, TEMPLATES, batch_size=4)
    np.testing.assert_allclose(scores, expected, rtol=1e-10)
