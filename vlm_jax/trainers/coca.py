"""CoCa training: contrastive loss on the pooled embeddings + captioning cross-entropy.

loss = loss.contrastive_weight x contrastive (the CLIP/SigLIP loss functions, so it shards like
them) + loss.caption_weight x token cross-entropy of the teacher-forced caption, padding ignored
(open_clip's CoCaLoss: weights 1 and 2). The contrastive `Scorer` runs the existing evals;
`make_captioner` gives the generative evals captions and caption likelihoods.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vlm_jax import decoding, parallel
from vlm_jax import generation as coca  # CoCa's inference drivers (moved from models/coca)
from vlm_jax.losses import generative
from vlm_jax.trainers.contrastive import (  # noqa: F401  (make_scorer: same towers' interface)
    contrastive_term,
    make_scorer,
)


def make_loss_fn(model: coca.CoCa, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics): the weighted sum of both terms."""
    contrastive_loss_term = contrastive_term(config.loss.contrastive, config.loss, mesh)
    contrastive_weight, caption_weight = config.loss.contrastive_weight, config.loss.caption_weight

    def loss_fn(params, batch, rng):
        del rng  # no dropout
        text_tokens = batch["text_tokens"]
        image_emb, text_emb, extras = model.apply({"params": params}, batch["image"], text_tokens)
        contrastive_loss, metrics = contrastive_loss_term(image_emb, text_emb, extras)
        caption_loss, caption_metrics = generative.caption_loss(
            extras["caption_logits"], text_tokens, text_tokens != model.pad_id)
        loss = contrastive_weight * contrastive_loss + caption_weight * caption_loss
        return loss, {**metrics, **caption_metrics, "loss": loss,
                      "contrastive_loss": contrastive_loss, "logit_scale": extras["logit_scale"]}

    return loss_fn


def decode_settings(config: ml_collections.ConfigDict) -> decoding.DecodeSettings:
    """`config.decode` as DecodeSettings; max_len 0 means the training text length."""
    fields = dict(config.decode.to_dict())
    fields["max_len"] = fields["max_len"] or config.data.text_length
    return decoding.DecodeSettings(**fields)


def make_captioner(model: coca.CoCa, params, tokenizer, mesh,
                   config: ml_collections.ConfigDict) -> decoding.Captioner:
    """Captions and caption likelihoods of the trained model, NumPy in and out.

    `generate(images, settings=None, prompts=None, seed=0)` (None: `decode_settings(config)`)
    returns the generated tokens only (a prompt's are stripped): tokens, EOS, padding.
    """
    if (tokenizer.bos_id, tokenizer.pad_id) != (model.bos_id, model.pad_id):
        raise ValueError(
            f"tokenizer {tokenizer.path} has bos_id={tokenizer.bos_id}, pad_id={tokenizer.pad_id} "
            f"but the model was built with bos_id={model.bos_id}, pad_id={model.pad_id}; set "
            "config.model.bos_id / pad_id to the tokenizer's")
    text_length = config.data.text_length
    log_likelihood = _host_function(
        lambda p, images, tokens: coca.caption_log_likelihood(model, p, images, tokens), mesh)
    default_settings = decode_settings(config)
    generators = {}

    def generate(images: np.ndarray, settings: decoding.DecodeSettings | None = None,
                 prompts: Sequence[str] | None = None, seed: int = 0) -> np.ndarray:
        settings = settings or default_settings
        key = (settings, prompts is not None, seed)
        if key not in generators:
            def run(p, images, *prompt):
                tokens, _ = coca.generate(
                    model, p, images, settings, eos_id=tokenizer.eos_id,
                    rng=jax.random.PRNGKey(seed), prompt=prompt[0] if prompt else None)
                return tokens
            generators[key] = _host_function(run, mesh)
        if prompts is None:
            return generators[key](params, images)
        # Prompts are the tokenizer's tokens without the EOS that would end them.
        prompt = tokenizer.encode(list(prompts), settings.max_len)
        prompt[prompt == tokenizer.eos_id] = tokenizer.pad_id
        tokens = generators[key](params, images, prompt)
        return _strip_prompts(tokens, np.sum(prompt != tokenizer.pad_id, axis=1), tokenizer.pad_id)

    return decoding.Captioner(
        generate=generate,
        log_likelihood=lambda images, text_tokens: log_likelihood(params, images, text_tokens),
        tokenize=lambda texts: tokenizer.encode(list(texts), text_length),
        detokenize=tokenizer.decode,
    )


def _strip_prompts(tokens: np.ndarray, prompt_lengths: np.ndarray, pad_id: int) -> np.ndarray:
    """Each row's tokens after its prompt, moved to the front and padded at the end."""
    out = np.full_like(tokens, pad_id)
    for row, (sequence, length) in enumerate(zip(tokens, prompt_lengths, strict=True)):
        out[row, : len(sequence) - length] = sequence[length:]
    return out


def _host_function(fn, mesh):
    """`fn(params, *arrays)` under jit with every array's rows split over the batch axes.

    NumPy in and out, like `parallel.host_apply` but for several arrays and any row count:
    rows are padded (repeating the last) to a multiple of the batch shards and trimmed after.
    """
    jitted = jax.jit(fn, out_shardings=NamedSharding(mesh, PartitionSpec()))
    sharding = parallel.batch_sharding(mesh)
    shards = int(np.prod([mesh.shape[axis] for axis in parallel.BATCH_AXES]))

    def run(params, *arrays: np.ndarray) -> np.ndarray:
        arrays = [np.asarray(array) for array in arrays]
        rows = arrays[0].shape[0]
        padded = -(-rows // shards) * shards
        global_arrays = []
        for array in arrays:
            array = np.concatenate([array, np.repeat(array[-1:], padded - rows, axis=0)])
            global_arrays.append(jax.make_array_from_callback(
                array.shape, sharding, lambda index, array=array: array[index]))
        return np.asarray(jitted(params, *global_arrays).addressable_data(0))[:rows]

    return run
