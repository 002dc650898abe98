"""ViT variants, pooling and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models.sizes import decode_variant
from vlm_jax.models.vit import ViT


def _param_count(module, image_size):
    shapes = jax.eval_shape(
        module.init, jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3), jnp.uint8))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))


def test_vit_b16_has_the_published_parameter_count():
    # timm's vit_base_patch16_224 without its classifier head: 85,798,656 parameters.
    assert _param_count(ViT(**decode_variant("B/16"), pool="cls"), 224) == 85_798_656


@pytest.mark.parametrize("variant,width,depth", [("Ti/16", 192, 12), ("S/32", 384, 12),
                                                 ("L/14", 1024, 24), ("So400m/14", 1152, 27)])
def test_variants_decode_to_published_sizes(variant, width, depth):
    sizes = decode_variant(variant)
    assert (sizes["width"], sizes["depth"]) == (width, depth)
    assert sizes["patch_size"] == int(variant.split("/")[1])


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown ViT variant 'X/16'"):
        decode_variant("X/16")


@pytest.mark.parametrize("pool", ["cls", "gap", "map"])
def test_pooling_shapes_and_gap_is_token_mean(pool):
    vit = ViT(width=32, depth=1, num_heads=4, mlp_dim=64, patch_size=4, pool=pool)
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    params = vit.init(jax.random.PRNGKey(0), images)
    pooled, extras = vit.apply(params, images)
    assert pooled.shape == (2, 32) and extras["tokens"].shape == (2, 16, 32)
    if pool == "gap":
        np.testing.assert_allclose(pooled, extras["tokens"].mean(1), rtol=1e-6)


def test_image_size_must_be_a_multiple_of_the_patch():
    vit = ViT(width=32, depth=1, num_heads=4, mlp_dim=64, patch_size=5)
    with pytest.raises(ValueError, match="not a multiple of patch size 5"):
        vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3), jnp.uint8))
