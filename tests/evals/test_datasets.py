"""Evals on a stored dataset that is not the world: a small ArrayRecord set written here
(solid-ish colour images of seven named things), scored by a fake colour scorer and checked
against brute-force NumPy ranks."""

import numpy as np
import pytest

from vlm_jax.data.sources import write_array_record
from vlm_jax.evals import caption_metrics, datasets, default_eval_config, run_evals
from vlm_jax.evals.caption_model import CaptionModel
from vlm_jax.evals.scoring import Scorer

SIZE = 16
COLOURS = {  # class name -> RGB in [0, 1]
    "flamingo": (1.0, 0.5, 0.7), "frog": (0.1, 0.8, 0.2), "crow": (0.05, 0.05, 0.1),
    "canary": (1.0, 0.9, 0.1), "tomato": (0.9, 0.1, 0.1), "glacier": (0.6, 0.8, 1.0),
    "plum": (0.4, 0.1, 0.5),
}
NAMES = tuple(COLOURS)
WORDS = ("a", "photo", "of", "the", "number", "seen", "nothing", *NAMES, *map(str, range(30)))


def image_of(name: str, rng) -> np.ndarray:
    """A jittered colour: the class colour + a random shift (some land near another class)."""
    colour = np.clip(np.array(COLOURS[name]) + rng.normal(0, 0.25, 3), 0, 1)
    pixels = colour * 255 + rng.normal(0, 10, (SIZE, SIZE, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def colour_scorer(seed: int = 0) -> Scorer:
    """Images -> mean colour - 0.5 [N, 3]; texts -> summed word vectors, a class word's vector
    being its colour - 0.5 (+ noise), other words small random vectors."""
    rng = np.random.default_rng(seed)
    table = rng.normal(0, 0.05, (len(WORDS) + 1, 3))
    table[0] = 0
    for name in NAMES:
        table[WORDS.index(name) + 1] += np.array(COLOURS[name]) - 0.5 + rng.normal(0, 0.1, 3)

    def tokenize(texts):
        tokens = np.zeros((len(texts), 8), np.int32)
        for row, text in enumerate(texts):
            ids = [WORDS.index(word) + 1 for word in text.rstrip(".").split()]
            tokens[row, : len(ids)] = ids
        return tokens

    return Scorer(
        encode_images=lambda images: images.astype(np.float64).mean(axis=(1, 2)) / 255 - 0.5,
        encode_texts=lambda tokens: table[tokens].sum(axis=1),
        tokenize=tokenize,
    )


def cosines(scorer: Scorer, images: np.ndarray, texts: list[str]) -> np.ndarray:
    a = scorer.encode_images(images)
    b = scorer.encode_texts(scorer.tokenize(texts))
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Two ArrayRecord files: "things" (caption = class name, 21 examples) and "scenes"
    (captions "the <name> number <k>", two examples sharing one caption)."""
    root = tmp_path_factory.mktemp("eval_data")
    rng = np.random.default_rng(7)
    labels = [NAMES[i % len(NAMES)] for i in range(21)]
    things = [{"image": image_of(name, rng), "caption": name} for name in labels]
    write_array_record(root / "things.array_record", things)
    scene_names = [NAMES[(3 * i) % len(NAMES)] for i in range(18)]
    scenes = [{"image": image_of(name, rng), "caption": f"the {name} number {i}"}
              for i, name in enumerate(scene_names)]
    scenes[5]["caption"] = scenes[4]["caption"]  # a duplicate caption: both images match it
    write_array_record(root / "scenes.array_record", scenes)
    return root, things, scenes


def eval_config_on(root, **overrides):
    eval_config = default_eval_config()
    eval_config.update(dict(batch_size=4, image_size=SIZE, zeroshot_size=15, **overrides))
    eval_config.zeroshot = datasets.dataset_spec(
        source="array_record", array_record_pattern=str(root / "things.array_record"),
        split_name="things", class_names=NAMES)
    eval_config.retrieval = datasets.dataset_spec(
        source="array_record", array_record_pattern=str(root / "scenes.array_record"),
        split_name="scenes")
    eval_config.captioning = eval_config.retrieval
    return eval_config


def strictly_ahead(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Rank of the best correct candidate per row, ties against it counted as ahead."""
    ranks = []
    for row, is_correct in zip(scores, correct, strict=True):
        best = row[is_correct].max()
        ranks.append(1 + int(np.sum((row >= best) & ~is_correct)))
    return np.array(ranks)


def test_zeroshot_and_retrieval_on_a_stored_dataset(stored):
    root, things, scenes = stored
    scorer = colour_scorer()
    results = run_evals(["zeroshot", "retrieval"], scorer, eval_config_on(root))

    images = np.stack([example["image"] for example in things[:15]])  # zeroshot_size 15
    labels = np.array([NAMES.index(example["caption"]) for example in things[:15]])
    scores = cosines(scorer, images, [f"a photo of a {name}." for name in NAMES])  # [15, 7]
    ranks = strictly_ahead(scores, np.arange(len(NAMES))[None] == labels[:, None])
    expected = {"zeroshot/things/top1": np.mean(ranks <= 1),
                "zeroshot/things/top5": np.mean(ranks <= 5),
                "zeroshot/things/chance": 1 / 7}

    images = np.stack([example["image"] for example in scenes])
    captions = np.array([example["caption"] for example in scenes])
    scores = cosines(scorer, images, list(captions))  # [18, 18]
    matches = captions[:, None] == captions[None, :]
    i2t, t2i = strictly_ahead(scores, matches), strictly_ahead(scores.T, matches.T)
    for k in (1, 5, 10):
        expected[f"retrieval/scenes/i2t_r{k}"] = np.mean(i2t <= k)
        expected[f"retrieval/scenes/t2i_r{k}"] = np.mean(t2i <= k)
    expected["retrieval/scenes/chance_r1"] = matches.mean()

    assert results.keys() == expected.keys()
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-12), key
    # Informative but imperfect, so the numbers are not a trivial 0 or 1.
    assert 0.3 < results["zeroshot/things/top1"] < 1.0
    assert 1 / 18 < results["retrieval/scenes/i2t_r1"] < 1.0


def test_captioning_clipscore_is_judged_by_the_scorer_the_caller_passes(stored):
    root, _, scenes = stored
    images = np.stack([example["image"] for example in scenes])
    stored_captions = [example["caption"] for example in scenes]
    by_image = {image.tobytes(): caption for image, caption in zip(images, stored_captions,
                                                                      strict=True)}
    # Captions the stored one for every image (so CIDEr-D against it is high).
    model = CaptionModel(generate=lambda batch: [by_image[image.tobytes()] for image in batch],
                         log_likelihood=lambda batch, texts: np.zeros(len(texts)))
    eval_config = eval_config_on(root, captioning_size=12, clipscore_workdir="/a/siglip/run")
    with pytest.raises(ValueError, match="no judge was passed"):
        run_evals(["captioning"], colour_scorer(0), eval_config, model)

    judge = colour_scorer(seed=1)  # not the evaluated model's scorer
    results = run_evals(["captioning"], colour_scorer(0), eval_config, model, judge=judge)
    cos = np.diag(cosines(judge, images[:12], stored_captions[:12]))
    expected_clipscore = np.mean(2.5 * np.maximum(cos, 0))
    assert results["captioning/scenes/clipscore"] == pytest.approx(expected_clipscore, abs=1e-12)
    assert results["captioning/scenes/clipscore_refs"] == results["captioning/scenes/clipscore"]
    words = [caption_metrics.caption_words(caption) for caption in stored_captions[:12]]
    assert results["captioning/scenes/bleu4"] == pytest.approx(
        caption_metrics.corpus_bleu(words, [[w] for w in words]))
    assert results["captioning/scenes/bleu4"] == pytest.approx(1.0, abs=1e-9)


def test_labels_outside_the_class_names_are_named(stored):
    root, _, _ = stored
    eval_config = eval_config_on(root)
    eval_config.zeroshot.class_names = ("flamingo", "frog")
    with pytest.raises(ValueError, match=r"zero-shot labels \['canary', 'crow'.*are not in "
                                         r"evals.zeroshot.class_names"):
        run_evals(["zeroshot"], colour_scorer(), eval_config)
