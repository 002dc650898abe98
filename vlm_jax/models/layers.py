"""Transformer building blocks shared by every tower: one attention, one block, the encoder
stack, poolers, norms, MLPs, RoPE and attention masks.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `head_dim`, `vocab`, ...)
and every block constrains its activations to ("batch", "length", "embed"); `vlm_jax.parallel`
maps both to mesh axes through `config.sharding_rules`, so a layout change is a config edit.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import itertools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import dense_matmul, layer_norm

Dtype = Any
KVCache = dict[str, jax.Array]  # {"key": [B, S, Hkv, Dh], "value": [B, S, Hkv, Dh]}
# The logical names of the residual stream, which every block constrains at its boundaries.
ACTIVATION_AXES = ("batch", "length", "embed")


def dense_init(names: tuple[str, ...], init=None):
    """A kernel initializer (default Xavier uniform) tagged with logical axis names."""
    return nn.with_logical_partitioning(init or nn.initializers.xavier_uniform(), names)


def zeros_init(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * jax.nn.sigmoid(1.702 * x)


@jax.custom_vjp
def gelu(h: jax.Array) -> jax.Array:
    """The tanh approximation of GELU, h * cdf(h), exactly as `nn.gelu` computes it. Its
    backward reads the cdf back from the forward's input and output, cdf = g / h, where
    autodiff keeps the tanh: both h (the first matmul's output) and g (the second matmul's
    input) are kept for the matmuls' gradients anyway, so the tanh is neither written out nor
    recomputed (~3 % of a tiny CPU step)."""
    return nn.gelu(h, approximate=True)


def _gelu_forward(h):
    g = gelu(h)
    return g, (h, g)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _gelu_backward(residuals, dg):
    # float32 math under bfloat16 compute too: g is rounded to bfloat16 (as autodiff's tanh
    # would be), but the terms of the derivative below are not rounded again.
    h, g = (r.astype(jnp.float32) for r in residuals)
    cdf = jnp.where(h == 0, 0.5, g / jnp.where(h == 0, 1, h))
    # d/dh [h * cdf(h)] with cdf = (1 + tanh(u)) / 2: cdf + h * cdf (1 - cdf) * 2 u'(h).
    du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * h * h)
    return ((dg.astype(jnp.float32) * (cdf + 2 * h * cdf * (1 - cdf) * du)).astype(dg.dtype),)


gelu.defvjp(_gelu_forward, _gelu_backward)

# Imported checkpoints need the activation they were trained with: "gelu" is the tanh
# approximation (flax's default; HF "gelu_pytorch_tanh"), "gelu_exact" the erf form (HF "gelu").
ACTIVATIONS = {
    "gelu": gelu,
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": quick_gelu,
    "silu": nn.silu,
}


@dataclasses.dataclass(frozen=True)
class Execution:
    """How a tower is computed, never what: every choice gives the same outputs.

    attention: "xla" or "cudnn" (fused flash attention on NVIDIA GPUs), passed to
        `jax.nn.dot_product_attention(implementation=...)`; "auto" lets JAX choose.
    pad_multiple: pad the sequence to a multiple of this (cuDNN wants 8; a ViT with CLS has
        197 tokens), with the true length passed as `key_value_seq_lengths`; padded rows are cut.
    remat: "none", "full" (recompute each block in the backward pass) or "dots" (save only
        matmul results), trading compute for activation memory.
    scan_layers: one `nn.scan` over stacked block parameters (fast compiles on deep models);
        its parameters are laid out [depth, ...] under "blocks", not "block{i}".
    """

    attention: str = "auto"
    pad_multiple: int = 1
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        if self.attention not in ("auto", "xla", "cudnn"):
            raise ValueError(f"execution.attention {self.attention!r}: use auto, xla or cudnn")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"execution.remat {self.remat!r}: use one of {list(REMAT_POLICIES)}")
        if self.pad_multiple < 1:
            raise ValueError(f"execution.pad_multiple must be >= 1, got {self.pad_multiple}")

    @property
    def implementation(self) -> str | None:
        return None if self.attention == "auto" else self.attention

    def remat_block(self, block: type[nn.Module]) -> type[nn.Module]:
        """`block` recomputed in the backward pass as `remat` says (itself for "none")."""
        if self.remat == "none":
            return block
        return nn.remat(block, policy=REMAT_POLICIES[self.remat])


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
}


# The mesh activations are constrained on, set by `activation_mesh` (see
# `parallel.activation_sharding`). Not flax's global mesh: under that, flax re-runs parameter
# initializers to check shapes, and DenseGeneral's multi-axis kernels then fail their own
# logical constraints.
_ACTIVATION_MESH: contextvars.ContextVar = contextvars.ContextVar("activation_mesh",
                                                                  default=None)


@contextlib.contextmanager
def activation_mesh(mesh):
    """Within it, `constrain` places activations on `mesh` (by the active logical rules)."""
    token = _ACTIVATION_MESH.set(mesh)
    try:
        yield
    finally:
        _ACTIVATION_MESH.reset(token)


def constrain(x: jax.Array, names: tuple[str | None, ...] = ACTIVATION_AXES) -> jax.Array:
    """Shard an activation by logical names; a no-op outside `activation_mesh`."""
    mesh = _ACTIVATION_MESH.get()
    if mesh is None:
        return x
    return nn.with_logical_constraint(x, names, mesh=mesh)


# ---------------------------------------------------------------------------------------------
# Masks and positions


def make_attention_mask(mask_ar: jax.Array, valid: jax.Array) -> jax.Array:
    """bool [B, 1, L, L] from mask_ar int/bool [B, L] and valid bool [B, L] (PaliGemma's rule).

    Token i sees token j iff cumsum(mask_ar)[j] <= cumsum(mask_ar)[i] and both are valid.
    mask_ar all 1: causal; all 0: bidirectional; 0 on a prefix then 1: prefix-LM (the prefix
    sees itself whole); 1 at the first token of each block, 0 inside: block-causal.
    A row with no valid key (a padded query) is all False; its output is meaningless and must
    be ignored by the caller (e.g. through a loss mask).
    """
    cumulative = jnp.cumsum(jnp.asarray(mask_ar, jnp.int32), axis=1)  # [B, L]
    sees = cumulative[:, None, :] <= cumulative[:, :, None]  # [B, Lq, Lk]
    valid = jnp.asarray(valid, bool)
    return (sees & valid[:, None, :] & valid[:, :, None])[:, None]


def step_mask(position: jax.Array, num_queries: int, max_len: int) -> jax.Array:
    """bool [1, 1, T, max_len]: query t (at position + t) sees the cached keys up to itself."""
    query_positions = position + jnp.arange(num_queries)[:, None]  # [T, 1]
    return (jnp.arange(max_len)[None, :] <= query_positions)[None, None]


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding of x [B, L, H, Dh] at positions int [B|1, L], rotate-half
    layout (pairs (d, d + Dh/2) rotate together, as in LLaMA/GPT-NeoX checkpoints).

    Frequency of pair d: theta^(-2d/Dh). Computed in float32, returned in x's dtype.
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    half = head_dim // 2
    inverse_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim)  # [Dh/2]
    angles = positions.astype(jnp.float32)[..., None] * inverse_freq  # [B, L, Dh/2]
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]  # [B, L, 1, Dh/2]
    first, second = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Norms and MLPs


class LayerNorm(nn.Module):
    """LayerNorm whose scale/bias carry the `embed` axis name; statistics in float32. The
    parameters sit where flax's nn.LayerNorm put them (`LayerNorm_0/scale`, `.../bias`), which
    this replaced for its faster backward (`layer_norm.py`)."""

    dtype: Dtype = jnp.float32
    eps: float = 1e-6

    def setup(self):
        self.LayerNorm_0 = _ScaleBias()  # the attribute names the parameters' scope

    def __call__(self, x: jax.Array) -> jax.Array:
        x_hat, (scale, bias) = self.parts(x)
        return (x_hat * scale + bias).astype(self.dtype)

    def parts(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """(x normalised, float32; (scale, bias)): for a dense layer that folds the affine
        part into its own weights (`project`)."""
        return layer_norm.normalize(x.astype(jnp.float32), self.eps), self.LayerNorm_0(
            x.shape[-1])


class _ScaleBias(nn.Module):
    @nn.compact
    def __call__(self, width: int) -> tuple[jax.Array, jax.Array]:
        return (self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                 ("embed",)), (width,)),
                self.param("bias", zeros_init(("embed",)), (width,)))


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale over the last axis (no mean, no bias); float32 stats.

    `axis_name` is the scale's logical name: "embed" in blocks, "head_dim" for QK-norm.
    """

    dtype: Dtype = jnp.float32
    eps: float = 1e-6
    axis_name: str | None = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
            (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32)).astype(self.dtype)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


