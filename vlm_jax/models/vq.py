"""VQ-VAE image tokenizer: conv encoder -> nearest-code quantiser -> conv decoder (van den Oord
et al. 2017; EMA codebook as in VQ-VAE-2 / Sonnet's VectorQuantizerEMA).

uint8 images [B, S, S, 3] -> pixels in [-1, 1] -> encoder (len(channels) stride-2 convs, so a
grid of h = w = S / 2^len(channels)) -> z [B, h, w, D] -> codes int32 [B, h, w] (nearest code,
squared Euclidean) -> the codes' vectors -> decoder (as many stride-2 transposed convs) ->
reconstruction [B, S, S, 3] on the [-1, 1] pixel scale.

The quantiser's statistics are parameters ("state", see `STATE_PARAMS`) that no optimizer
trains: the trainer computes their next values (`codebook_update`) and writes them with the
"assign" parameter rule (`vlm_jax.optim.assignment_term`). Quantiser modes:
  "ema": the codebook follows the EMA of the vectors assigned to each code (decay, Laplace-
         smoothed counts); it is state too.
  "st":  the codebook is a weight trained by the codebook loss; the usage statistics (count
         EMA, steps unused) are state, for the metrics.
Both pass the decoder's gradient straight through the quantiser to the encoder.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax.models import layers

QUANTIZERS = ("ema", "st")
# mode -> the quantizer parameters that are state, written through the "assign" rule.
STATE_PARAMS = {"ema": ("codebook", "ema_count", "ema_sum", "unused_steps"),
                "st": ("ema_count", "unused_steps")}
# ema_count starts at this pseudo-count (one observation of the initial vector), so a code the
# data never picks keeps its initial vector as the count decays, instead of ema_sum / ~0.
INITIAL_COUNT = 1.0


def state_param_regex(quantizer: str) -> str:
    """The regex (optim.param_rules) of the parameters that are state in mode `quantizer`."""
    return f"quantizer/({'|'.join(STATE_PARAMS[quantizer])})"


def to_pixels(images: jax.Array) -> jax.Array:
    """uint8 [..., 3] -> float32 on [-1, 1]: the scale of the reconstruction loss."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(pixels: jax.Array) -> jax.Array:
    """float pixels on [-1, 1] -> uint8 (clipped, rounded)."""
    return jnp.clip(jnp.round((pixels + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _conv(features: int, kernel: int, stride: int = 1, name: str | None = None,
          transpose: bool = False) -> nn.Module:
    conv = nn.ConvTranspose if transpose else nn.Conv
    return conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                kernel_init=layers.dense_init((None, None, None, "embed"),
                                              nn.initializers.lecun_normal()),
                bias_init=layers.zeros_init(("embed",)), name=name)


class ResidualStack(nn.Module):
    """`depth` pre-activation residual blocks x + conv1x1(relu(conv3x3(relu(x)))) (VQ-VAE's)."""

    width: int
    depth: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, h, w, width]
        for i in range(self.depth):
            hidden = _conv(self.width // 2, 3, name=f"block{i}_conv3")(nn.relu(x))
            x = x + _conv(self.width, 1, name=f"block{i}_conv1")(nn.relu(hidden))
        return nn.relu(x)


class Encoder(nn.Module):
    """Pixels [B, S, S, 3] -> z [B, S/2^n, S/2^n, code_dim] (n = len(channels))."""

    channels: tuple[int, ...]
    res_blocks: int
    code_dim: int

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = pixels
        for i, width in enumerate(self.channels):
            x = nn.relu(_conv(width, 4, stride=2, name=f"down{i}")(x))
        x = _conv(self.channels[-1], 3, name="mid")(x)
        x = ResidualStack(self.channels[-1], self.res_blocks, name="res")(x)
        return _conv(self.code_dim, 1, name="to_codes")(x)


class Decoder(nn.Module):
    """Code vectors [B, h, w, code_dim] -> pixels [B, h*2^n, w*2^n, 3] (unbounded)."""

    channels: tuple[int, ...]
    res_blocks: int

    @nn.compact
    def __call__(self, z_q: jax.Array) -> jax.Array:
        x = _conv(self.channels[-1], 3, name="from_codes")(z_q)
        x = ResidualStack(self.channels[-1], self.res_blocks, name="res")(x)
        widths = list(reversed(self.channels))[1:] + [3]
        for i, width in enumerate(widths):
            x = _conv(width, 4, stride=2, name=f"up{i}", transpose=True)(x)
            if i < len(widths) - 1:
                x = nn.relu(x)
        return x


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """z [..., D], codebook [K, D] -> int32 [...]: the index of the nearest code (squared
    Euclidean; ties go to the lowest index)."""
    flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    # ||z||^2 is the same for every code: argmin over ||e||^2 - 2 z.e.
    distance = jnp.sum(codebook ** 2, axis=-1)[None, :] - 2.0 * flat @ codebook.T  # [N, K]
    return jnp.argmin(distance, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])


def straight_through(z: jax.Array, quantized: jax.Array) -> jax.Array:
    """Equals `quantized` forward; its gradient goes to `z` unchanged (none to `quantized`)."""
    return z + jax.lax.stop_gradient(quantized - z)


class Quantizer(nn.Module):
    """The codebook and its statistics; `__call__` maps z to codes and their vectors."""

    codebook_size: int
    code_dim: int

    def setup(self):
        shape = (self.codebook_size, self.code_dim)
        self.codebook = self.param("codebook", layers.dense_init(
            ("vocab", "embed"), nn.initializers.variance_scaling(1.0, "fan_in", "uniform")), shape)
        # The statistics are params so they are checkpointed; ema_sum / ema_count equals the
        # codebook at init, so the EMA starts from it.
        self.ema_count = self.param("ema_count", nn.with_logical_partitioning(
            nn.initializers.constant(INITIAL_COUNT), ("vocab",)), (self.codebook_size,))
        initial = self.codebook
        self.ema_sum = self.param("ema_sum", nn.with_logical_partitioning(
            lambda *_: initial * INITIAL_COUNT, ("vocab", "embed")))
        self.unused_steps = self.param("unused_steps", layers.zeros_init(("vocab",)),
                                       (self.codebook_size,))

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z [B, h, w, D] -> (codes int32 [B, h, w], the codes' vectors [B, h, w, D])."""
        codes = nearest_codes(z, self.codebook)
        return codes, self.lookup(codes).astype(z.dtype)

    def lookup(self, codes: jax.Array) -> jax.Array:
        """int32 codes [...] -> their vectors [..., D]."""
        return jnp.take(self.codebook, codes, axis=0)


class VQVAE(nn.Module):
    """images uint8 [B, S, S, 3] -> (reconstruction [B, S, S, 3] on [-1, 1], extras).

    extras: "z" the encoder output [B, h, w, D], "codes" int32 [B, h, w], "quantized" the
    codes' vectors [B, h, w, D] (the straight-through input of the decoder is z + sg(q - z)).
    """

    channels: tuple[int, ...]
    res_blocks: int
    code_dim: int
    codebook_size: int
    quantizer_mode: str = "ema"

    def setup(self):
        if self.quantizer_mode not in QUANTIZERS:
            raise ValueError(f"model.quantizer {self.quantizer_mode!r} must be one of "
                             f"{', '.join(QUANTIZERS)}")
        self.encoder = Encoder(self.channels, self.res_blocks, self.code_dim)
        self.quantizer = Quantizer(self.codebook_size, self.code_dim)
        self.decoder = Decoder(self.channels, self.res_blocks)

    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        z = self.encode(images)
        codes, quantized = self.quantizer(z)
        reconstruction = self.decoder(straight_through(z, quantized))
        return reconstruction, {"z": z, "codes": codes, "quantized": quantized}

    def encode(self, images: jax.Array) -> jax.Array:
        """uint8 [B, S, S, 3] -> z [B, h, w, D]."""
        size = images.shape[1]
        if size % self.downsampling or images.shape[2] % self.downsampling:
            raise ValueError(f"image size {images.shape[1:3]} is not a multiple of the "
                             f"encoder's downsampling {self.downsampling} (2^len(channels))")
        return self.encoder(to_pixels(images))

    def tokenize(self, images: jax.Array) -> jax.Array:
        """uint8 [B, S, S, 3] -> codes int32 [B, h*w] (row-major over the grid)."""
        codes, _ = self.quantizer(self.encode(images))
        return codes.reshape(codes.shape[0], -1)

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """codes int32 [B, h*w] (a square grid) -> pixels [B, S, S, 3] on [-1, 1]."""
        side = round(codes.shape[1] ** 0.5)
        if side * side != codes.shape[1]:
            raise ValueError(f"{codes.shape[1]} codes per image are not a square grid")
        return self.decoder(self.quantizer.lookup(codes.reshape(-1, side, side)))

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.channels)


def from_config(model_config: ml_collections.ConfigDict, vocab_size: int,
                dtype=jnp.float32) -> VQVAE:
    """The VQ-VAE of `config.model` (no text: vocab_size unused; float32 throughout)."""
    del vocab_size, dtype  # the tokenizer's own vocabulary is its codebook
    return VQVAE(channels=tuple(model_config.channels), res_blocks=model_config.res_blocks,
                 code_dim=model_config.code_dim, codebook_size=model_config.codebook_size,
                 quantizer_mode=model_config.quantizer)


def tokenize(model: VQVAE, params: Any, images: jax.Array) -> jax.Array:
    """uint8 images [B, S, S, 3] -> int32 codes [B, h*w]; pure, so it runs inside a jit."""
    return model.apply({"params": params}, images, method=VQVAE.tokenize)


def detokenize(model: VQVAE, params: Any, codes: jax.Array) -> jax.Array:
    """int32 codes [B, h*w] -> uint8 images [B, S, S, 3]; pure."""
    return to_uint8(model.apply({"params": params}, codes, method=VQVAE.decode_codes))


# --- the codebook update: next values of the state parameters --------------------------------


def codebook_update(quantizer_params: dict, z: jax.Array, codes: jax.Array, rng: jax.Array, *,
                    mode: str, decay: float, epsilon: float, dead_count: float,
                    restart_after: int, restart: bool) -> tuple[dict, dict]:
    """(next values of STATE_PARAMS[mode], metrics) after one batch.

    z [B, h, w, D] encoder outputs, codes int32 [B, h, w] their nearest codes. With n_k the
    batch's count and s_k the sum of the z assigned to code k:
      ema_count <- decay ema_count + (1 - decay) n_k
      ema_sum   <- decay ema_sum   + (1 - decay) s_k                          ("ema" only)
      codebook  <- ema_sum / smoothed,  smoothed = (ema_count + eps) / (N + K eps) N,
                   N = sum_k ema_count (Laplace smoothing: no division by ~0)  ("ema" only)
      unused_steps <- 0 where n_k > 0, else unused_steps + 1.
    A code is dead when ema_count < dead_count or unused_steps >= restart_after (0: never).
    With `restart` ("ema" only) each dead code restarts at a random vector of the batch
    (codebook and ema_sum = that z, ema_count = INITIAL_COUNT, unused_steps = 0).
    """
    size = quantizer_params["codebook"].shape[0]
    flat_z = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1]).astype(jnp.float32)  # [N, D]
    one_hot = jax.nn.one_hot(codes.reshape(-1), size, dtype=jnp.float32)  # [N, K]
    counts = one_hot.sum(axis=0)  # [K]
    ema_count = decay * quantizer_params["ema_count"] + (1 - decay) * counts
    unused_steps = jnp.where(counts > 0, 0.0, quantizer_params["unused_steps"] + 1.0)
    dead = ema_count < dead_count
    if restart_after:
        dead = dead | (unused_steps >= restart_after)
    new = {"ema_count": ema_count, "unused_steps": unused_steps}
    if mode == "ema":
        ema_sum = decay * quantizer_params["ema_sum"] + (1 - decay) * one_hot.T @ flat_z
        total = jnp.sum(ema_count)
        smoothed = (ema_count + epsilon) / (total + size * epsilon) * total
        codebook = ema_sum / smoothed[:, None]
        if restart:
            # Distinct batch vectors when the batch has at least K of them.
            picks = jax.random.choice(rng, flat_z.shape[0], (size,),
                                      replace=flat_z.shape[0] < size)
            fresh = flat_z[picks]  # [K, D]
            codebook = jnp.where(dead[:, None], fresh, codebook)
            ema_sum = jnp.where(dead[:, None], fresh * INITIAL_COUNT, ema_sum)
            new["ema_count"] = jnp.where(dead, INITIAL_COUNT, ema_count)
            new["unused_steps"] = jnp.where(dead, 0.0, unused_steps)
        new.update(codebook=codebook, ema_sum=ema_sum)
    probabilities = counts / jnp.sum(counts)
    entropy = -jnp.sum(jnp.where(counts > 0, probabilities * jnp.log(probabilities), 0.0))
    metrics = {"perplexity": jnp.exp(entropy), "codes_used": jnp.sum(counts > 0),
               "dead_codes": jnp.sum(dead)}
    return new, metrics
