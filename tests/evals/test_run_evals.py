import string
import zlib

import numpy as np
import pytest

from vlm_jax.data import world
from vlm_jax.evals import EVALS, default_eval_config, format_table, run_evals
from vlm_jax.evals.scoring import Scorer


def small_eval_config(**overrides):
    eval_config = default_eval_config()
    # batch_size 7 divides none of the sizes, so every eval meets a padded last chunk.
    eval_config.update(
        {"batch_size": 7, "retrieval_size": 120, "probe_size": 40, "zeroshot_size": 240}
    )
    eval_config.update(overrides)
    return eval_config


def expected_keys():
    keys = set()
    for split in ("single_object", "heldout_single_object"):
        keys |= {f"zeroshot/{split}/{metric}" for metric in ("top1", "top5", "chance")}
    for split in ("val", "heldout"):
        keys |= {
            f"retrieval/{split}/{direction}_r{k}"
            for direction in ("i2t", "t2i")
            for k in (1, 5, 10)
        }
        keys.add(f"retrieval/{split}/chance_r1")
    for kind in world.PROBE_KINDS:
        keys |= {
            f"compositional/{kind}/{metric}"
            for metric in ("text", "image", "group", "acc2", "blind_acc2", "blind_group")
        }
    return keys


def random_scorer(width=64, text_length=24):
    """Bag-of-words texts (hashed words -> fixed random vectors, summed) and images hashed by
    their pixels to random vectors: scores carry no information about the match."""
    # Integer word vectors make the sum exact, so a reordering of the same words gives the
    # very same embedding (a float sum would differ in its last bits and break the tie).
    word_vectors = np.random.default_rng(0).integers(-1000, 1000, size=(998, width))
    word_vectors[0] = 0  # padding

    def tokenize(texts):
        tokens = np.zeros((len(texts), text_length), np.int32)
        for row, text in enumerate(texts):
            words = text.lower().translate(str.maketrans("", "", string.punctuation)).split()
            ids = [zlib.crc32(word.encode()) % 997 + 1 for word in words][:text_length]
            tokens[row, : len(ids)] = ids
        return tokens

    def encode_images(images):
        return np.stack(
            [
                np.random.default_rng(zlib.crc32(image.tobytes())).normal(size=width)
                for image in images
            ]
        )

    return Scorer(
        encode_images=encode_images,
        encode_texts=lambda tokens: word_vectors[tokens].sum(axis=1),
        tokenize=tokenize,
    )


def oracle_for(eval_config, width=4096):
    """A scorer that has seen every image the evals will show it, with the texts true of it
    (looked up by its pixels): an image embeds as the multi-hot of its true texts, a text as
    its one-hot. Returns the scorer and its text vocabulary."""
    text_ids: dict[str, int] = {}
    true_text_ids: dict[bytes, set[int]] = {}

    def text_id(text):
        return text_ids.setdefault(text, len(text_ids))

    def learn(image, texts):
        true_text_ids.setdefault(image.tobytes(), set()).update(map(text_id, texts))

    seed, image_size = eval_config.seed, eval_config.image_size
    for split in ("val", "heldout"):
        images, labels, class_names = world.single_object_set(
            split, eval_config.zeroshot_size, seed=seed, image_size=image_size
        )
        for image, label in zip(images, labels, strict=True):
            learn(
                image,
                [template.format(class_names[label]) for template in world.ZEROSHOT_TEMPLATES],
            )
        split_world = world.World(split, seed=seed, image_size=image_size)
        for index in range(eval_config.retrieval_size):
            example = split_world[index]
            learn(example["image"], [example["caption"]])
    for kind in world.PROBE_KINDS:
        for pair in world.probe_pairs(
            kind, eval_config.probe_size, seed=seed, image_size=image_size
        ):
            for image, caption in zip(pair.images, pair.captions, strict=True):
                learn(image, [caption])

    def encode_images(images):
        embeddings = np.zeros((len(images), width))
        for row, image in enumerate(images):
            embeddings[row, sorted(true_text_ids.get(image.tobytes(), ()))] = 1.0
        return embeddings

    scorer = Scorer(
        encode_images=encode_images,
        encode_texts=lambda tokens: np.eye(width)[tokens[:, 0]],
        tokenize=lambda texts: np.array([[text_id(text)] for text in texts], np.int32),
    )
    return scorer, text_ids