class HeadLayerNorm(nn.Module):
    """Chameleon's QK-norm: LayerNorm statistics over head_dim of x [B, L, H, Dh], then each
    head's own scale and bias [H, Dh] (not one [Dh] shared by all heads)."""

    dtype: Dtype = jnp.float32
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        names = ("heads", "head_dim")
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                 names), x.shape[-2:])
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               names), x.shape[-2:])
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centred = x32 - mean
        normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, -1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


# qk_norm_type -> how queries and keys are normalised per head (QK-norm)
QK_NORMS = ("rmsnorm", "head_layernorm")


def make_norm(kind: str, dtype: Dtype, eps: float, name: str | None = None) -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"norm {kind!r} must be one of {sorted(NORMS)}")
    return NORMS[kind](dtype, eps, name=name)


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} must be one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Projection(nn.Module):
    """A dense layer's parameters as nn.Dense / nn.DenseGeneral keep them (kernel
    [D, *features] with logical names `axes`, bias [*features]; the kernel drawn as the flat
    [D, prod(features)] matrix, as DenseGeneral draws it), handed out by `weights` so that
    `project` can run several projections of one input as a single wider matmul."""

    features: tuple[int, ...]
    axes: tuple[str, ...]  # the kernel's logical axis names: input, then features
    use_bias: bool = True

    @nn.compact
    def weights(self, width: int) -> tuple[jax.Array, jax.Array | None]:
        """(kernel [D, prod(features)], bias [prod(features)] or None), float32."""
        shape = (width, *self.features)

        def kernel_init(rng, shape, dtype):
            flat = dense_init(self.axes)(rng, (width, math.prod(self.features)), dtype)
            return flat.replace_boxed(flat.unbox().reshape(shape))

        kernel = self.param("kernel", kernel_init, shape, jnp.float32)
        bias = (self.param("bias", zeros_init(self.axes[1:]), self.features, jnp.float32)
                if self.use_bias else None)
        return kernel.reshape(width, -1), None if bias is None else bias.reshape(-1)


