"""The noisy world's shares of mismatched captions, duplicates and skew match its settings."""

import numpy as np

from vlm_jax.curation.noisy_world import NoisyWorld


def test_noise_shares_match_the_settings():
    pool = NoisyWorld(2000, mismatch_share=0.25, duplicate_share=0.4, skew_drop=0.0)
    flags = [pool.flags(i) for i in range(2000)]
    duplicates = np.mean([f["source"] != i for i, f in enumerate(flags)])
    originals = [f for i, f in enumerate(flags) if f["source"] == i]
    mismatched = np.mean([f["mismatched"] for f in originals])
    # Binomial sd: sqrt(.24/2000) = 0.011 and sqrt(.19/1200) = 0.013; 4 sd bounds.
    assert abs(duplicates - 0.4) < 0.045
    assert abs(mismatched - 0.25) < 0.052


def test_duplicates_copy_image_and_caption_and_mismatches_change_caption():
    pool = NoisyWorld(200, mismatch_share=0.5, duplicate_share=0.5)
    for i in range(1, 60):
        flags = pool.flags(i)
        example = pool[i]
        if flags["source"] != i:
            original = pool[flags["source"]]
            np.testing.assert_array_equal(example["image"], original["image"])
            assert example["caption"] == original["caption"]
        clean = pool.world[flags["world_index"]]
        np.testing.assert_array_equal(example["image"], clean["image"])
        assert (example["caption"] != clean["caption"]) == flags["mismatched"]


def test_skew_over_represents_the_dominant_colour():
    clean = NoisyWorld(300, mismatch_share=0.0, duplicate_share=0.0, skew_drop=0.0)
    skewed = NoisyWorld(300, mismatch_share=0.0, duplicate_share=0.0, skew_drop=0.5)

    def red_share(pool):
        return np.mean([pool.world.scene(pool.flags(i)["world_index"]).objects[0].colour == "red"
                        for i in range(300)])

    base = red_share(clean)  # ~1/7 colours
    # Expected: 0.5 + 0.5 * base.
    assert abs(red_share(skewed) - (0.5 + 0.5 * base)) < 0.12
