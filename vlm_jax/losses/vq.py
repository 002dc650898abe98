"""VQ-VAE loss terms (van den Oord et al. 2017): pixel reconstruction, commitment, codebook.

Pure functions; means over every element, as Sonnet's VectorQuantizer(EMA) takes them.
`quantized` is the nearest codes' vectors, z the encoder output [B, h, w, D].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reconstruction_loss(reconstruction: jax.Array, target_pixels: jax.Array) -> jax.Array:
    """Mean squared error over pixels and channels, both on the [-1, 1] scale."""
    return jnp.mean((reconstruction.astype(jnp.float32) - target_pixels) ** 2)


def commitment_loss(z: jax.Array, quantized: jax.Array) -> jax.Array:
    """mean ||z - sg(q)||^2: pulls the encoder towards its codes (the codes get no gradient)."""
    return jnp.mean((z - jax.lax.stop_gradient(quantized)) ** 2)


def codebook_loss(z: jax.Array, quantized: jax.Array) -> jax.Array:
    """mean ||sg(z) - q||^2: pulls the codes towards their encoder outputs (straight-through
    mode; the EMA mode moves the codes by their EMA instead)."""
    return jnp.mean((jax.lax.stop_gradient(z) - quantized) ** 2)