def project(x: jax.Array, projections: list[Projection], dtype,
            affine: tuple[jax.Array, jax.Array] | None = None) -> list[jax.Array]:
    """x [..., D] through each projection -> [..., *features] each, as ONE matmul of x with the
    kernels side by side: on the CPU the three 128-column matmuls of a tiny tower's queries,
    keys and values (and their gradients) take ~13 % longer than one of 384 columns.

    `affine` (scale, bias) [D]: x is a normalised input whose norm ends in x * scale + bias
    (`LayerNorm.parts`); it folds into the weights, (x * s + b) W + c = x (s W) + (b W + c),
    so the norm's output is never written out (~3 % of the tiny CPU step, one core)."""
    kernels, biases = zip(*(p.weights(x.shape[-1]) for p in projections))
    kernel = jnp.concatenate(kernels, axis=1)
    bias = None if biases[0] is None else jnp.concatenate(biases)
    if affine is not None:
        scale, shift = affine
        folded_shift = shift @ kernel
        bias = folded_shift if bias is None else bias + folded_shift
        kernel = scale[:, None] * kernel
    y = dense_matmul.matmul(x.astype(dtype), kernel.astype(dtype))
    if bias is not None:
        y = y + bias.astype(dtype)
    parts = split_columns(y, tuple(k.shape[1] for k in kernels)) if len(kernels) > 1 else [y]
    return [part.reshape(*x.shape[:-1], *p.features) for part, p in zip(parts, projections)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def split_columns(y: jax.Array, widths: tuple[int, ...]) -> list[jax.Array]:
    """y [..., sum(widths)] -> its consecutive column blocks. The backward is one concatenate of
    their gradients; autodiff's, each block padded with zeros to the full width and added up,
    takes XLA CPU 18 ms of a tiny SigLIP step on one core, the concatenate 13.5 ms."""
    ends = itertools.accumulate(widths)
    return [y[..., end - width:end] for end, width in zip(ends, widths)]


def _split_columns_forward(y, widths):
    return split_columns(y, widths), None


def _split_columns_backward(widths, _, grads):
    return (jnp.concatenate(grads, axis=-1),)


split_columns.defvjp(_split_columns_forward, _split_columns_backward)


class Mlp(nn.Module):
    """Two-layer MLP (the ViT / CLIP block); `activation` names one of ACTIVATIONS."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x: jax.Array, affine=None) -> jax.Array:
        """x [..., D] -> [..., D]; `affine`: x is normalised, see `project`."""
        # Tokens as rows of one matrix: XLA's CPU backend runs the weight gradient of a 2-D
        # dot as one library matmul, where [B, L, D] contracts two axes and copies first.
        shape = x.shape
        width = shape[-1]
        x = x.reshape(-1, width)
        hidden = Projection((self.mlp_dim,), ("embed", "mlp"), name="Dense_0")
        x = project(x, [hidden], self.dtype, affine)[0]
        x = _activation(self.activation)(x)
        return nn.Dense(
            width,
            dtype=self.dtype,
            kernel_init=dense_init(("mlp", "embed")),
            bias_init=zeros_init(("embed",)),
            dot_general=dense_matmul.dot_general,
            name="Dense_1",
        )(x).reshape(shape)


class SwiGLU(nn.Module):
    """Gated MLP (LLaMA): down(act(gate(x)) * up(x)), no biases; `activation` "silu" is SwiGLU,
    "gelu" GeGLU."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    activation: str = "silu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def dense(features, names, name):
            return nn.Dense(features, use_bias=False, dtype=self.dtype,
                            kernel_init=dense_init(names), name=name,
                            dot_general=dense_matmul.dot_general)

        hidden = _activation(self.activation)(dense(self.mlp_dim, ("embed", "mlp"), "gate")(x))
        hidden = hidden * dense(self.mlp_dim, ("embed", "mlp"), "up")(x)
        return dense(x.shape[-1], ("mlp", "embed"), "down")(hidden)


MLPS = {"mlp": Mlp, "swiglu": SwiGLU}


# ---------------------------------------------------------------------------------------------
# Attention


def kv_cache(batch_size: int, max_len: int, num_heads: int, head_dim: int, dtype) -> KVCache:
    """An empty (zero) self-attention cache for `max_len` positions."""
    shape = (batch_size, max_len, num_heads, head_dim)
    return {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}


class Attention(nn.Module):
    """Multi-head attention through `jax.nn.dot_product_attention` (cuDNN/XLA fused paths).

    Self-attention (`context` None) or cross-attention (keys/values from `context`, or already
    projected in `context_kv`: computed once per sequence with `keys_values`). Options:
    grouped-query heads (`num_kv_heads` < num_heads: each key/value head serves
    num_heads / num_kv_heads query heads), `head_dim` (0: width // num_heads), RoPE on
    self-attention queries and keys (`rope_theta` > 0), QK-norm (an RMSNorm over head_dim
    on queries and keys, before RoPE; `qk_norm_type` "head_layernorm": Chameleon's LayerNorm
    with a scale and bias per head), and a KV cache (`decode`, `init_cache`).

    `mask`: bool broadcastable to [B, H, Lq, Lk], True where attention is allowed (see
    `make_attention_mask`); `is_causal` adds the causal mask; `kv_lengths` int [B] the number
    of valid keys (padding at the end).
    """

    num_heads: int
    width: int  # the model width: input and output size
    dtype: Dtype = jnp.float32
    implementation: str | None = None  # jax.nn.dot_product_attention's; None: JAX chooses
    num_kv_heads: int = 0  # 0: num_heads (multi-head); 1: multi-query
    head_dim: int = 0  # 0: width // num_heads
    rope_theta: float = 0.0  # 0: no RoPE
    qk_norm: bool = False
    qk_norm_eps: float = 1e-6
    use_bias: bool = True
    qk_norm_type: str = "rmsnorm"  # QK_NORMS; "head_layernorm" is Chameleon's

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dims_per_head(self) -> int:
        return self.head_dim or self.width // self.num_heads

    def setup(self):
        if not self.head_dim and self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads "
                             f"{self.kv_heads}")

        def projection(heads):
            return Projection((heads, self.dims_per_head), ("embed", "heads", "head_dim"),
                              self.use_bias)

        self.query = projection(self.num_heads)
        self.key, self.value = projection(self.kv_heads), projection(self.kv_heads)
        self.out = nn.DenseGeneral(
            self.width, axis=(-2, -1), dtype=self.dtype, use_bias=self.use_bias,
            kernel_init=dense_init(("heads", "head_dim", "embed")),
            bias_init=zeros_init(("embed",)), dot_general=dense_matmul.dot_general)
        if self.qk_norm_type not in QK_NORMS:
            raise ValueError(f"qk_norm_type {self.qk_norm_type!r} must be one of {QK_NORMS}")
        if self.qk_norm and self.qk_norm_type == "rmsnorm":
            self.query_norm = RMSNorm(self.dtype, self.qk_norm_eps, "head_dim")
            self.key_norm = RMSNorm(self.dtype, self.qk_norm_eps, "head_dim")
        elif self.qk_norm:
            self.query_norm = HeadLayerNorm(self.dtype, self.qk_norm_eps)
            self.key_norm = HeadLayerNorm(self.dtype, self.qk_norm_eps)

    def _positioned(self, x: jax.Array, which: str, positions) -> jax.Array:
        """QK-norm then RoPE on projected queries or keys x [B, L, H, Dh]."""
        if self.qk_norm:
            x = (self.query_norm if which == "query" else self.key_norm)(x)
        if self.rope_theta and positions is not None:
            x = apply_rope(x, positions, self.rope_theta)
        return x

    def keys_values(self, context: jax.Array, positions=None, affine=None) -> KVCache:
        """Projected keys and values of context [B, S, D] -> 2 x [B, S, Hkv, Dh]; `positions`
        [B|1, S] rotate the keys (self-attention with RoPE only); `affine`: see `project`."""
        key, value = project(context, [self.key, self.value], self.dtype, affine)
        return {"key": self._positioned(key, "key", positions), "value": value}

    def queries(self, x: jax.Array, positions=None, affine=None) -> jax.Array:
        query = project(x, [self.query], self.dtype, affine)[0]
        return self._positioned(query, "query", positions)

    def _attend(self, query, keys_values: KVCache, mask, is_causal, kv_lengths):
        key, value = (keys_values[name].astype(query.dtype) for name in ("key", "value"))
        out = jax.nn.dot_product_attention(
            query, key, value, mask=mask, is_causal=is_causal, key_value_seq_lengths=kv_lengths,
            implementation=self.implementation)
        return self.out(out)

    def __call__(self, x: jax.Array, context: jax.Array | None = None, mask=None,
                 is_causal: bool = False, kv_lengths=None, context_kv: KVCache | None = None,
                 affine=None):
        """x [B, L, D] -> [B, L, D]. Self-attention positions are 0..L-1 (for RoPE).
        `affine`: x is normalised and its norm's scale and bias fold into the projections of x
        (`project`)."""
        if context_kv is None and context is None:  # self-attention: one matmul for q, k, v
            positions = jnp.arange(x.shape[1])[None]
            query, key, value = project(x, [self.query, self.key, self.value], self.dtype,
                                        affine)
            query = self._positioned(query, "query", positions)
            context_kv = {"key": self._positioned(key, "key", positions), "value": value}
        else:
            query = self.queries(x, affine=affine)
            if context_kv is None:
                context_kv = self.keys_values(context)
        return self._attend(query, context_kv, mask, is_causal, kv_lengths)

    def reads_context_directly(self, num_queries: int, context_length: int) -> bool:
        """Whether `attend_context` serves these shapes, and needs fewer multiply-adds than
        projecting every context row: R (Dh + S) < S Dh, as for a MAP head's one probe or the
        one pooled row of a tower's last block."""
        plain = self.kv_heads == self.num_heads and not self.qk_norm and not self.rope_theta
        return plain and num_queries * (self.dims_per_head + context_length) < (
            context_length * self.dims_per_head)

    def attend_context(self, query, context, affine, mask, kv_lengths) -> jax.Array:
        """Attention of a few projected queries [B, R, H, Dh] over context [B, S, D] without
        the context's keys and values: each query moves through the key kernel instead,
        q . (c W_k + b_k) = (W_k q) . c + q . b_k, and the values' kernel applies after the
        weighted sum, sum_s p_s (c_s W_v + b_v) = (sum_s p_s c_s) W_v + b_v (the weights sum
        to 1). q . b_k, like a folded norm's shift b in c = x_hat s + b (`affine`), is one
        constant per query and head, which the softmax drops. Same values as `_attend` on
        `keys_values(context)` up to float rounding; the S x D x 2HDh projection is gone."""
        width, heads, head_dim = context.shape[-1], self.num_heads, self.dims_per_head
        dtype = query.dtype
        key_kernel = self.key.weights(width)[0].reshape(width, heads, head_dim).astype(dtype)
        value_kernel, value_bias = self.value.weights(width)
        value_kernel = value_kernel.reshape(width, heads, head_dim).astype(dtype)
        context = context.astype(dtype)
        probe = jnp.einsum("brnh,dnh->bnrd", query * head_dim ** -0.5, key_kernel)
        if affine is not None:
            probe = probe * affine[0].astype(dtype)
        logits = jnp.einsum("bsd,bnrd->bnrs", context, probe).astype(jnp.float32)
        allowed = mask
        if kv_lengths is not None:
            valid = (jnp.arange(context.shape[1]) < kv_lengths[:, None])[:, None, None, :]
            allowed = valid if allowed is None else allowed & valid
        if allowed is not None:  # jax.nn.dot_product_attention's fill for masked logits
            logits = jnp.where(allowed, logits, -0.7 * float(jnp.finfo(jnp.float32).max))
        weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
        pooled = jnp.einsum("bnrs,bsd->bnrd", weights, context)
        if affine is not None:
            pooled = pooled * affine[0].astype(dtype) + affine[1].astype(dtype)
        out = jnp.einsum("bnrd,dnh->brnh", pooled, value_kernel)
        if value_bias is not None:
            out = out + value_bias.reshape(heads, head_dim).astype(dtype)
        return self.out(out)

    def decode(self, x: jax.Array, cache: KVCache, position: jax.Array, mask=None):
        """Self-attention of tokens x [B, T, D] at positions position..position+T-1 against the
        cache holding the earlier ones: (out [B, T, D], cache with these keys/values written).
        `mask` (optional, [B, 1|H, T, max_len]) narrows the step mask further."""
        positions = position + jnp.arange(x.shape[1])[None]  # [1, T]
        new = self.keys_values(x, positions)
        cache = {
            name: jax.lax.dynamic_update_slice_in_dim(
                cache[name], new[name].astype(cache[name].dtype), position, axis=1)
            for name in ("key", "value")
        }
        allowed = step_mask(position, x.shape[1], cache["key"].shape[1])
        if mask is not None:
            allowed = allowed & mask
        return self._attend(self.queries(x, positions), cache, allowed, False, None), cache

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        return kv_cache(batch_size, max_len, self.kv_heads, self.dims_per_head, self.dtype)


