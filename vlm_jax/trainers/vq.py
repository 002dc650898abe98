"""VQ-VAE image tokenizer training: pixel MSE + commitment (+ codebook loss in "st" mode).

loss = reconstruction MSE (pixels on [-1, 1]) + loss.commitment_weight (beta, 0.25) x
commitment loss [+ loss.codebook_weight x codebook loss, "st" mode]. The quantiser's statistics
(and, in "ema" mode, the codebook) are parameters under the optimizer rule "assign": the loss
adds `optim.assignment_term(state, next values)`, which is 0 but has the gradient (state - next),
and "assign" updates by minus the gradient, so after the step each one holds its next value
(models/vq.codebook_update: the EMA, Laplace smoothing, dead-code restarts). Nothing else in
the loop or the train state knows about VQ. No eval capability: the tokenizer is evaluated by
`vlm_jax.vq_tokenizer` (reconstruction error, codebook usage, a PNG of reconstructions).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from vlm_jax import optim
from vlm_jax.configlib import ConfigError
from vlm_jax.data import formats
from vlm_jax.losses import vq as vq_losses
from vlm_jax.models import vq

CAPABILITIES = frozenset()
_RESTART_STREAM = 7  # the rng stream of the restart picks, apart from any future dropout


def init_batch(config: ml_collections.ConfigDict) -> dict:
    """One image: the model's only input."""
    size = config.data.image_size
    return {"images": np.zeros((1, size, size, 3), np.uint8)}


def check_config(model: vq.VQVAE, config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError when the optimizer rules, the data or the codebook settings cannot
    train this tokenizer (each message names the field and the fix)."""
    mode = model.quantizer_mode
    names = [name for name, _ in formats.mixture_of(config.data)]
    if any("image" not in formats.FORMAT_KEYS[name] for name in names):
        raise ConfigError(f"data format {names} has no 'image' for the VQ tokenizer; set "
                          "--config.data.format=image_only")
    codebook = config.codebook
    if codebook.restart and mode != "ema":
        raise ConfigError("codebook.restart needs model.quantizer='ema' (an 'st' codebook is "
                          "a trained weight the restarts cannot write); set "
                          "--config.codebook.restart=False")
    if codebook.restart and config.grad_accum_steps > 1:
        raise ConfigError("codebook.restart with grad_accum_steps > 1 would restart each dead "
                          "code at the mean of several batch vectors; set grad_accum_steps=1")
    if not 0.0 <= codebook.decay < 1.0:
        raise ConfigError(f"codebook.decay={codebook.decay} must be in [0, 1)")
    if codebook.restart and codebook.dead_count >= vq.INITIAL_COUNT:
        raise ConfigError(f"codebook.dead_count={codebook.dead_count} must be below the count "
                          f"a restarted code gets ({vq.INITIAL_COUNT}), or it restarts forever")
    rules = tuple(tuple(rule) for rule in config.optim.get("param_rules", ()))
    shapes = jax.eval_shape(lambda rng: model.init(rng, **init_batch(config))["params"],
                            jax.random.PRNGKey(0))
    groups = optim.param_groups(shapes, rules)["quantizer"]
    wrong = sorted(name for name, group in groups.items()
                   if (group == optim.ASSIGN) != (name in vq.STATE_PARAMS[mode]))
    if wrong:
        regex = vq.state_param_regex(mode)
        raise ConfigError(
            f"optim.param_rules give quantizer/{', quantizer/'.join(wrong)} the wrong rule for "
            f"model.quantizer={mode!r}: exactly {regex} must be 'assign' (the codebook update "
            f"writes them); set --config.optim.param_rules='(({regex!r}, \"assign\"),)'")


def make_loss_fn(model: vq.VQVAE, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics); see the module docstring."""
    del mesh  # the conv stack and the codebook shard by GSPMD alone
    check_config(model, config)
    mode, codebook = model.quantizer_mode, config.codebook
    beta, codebook_weight = config.loss.commitment_weight, config.loss.codebook_weight
    state_names = vq.STATE_PARAMS[mode]

    def loss_fn(params, batch, rng):
        images = batch["image"]
        reconstruction, extras = model.apply({"params": params}, images)
        z, quantized = extras["z"], extras["quantized"]
        pixels = vq.to_pixels(images)
        reconstruction_mse = vq_losses.reconstruction_loss(reconstruction, pixels)
        commitment = vq_losses.commitment_loss(z, quantized)
        loss = reconstruction_mse + beta * commitment
        metrics = {"reconstruction_mse": reconstruction_mse, "commitment_loss": commitment,
                   "mean_colour_mse": mean_colour_mse(pixels)}
        if mode == "st":
            codebook_term = vq_losses.codebook_loss(z, quantized)
            loss = loss + codebook_weight * codebook_term
            metrics["codebook_loss"] = codebook_term
        state = {name: params["quantizer"][name] for name in state_names}
        next_state, usage = vq.codebook_update(
            params["quantizer"], z, extras["codes"], jax.random.fold_in(rng, _RESTART_STREAM),
            mode=mode, decay=codebook.decay, epsilon=codebook.epsilon,
            dead_count=codebook.dead_count, restart_after=codebook.restart_after,
            restart=codebook.restart)
        loss = loss + optim.assignment_term(state, next_state)  # adds 0; see the docstring
        return loss, {**metrics, **usage, "loss": loss}

    return loss_fn


def mean_colour_mse(pixels: jax.Array) -> jax.Array:
    """The MSE of predicting each image by its mean colour: the baseline a tokenizer must beat."""
    return ((pixels - pixels.mean(axis=(1, 2), keepdims=True)) ** 2).mean()
