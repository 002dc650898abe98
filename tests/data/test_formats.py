"""Batch formats: prefix-LM and interleaved arrays against hand-written expectations, the world
wiring of each format, and mixture ratios."""

import ml_collections
import numpy as np
import pytest

from configs import common
from tests.data.word_tokenizer import WordTokenizer
from vlm_jax.data import formats
from vlm_jax.data.pipeline import make_train_dataset
from vlm_jax.data.sources import WorldSource
from vlm_jax.data.tokenizer import IMAGE_SPECIALS
from vlm_jax.data.world import World


def data_config(**overrides) -> ml_collections.ConfigDict:
    return common.data_config(**{"image_size": 16, "text_length": 12, "prefetch": 0,
                                 **overrides})


def attention(mask_ar: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """PaliGemma's rule: i sees j iff cumsum(mask_ar)[j] <= cumsum(mask_ar)[i], both valid."""
    c = np.cumsum(mask_ar)
    return (c[None, :] <= c[:, None]) & valid[None, :] & valid[:, None]


def test_prefix_lm_example_by_hand():
    # BOS user: what colour is the circle? assistant: red EOS pad pad
    row = formats.prefix_lm_example(WordTokenizer(), "what colour is the circle?", "red", 12)
    np.testing.assert_array_equal(row["text_tokens"], [1, 4, 6, 7, 8, 9, 10, 5, 11, 2, 0, 0])
    np.testing.assert_array_equal(row["mask_ar"], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(row["mask_loss"], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(row["text_mask"], [1] * 10 + [0, 0])
    # The prefix (with 3 image tokens at mask_ar 0 before it) is bidirectional, the answer
    # causal: written independently as "j in the prefix, or j <= i", over real tokens.
    mask_ar = np.concatenate([[0, 0, 0], row["mask_ar"]])
    valid = np.concatenate([[True] * 3, row["text_mask"]])
    i, j = np.meshgrid(np.arange(15), np.arange(15), indexing="ij")
    expected = ((j < 11) | (j <= i)) & (i < 13) & (j < 13)
    np.testing.assert_array_equal(attention(mask_ar, valid), expected)


def test_prefix_lm_truncation_keeps_eos_supervised():
    row = formats.prefix_lm_example(WordTokenizer(), "what colour is the circle?", "red", 8)
    np.testing.assert_array_equal(row["text_tokens"], [1, 4, 6, 7, 8, 9, 10, 2])
    np.testing.assert_array_equal(row["mask_loss"], [0, 0, 0, 0, 0, 0, 0, 1])


def interleaved(length: int):
    config = data_config(text_length=length, max_images=3, image_tokens=2)
    tokenizer = WordTokenizer(IMAGE_SPECIALS)  # <boi> 16, <image> 17, <eoi> 18
    return formats.interleaved_example(tokenizer, ["a red circle.", "a blue square.", ""],
                                       "the red circle.", 2, config)


def test_interleaved_example_by_hand():
    row = interleaved(22)
    # BOS | <boi> img img <eoi> | a red circle. | <boi> img img <eoi> | a blue square. |
    # the red circle. | EOS | pad x3
    np.testing.assert_array_equal(row["text_tokens"], [
        1, 16, 17, 17, 18, 12, 11, 13, 16, 17, 17, 18, 12, 14, 15, 9, 11, 13, 2, 0, 0, 0])
    np.testing.assert_array_equal(row["mask_ar"], [
        1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(row["mask_loss"], [
        0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(row["segment_ids"], [
        1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 0, 0, 0])
    np.testing.assert_array_equal(row["text_mask"], [1] * 19 + [0] * 3)
    np.testing.assert_array_equal(row["image_positions"], [2, 9, -1])
    np.testing.assert_array_equal(row["image_valid"], [True, True, False])
    # An image's placeholders see each other (one block); the text before it does not.
    seen = attention(row["mask_ar"], row["text_mask"])
    assert seen[2, 3] and seen[3, 2] and seen[1, 2] and seen[5, 4] and not seen[0, 2]
    assert not seen[7, 8] and not seen[7, 9]


def test_interleaved_truncation_drops_a_cut_image_block():
    row = interleaved(10)  # block 1 (positions 8..11) does not fit before EOS
    np.testing.assert_array_equal(row["text_tokens"], [1, 16, 17, 17, 18, 12, 11, 13, 2, 0])
    np.testing.assert_array_equal(row["mask_loss"], [0, 0, 0, 0, 0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 1, 1, 2, 2, 2, 2, 0])
    np.testing.assert_array_equal(row["image_positions"], [2, -1, -1])
    np.testing.assert_array_equal(row["image_valid"], [True, False, False])


def world_batch(config, tokenizer, batch: int = 4):
    world = World("train", image_size=config.image_size)
    iterator = iter(make_train_dataset(WorldSource(world), config, tokenizer, batch, seed=0))
    try:
        return world, next(iterator)
    finally:
        iterator.close()


def test_prefix_lm_batches_from_the_world():
    tokenizer = WordTokenizer()
    config = data_config(format="prefix_lm", shuffle=False)
    world, batch = world_batch(config, tokenizer)
    assert set(batch) == {"image", "text_tokens", "mask_ar", "mask_loss", "text_mask",
                          "num_corrupt"}
    for k in range(4):
        np.testing.assert_array_equal(batch["image"][k], world[k]["image"])
        row = formats.prefix_lm_example(tokenizer, *world.question_answer(k), 12)
        for key, value in row.items():
            np.testing.assert_array_equal(batch[key][k], value)


def test_multi_turn_chat_batches_with_the_image_in_the_first_user_turn():
    """data.chat_turns=2: two questions of successive kinds about one scene; the image's
    placeholders open the first user turn only (LLaVA stage 2's sequences)."""
    tokenizer = WordTokenizer(("<image>",))
    config = data_config(format="prefix_lm", shuffle=False, text_length=48, chat_turns=2,
                         prompt_image_tokens=3)
    world, batch = world_batch(config, tokenizer)
    image_id = tokenizer.token_id("<image>")
    for k in range(4):
        conversation = world.conversation(k, 2)
        assert conversation[0] == world.question_answer(k)
        assert len({question for question, _ in conversation}) == 2
        row = formats.prefix_lm_example(tokenizer, [q for q, _ in conversation],
                                        [a for _, a in conversation], 48, image_tokens=3)
        for key, value in row.items():
            np.testing.assert_array_equal(batch[key][k], value)
        tokens = list(batch["text_tokens"][k])
        assert tokens[2:5] == [image_id] * 3 and tokens.count(image_id) == 3  # after "user:"
        assert tokens.count(tokenizer.eos_id) == 2  # each answer ends with EOS


def test_interleaved_batches_from_the_world():
    tokenizer = WordTokenizer(IMAGE_SPECIALS)
    config = data_config(format="interleaved", shuffle=False, text_length=64, max_images=3,
                         image_tokens=2)
    world, batch = world_batch(config, tokenizer)
    assert batch["images"].shape == (4, 3, 16, 16, 3)
    for k in range(4):
        document = world.document(k, 3)
        count = len(document["images"])
        assert batch["image_valid"][k].tolist() == [m < count for m in range(3)]
        for m in range(3):
            expected = document["images"][m] if m < count else np.zeros((16, 16, 3), np.uint8)
            np.testing.assert_array_equal(batch["images"][k, m], expected)
        row = formats.interleaved_example(tokenizer, document["texts"] + [""] * (3 - count),
                                          document["closing"], count, config)
        for key, value in row.items():
            np.testing.assert_array_equal(batch[key][k], value)
        placeholders = np.flatnonzero(batch["text_tokens"][k] == tokenizer.token_id("<image>"))
        np.testing.assert_array_equal(placeholders[::2], batch["image_positions"][k][:count])


def test_unimodal_formats():
    tokenizer = WordTokenizer()
    world, images = world_batch(data_config(format="image_only", shuffle=False), tokenizer)
    assert set(images) == {"image", "num_corrupt"}
    _, texts = world_batch(data_config(format="text_only", shuffle=False), tokenizer)
    assert set(texts) == {"text_tokens", "num_corrupt"}
    np.testing.assert_array_equal(
        texts["text_tokens"], tokenizer.encode([world[k]["caption"] for k in range(4)], 12))


def test_mixture_ratios_over_1000_batches():
    mixture = (("caption", 0.5), ("prefix_lm", 0.3), ("text_only", 0.2))
    config = data_config(mixture=mixture, image_size=16)

    class Tiny:  # cheap examples: the ratios are what is measured
        def __len__(self):
            return 4096

        def __getitem__(self, index):
            return {"image": np.zeros((16, 16, 3), np.uint8), "caption": "a red circle."}

    iterator = iter(make_train_dataset(Tiny(), config, WordTokenizer(), 8, seed=5))
    try:
        ids = np.concatenate([next(iterator)["format_id"] for _ in range(1000)])
        batch = next(iterator)
    finally:
        iterator.close()
    for name, weight in mixture:
        share = np.mean(ids == formats.FORMATS.index(name))
        assert abs(share - weight) < 0.02, (name, share)
    # One structure for every row: the union of the keys, absent ones at their fill values.
    assert set(batch) == {"image", "text_tokens", "mask_ar", "mask_loss", "text_mask",
                          "format_id", "num_corrupt"}
    text_only = batch["format_id"] == formats.FORMATS.index("text_only")
    assert not batch["image"][text_only].any() and (batch["mask_ar"][text_only] == 1).all()


def test_bad_format_configs():
    with pytest.raises(ValueError, match="Unknown data format 'captions'"):
        formats.mixture_of(data_config(format="captions"))
    with pytest.raises(ValueError, match="weights must be > 0"):
        formats.mixture_of(data_config(mixture=(("caption", 0.0),)))
    with pytest.raises(ValueError, match="raise data.text_length"):
        formats.check_lengths(data_config(format="interleaved", text_length=8, image_tokens=4))