# ---------------------------------------------------------------------------------------------
# The block


NORM_POSITIONS = ("pre", "post", "output")


class Block(nn.Module):
    """A transformer block: attention, then an MLP, each in a residual branch.

    norm_position "pre" (ViT, CLIP, LLaMA): x + f(norm(x)); "post" (BERT): norm(x + f(x));
    "output" (Chameleon / Swin-v2): x + norm(f(x)). `cross_attention`: the attention reads a
    context (its own norm "norm_context"; the query norm is "norm_query") instead of the block's
    input (norm "norm1"). Parameter names: norm1 | norm_query + norm_context, attn, norm2, mlp.
    `attention_bias` False drops the attention projections' biases (LLaMA).
    """

    num_heads: int
    mlp_dim: int
    width: int
    dtype: Dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"
    is_causal: bool = False  # an attribute, not an argument, so remat/scan see only arrays
    implementation: str | None = None
    cross_attention: bool = False
    norm: str = "layernorm"  # NORMS
    norm_position: str = "pre"  # NORM_POSITIONS
    mlp_type: str = "mlp"  # MLPS
    num_kv_heads: int = 0
    head_dim: int = 0
    rope_theta: float = 0.0
    qk_norm: bool = False
    attention_bias: bool = True  # biases on the q/k/v/out projections (LLaMA has none)
    qk_norm_type: str = "rmsnorm"  # QK_NORMS
    qk_norm_eps: float = 1e-6

    def setup(self):
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position {self.norm_position!r} must be one of "
                             f"{NORM_POSITIONS}")
        if self.mlp_type not in MLPS:
            raise ValueError(f"mlp_type {self.mlp_type!r} must be one of {sorted(MLPS)}")
        norm = lambda: make_norm(self.norm, self.dtype, self.ln_eps)
        if self.cross_attention:
            self.norm_query, self.norm_context = norm(), norm()
        else:
            self.norm1 = norm()
        self.attn = Attention(
            self.num_heads, self.width, self.dtype, self.implementation, self.num_kv_heads,
            self.head_dim, 0.0 if self.cross_attention else self.rope_theta, self.qk_norm,
            self.qk_norm_eps, use_bias=self.attention_bias, qk_norm_type=self.qk_norm_type)
        self.norm2 = norm()
        self.mlp = MLPS[self.mlp_type](self.mlp_dim, self.dtype, self.activation)

    @property
    def _attention_norm(self) -> nn.Module:
        return self.norm_query if self.cross_attention else self.norm1

    def _residual(self, x: jax.Array, branch, norm: nn.Module, takes_affine=False) -> jax.Array:
        """`takes_affine`: branch(x_normalised, affine=(scale, bias)) folds a LayerNorm's
        affine part into its first dense layer (`project`)."""
        if self.norm_position == "pre":
            if takes_affine and isinstance(norm, LayerNorm):
                x_hat, affine = norm.parts(x)
                return x + branch(x_hat, affine=affine)
            return x + branch(norm(x))
        if self.norm_position == "post":
            return norm(x + branch(x))
        return x + norm(branch(x))

    def _mlp_half(self, x: jax.Array) -> jax.Array:
        return constrain(self._residual(x, self.mlp, self.norm2, isinstance(self.mlp, Mlp)))

    def context_keys_values(self, context: jax.Array) -> KVCache:
        """A cross-attention block's keys/values of context [B, S, C], computed once."""
        return self.attn.keys_values(self.norm_context(context))

    def __call__(self, x: jax.Array, mask=None, kv_lengths=None,
                 context_kv: KVCache | None = None) -> jax.Array:
        """x [B, L, D] -> [B, L, D]; a cross-attention block takes `context_kv`."""
        x = constrain(x)
        if self.cross_attention:
            if context_kv is None:
                raise ValueError("a cross-attention block needs context_kv "
                                 "(Block.context_keys_values of the context)")
            attend = lambda h, affine=None: self.attn(h, mask=mask, kv_lengths=kv_lengths,
                                                      context_kv=context_kv, affine=affine)
        else:
            attend = lambda h, affine=None: self.attn(h, mask=mask, is_causal=self.is_causal,
                                                      kv_lengths=kv_lengths, affine=affine)
        return self._mlp_half(self._residual(x, attend, self._attention_norm, True))

    def at_rows(self, x: jax.Array, rows: jax.Array, mask=None, kv_lengths=None) -> jax.Array:
        """The outputs of a self-attention block at rows int [B, R] of x [B, L, D] only:
        [B, R, D], equal to `self(x, mask, kv_lengths)` at those rows. Every row is still
        attended to; the queries, the output projection and the MLP see R rows, not L (a tower
        pooled at one token needs no more of its last block). A pre-LayerNorm block with few
        rows skips the keys and values too (`Attention.attend_context`)."""
        if self.cross_attention:
            raise ValueError("at_rows is for self-attention blocks")
        picked = jnp.take_along_axis(x, rows[..., None], axis=1)  # [B, R, D]
        if mask is not None and mask.shape[2] != 1:  # a per-query mask: keep our rows' rows
            mask = jnp.take_along_axis(mask, rows[:, None, :, None], axis=2)
        if self.is_causal:  # row r sees keys 0..r
            causal = jnp.arange(x.shape[1]) <= rows[:, None, :, None]  # [B, 1, R, L]
            mask = causal if mask is None else causal & mask
        if (self.norm_position == "pre" and isinstance(self.norm1, LayerNorm)
                and self.attn.reads_context_directly(rows.shape[1], x.shape[1])):
            context, context_affine = self.norm1.parts(x)
            attend = lambda h, affine=None: self.attn.attend_context(
                self.attn.queries(h, affine=affine), context, context_affine, mask, kv_lengths)
        else:
            # The attention branch's input is the normed stream ("pre") or the stream itself.
            positions = jnp.arange(x.shape[1])[None]
            if self.norm_position != "pre":
                keys_values = self.attn.keys_values(x, positions)
            elif isinstance(self.norm1, LayerNorm):  # its affine part folds into the projections
                x_hat, affine = self.norm1.parts(x)
                keys_values = self.attn.keys_values(x_hat, positions, affine)
            else:
                keys_values = self.attn.keys_values(self.norm1(x), positions)
            attend = lambda h, affine=None: self.attn._attend(
                self.attn.queries(h, rows, affine), keys_values, mask, False, kv_lengths)
        return self._mlp_half(self._residual(constrain(picked), attend, self.norm1, True))

    def decode(self, x: jax.Array, cache: KVCache, position: jax.Array, mask=None):
        """A causal self-attention block on tokens x [B, T, D] at position..position+T-1
        (earlier ones in `cache`): (outputs [B, T, D], updated cache)."""
        outputs = {}

        def attend(h):
            out, outputs["cache"] = self.attn.decode(h, cache, position, mask)
            return out

        x = self._residual(x, attend, self.norm1)
        return self._mlp_half(x), outputs["cache"]

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        return self.attn.init_cache(batch_size, max_len)


