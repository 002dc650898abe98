"""The colour check of generated images, on world images whose colour is known: right on real
one-object images, at chance (1 / 7) when their colours are shuffled."""

import numpy as np

from vlm_jax.data import world, world_scene
from vlm_jax.data.world_scene import COLOURS
from vlm_jax.evals import text_to_image


def test_dominant_colour_is_right_on_world_images_and_at_chance_when_shuffled():
    images, labels, names = world.single_object_set("val", 140, image_size=32)
    colours = [names[k].split()[0] for k in labels]
    assert text_to_image.colour_accuracy(images, colours) >= 0.97
    shuffled = list(np.random.default_rng(0).permutation(colours))
    chance = 1 / len(COLOURS)
    assert abs(text_to_image.colour_accuracy(images, shuffled) - chance) < 0.1


def test_prompts_name_their_colour_and_one_object_scenes_match_it():
    prompts, colours = text_to_image.colour_prompts(7, image_size=32)
    assert colours == list(COLOURS)
    assert [text_to_image.prompt_colour(p) for p in prompts] == colours
    source = world.World("val", image_size=32)
    # The prompts are captions of real scenes: their images pass the check.
    images = []
    for prompt in prompts:
        index = next(i for i in range(2000) if str(source[i]["caption"]) == prompt)
        images.append(source[index]["image"])
    scores = text_to_image.score_generated(np.stack(images)[:, None], prompts, colours)
    assert scores["colour_accuracy"] == 1.0
    assert scores["colour_accuracy_shuffled_prompts"] == 0.0  # every colour moved to another


def test_heldout_prompts_name_the_pairs_never_captioned_in_training():
    prompts, colours = text_to_image.colour_prompts(8, image_size=32, heldout=True)
    pairs = [(colour, shape) for colour, shape in world_scene.HELDOUT_PAIR_LIST]
    assert colours == [colour for colour, _ in pairs] * 2
    for prompt, (colour, shape) in zip(prompts, pairs * 2, strict=True):
        assert f"{colour} {shape}" in prompt, prompt


def test_an_all_background_image_has_no_colour():
    image = np.broadcast_to(np.array([14, 14, 22], np.uint8), (1, 8, 8, 3))
    assert text_to_image.dominant_colours(image) == [""]


def test_generated_clip_score_is_the_judges_mean_clipscore():
    from vlm_jax.evals.scoring import Scorer

    rng = np.random.default_rng(0)
    image_emb, text_emb = rng.standard_normal((2, 4, 6))
    judge = Scorer(encode_images=lambda images: image_emb[: len(images)],
                   encode_texts=lambda tokens: text_emb[: len(tokens)],
                   tokenize=lambda texts: np.zeros((len(texts), 3), np.int32))
    cosine = (image_emb * text_emb).sum(1) / (np.linalg.norm(image_emb, axis=1)
                                              * np.linalg.norm(text_emb, axis=1))
    expected = np.mean(2.5 * np.maximum(cosine, 0.0))  # CLIPScore's weight w = 2.5
    score = text_to_image.generated_clip_score(judge, np.zeros((4, 8, 8, 3), np.uint8),
                                               ["a"] * 4)
    np.testing.assert_allclose(score, expected, rtol=1e-12)
