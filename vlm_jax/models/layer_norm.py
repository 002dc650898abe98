"""Layer normalisation over the last axis with its backward pass written out.

Autodiff of the textbook form leaves XLA's CPU compiler a dozen fusions per norm (broadcasts
of the statistics written out in full, the mean's and the variance's paths differentiated
apart); the closed form below needs three passes over the activations. Values agree with
flax's nn.LayerNorm to float rounding (the variance here is the two-pass one, not
E[x^2] - E[x]^2).

    layer_norm(x) = x_hat * scale + bias,  x_hat = normalize(x) = (x - mean) * rstd,
    rstd = 1 / sqrt(var + eps);  d x = rstd * (g - mean(g) - x_hat * mean(g * x_hat))

`normalize` alone serves a norm followed by a dense layer: the scale and bias fold into the
dense's kernel and bias (`layers.project`), so neither the norm's output nor the column sums
of its scale and bias gradients over every token are ever computed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def normalize(x: jax.Array, eps: float) -> jax.Array:
    """x [..., D] (float32) -> (x - mean) / sqrt(var + eps) over D."""
    # As rows [N, D], the shape the next dense's matmul reads: on a [B, L, D] array XLA's CPU
    # compiler wrote x_hat twice (once per shape) and rstd broadcast to full size for the
    # backward, 126 -> 115 ms of the norms' ops in a tiny SigLIP step on one core.
    return _normalize_rows(x.reshape(-1, x.shape[-1]), eps).reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _normalize_rows(x: jax.Array, eps: float) -> jax.Array:
    return _forward(x, eps)[0]


def _forward(x, eps):
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    x_hat = centred * rstd
    return x_hat, (x_hat, rstd)


def _backward(eps, residuals, grad):
    del eps
    x_hat, rstd = residuals
    return (rstd * (grad - jnp.mean(grad, axis=-1, keepdims=True)
                    - x_hat * jnp.mean(grad * x_hat, axis=-1, keepdims=True)),)


_normalize_rows.defvjp(_forward, _backward)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """x [..., D] (float32) normalised over D, then scaled and shifted by [D] vectors."""
    return normalize(x, eps) * scale + bias