# ---------------------------------------------------------------------------------------------
# Stacks and poolers


class Encoder(nn.Module):
    """A stack of `depth` blocks followed by a final norm (`block` holds extra Block fields:
    norm, mlp_type, num_kv_heads, rope_theta, qk_norm, ...). `final_norm=False` returns the
    last block's output un-normalised (FLAVA fuses those states and open_clip's single-pooler
    CoCa norms after its pooler: their norms live outside).

    With `feature_layer` k (HF's `hidden_states[k]`: 0 is the input, -1 the last block's
    output, -2 the one before) it returns (output, that hidden state, not normed): LLaVA reads
    image features below the last block.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"
    execution: Execution = Execution()
    block: tuple[tuple[str, Any], ...] = ()
    final_norm: bool = True
    feature_layer: int | None = None

    @nn.compact
    def __call__(self, x, mask=None, is_causal: bool = False, pool_rows=None):
        """x [B, L, D] -> [B, L, D] (with `feature_layer`: that and the hidden state).

        `pool_rows` int [B, R]: the rows a pooled tower reads (CLS, EOS). The result is then
        (the output above, the final states of those rows [B, R, D]), the latter from a last
        block run on those rows alone (`Block.at_rows`): a caller that uses only them lets XLA
        drop the rest of the last block (a fifth of a 4-block CLIP tower's work).
        """
        run = self.execution
        length = x.shape[1]
        capture = None
        if self.feature_layer is not None:
            capture = self.feature_layer % (self.depth + 1)  # hidden_states index, 0..depth
            if run.scan_layers:
                raise ValueError("feature_layer reads one block's output, which a scanned "
                                 "stack does not expose; set execution.scan_layers to False")
        x, mask, kv_lengths = pad_sequence(x, mask, run.pad_multiple)
        hidden = x if capture == 0 else None
        block = run.remat_block(Block)
        settings = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, width=x.shape[-1],
                        dtype=self.dtype, ln_eps=self.ln_eps, activation=self.activation,
                        is_causal=is_causal, implementation=run.implementation,
                        **dict(self.block))
        if run.scan_layers:
            scanned = nn.scan(
                _scan_body(block, settings), variable_axes={"params": 0},
                split_rngs={"params": True}, in_axes=(nn.broadcast, nn.broadcast),
                length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = scanned(name="blocks")(x, mask, kv_lengths)
        else:
            for i in range(self.depth):
                block_i = block(**settings, name=f"block{i}")
                if pool_rows is not None and i == self.depth - 1:
                    pooled = block_i.at_rows(x, pool_rows, mask, kv_lengths)
                x = block_i(x, mask, kv_lengths)
                if capture == i + 1:
                    hidden = x
        if self.final_norm:
            norm = make_norm(dict(self.block).get("norm", "layernorm"), self.dtype, self.ln_eps,
                             name="norm")
            x = norm(x)
        out = x[:, :length] if capture is None else (x[:, :length], hidden[:, :length])
        if pool_rows is None:
            return out
        if run.scan_layers:  # the last block is inside the scan: read the rows from its output
            return out, jnp.take_along_axis(x, pool_rows[..., None], axis=1)
        return out, norm(pooled) if self.final_norm else pooled


def _scan_body(block, settings: dict):
    """`block` as a scan body: (x, mask, kv_lengths) -> (x, None)."""

    class Carried(nn.Module):
        @nn.compact
        def __call__(self, x, mask, kv_lengths):
            return block(**settings, name="block")(x, mask, kv_lengths), None

    return Carried


def pad_sequence(x: jax.Array, mask, multiple: int):
    """Pad x [B, L, D] to a multiple of `multiple`; returns (x, mask, true lengths or None).

    Padded keys are excluded through the lengths; a padded query row copies row 0 of `mask`
    (never all-masked, so no NaN reaches the gradient) and is cut off by the caller.
    """
    length = x.shape[1]
    extra = -length % multiple
    if not extra:
        return x, mask, None
    x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    if mask is not None:
        mask = jnp.broadcast_to(mask, (*mask.shape[:2], length, length))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, extra)))  # padded keys: never
        mask = jnp.concatenate([mask, jnp.repeat(mask[:, :, :1], extra, axis=2)], axis=2)
    return x, mask, jnp.full((x.shape[0],), length, jnp.int32)


class AttentionPool(nn.Module):
    """Multi-head attention pooling with `num_queries` learned queries (MAP head)."""

    num_heads: int
    mlp_dim: int
    num_queries: int = 1
    dtype: Dtype = jnp.float32
    ln_eps: float = 1e-6
    activation: str = "gelu"

    @nn.compact
    def __call__(self, tokens: jax.Array, mask=None) -> jax.Array:  # [B, L, D] -> [B, Q, D]
        width = tokens.shape[-1]
        probe = self.param(
            "probe",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
            (self.num_queries, width),
        )
        queries = jnp.broadcast_to(probe.astype(tokens.dtype), (tokens.shape[0], *probe.shape))
        attention = Attention(self.num_heads, width, self.dtype, name="attn")
        if attention.reads_context_directly(self.num_queries, tokens.shape[1]):
            x = attention.attend_context(attention.queries(queries), tokens, None, mask, None)
        else:
            x = attention(queries, tokens, mask=mask)
        mlp = Mlp(self.mlp_dim, self.dtype, self.activation, name="mlp")
        return x + mlp(LayerNorm(self.dtype, self.ln_eps, name="norm")(x))