def test_run_evals_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown evals"):
        run_evals(["zeroshot", "nope"], random_scorer(), small_eval_config())


def test_run_evals_rejects_a_bad_eval_config():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        run_evals(["zeroshot"], random_scorer(), small_eval_config(batch_size=0))


def test_format_table_aligns_one_metric_per_row():
    table = format_table(
        {"step": 100, "zeroshot/single_object/top1": 0.5, "retrieval/val/i2t_r10": 1 / 3}
    )
    lines = table.splitlines()
    assert len(lines) == 5  # header, rule, three metrics
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split() == ["step", "100"]
    assert lines[3].split() == ["zeroshot", "single_object", "top1", "0.5000"]
    assert lines[4].split() == ["retrieval", "val", "i2t_r10", "0.3333"]
    # The split column starts at the same place on every row.
    assert lines[3].index("single_object") == lines[0].index("split")


def test_an_oracle_scorer_is_perfect_on_the_real_world():
    eval_config = small_eval_config()
    oracle, vocabulary = oracle_for(eval_config)
    results = run_evals(list(EVALS), oracle, eval_config)
    assert set(results) == expected_keys()
    assert all(type(value) is float for value in results.values())
    assert len(vocabulary) < 4096  # every text got its own dimension
    for key, value in results.items():
        metric = key.rsplit("/", 1)[1]
        if metric.startswith("chance"):
            continue
        if metric.startswith("blind"):
            assert value <= 0.5, key  # a model without the image cannot beat half
        else:
            assert value == 1.0, key
    assert results["zeroshot/single_object/chance"] == pytest.approx(1 / 24)
    assert results["zeroshot/heldout_single_object/chance"] == pytest.approx(1 / 28)
    for kind in world.PROBE_KINDS:
        assert results[f"compositional/{kind}/blind_group"] == 0.0


def test_a_random_scorer_is_at_chance_on_the_real_world():
    eval_config = small_eval_config()
    results = run_evals("zeroshot,retrieval,compositional", random_scorer(), eval_config)
    assert set(results) == expected_keys()
    assert results == run_evals(list(EVALS), random_scorer(), eval_config)  # deterministic

    def assert_near_chance(key, chance, count):
        standard_error = np.sqrt(chance * (1 - chance) / count)
        assert abs(results[key] - chance) < 3 * standard_error, (key, results[key], chance)

    # Labels are balanced over the 24 classes, so a random scorer's expected top-k is k / 24
    # whatever the class embeddings. (The held-out set draws labels from 4 of its 28 classes,
    # where the expectation depends on the class embeddings; it is not asserted.)
    chance = results["zeroshot/single_object/chance"]
    assert chance == pytest.approx(1 / 24)
    for metric, k in (("top1", 1), ("top5", 5)):
        assert_near_chance(
            f"zeroshot/single_object/{metric}", k * chance, eval_config.zeroshot_size
        )
    for split in ("val", "heldout"):
        # chance_r1 exceeds 1 / N by the world's duplicate captions; k * chance_r1 is the
        # chance of R@k up to how those duplicates tie.
        chance_r1 = results[f"retrieval/{split}/chance_r1"]
        assert chance_r1 >= 1 / eval_config.retrieval_size
        for direction in ("i2t", "t2i"):
            for k in (1, 5, 10):
                assert_near_chance(
                    f"retrieval/{split}/{direction}_r{k}",
                    min(1.0, k * chance_r1),
                    eval_config.retrieval_size,
                )
    # Relation and attribute captions of a pair hold the same words, so a bag-of-words text
    # encoder ties them: ties never count, so text score and acc2 are exactly 0, blind too.
    for kind in ("relation", "attribute"):
        for metric in ("text", "group", "acc2", "blind_acc2"):
            assert results[f"compositional/{kind}/{metric}"] == 0.0, (kind, metric)
    # Count captions differ in one word: the blind model is right on exactly one image a pair.
    assert results["compositional/count/blind_acc2"] == 0.5
    assert_near_chance("compositional/count/acc2", 0.5, 2 * eval_config.probe_size)
    for kind in world.PROBE_KINDS:
        assert results[f"compositional/{kind}/blind_group"] == 0.0
