"""Generation with an early-fusion LM (models/early_fusion.py): image -> text and text -> image.

    image -> text   prefix BOS <boi> code*T <eoi> (the frozen VQ's codes), then the caption
                    decoded by `vlm_jax.decoding` over the LM's KV cache (`make_captioner`: the
                    generative evals' CaptionModel)
    text -> image   BOS caption <boi>, then exactly T codes sampled one by one, the logits of
                    every other id at -inf; classifier-free guidance runs an unconditional
                    stream BOS <boi> (the caption removed: an image-first document's start)
                    beside it and samples from uncond + s * (cond - uncond); the VQ decoder
                    turns the codes into pixels (`text_to_image`)
    image | text    log p(codes | BOS text <boi>), the codes' log-likelihoods summed
                    (`make_image_likelihood`: the image-likelihood evals' ImageLikelihood, a
                    Bayes classifier p(class | image) ∝ p(image | class prompt))

`python -m vlm_jax.early_fusion_generation --workdir=RUN` writes RUN/text_to_image.png (one row
per prompt: samples without guidance | with guidance; seen colour-shape prompts, then held-out
ones) and text_to_image.json (the colour check and, with --clipscore_workdir, CLIPScore of each
set; vlm_jax/evals/text_to_image.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm_jax import decoding, lm_generation, serving
from vlm_jax.evals.caption_model import CaptionModel
from vlm_jax.evals.image_likelihood import ImageLikelihood
from vlm_jax.losses import generative
from vlm_jax.models import early_fusion, vq
from vlm_jax.models.lm import LM


def load_image_tokenizer(config: ml_collections.ConfigDict):
    """The frozen VQ tokenizer of the run in config.vq."""
    from vlm_jax.vq_tokenizer import load_vq

    if not config.get("vq", ""):
        raise ValueError("config.vq is empty: early fusion needs a trained VQ tokenizer; train "
                         "configs/vq.py:tiny and pass its workdir as configs/chameleon.py:tiny,"
                         "vq=<workdir>")
    return load_vq(config.vq)


def vocabulary(config: ml_collections.ConfigDict, image_tokenizer
               ) -> early_fusion.ImageVocabulary:
    """The one vocabulary's image ids, from the run's tokenizer (data.image_codes codes)."""
    from vlm_jax.data.tokenizer import load_tokenizer

    return early_fusion.image_vocabulary(load_tokenizer(config.data),
                                         image_tokenizer.codebook_size)


def check_image_tokens(config: ml_collections.ConfigDict, image_tokenizer) -> None:
    """Refuse a config whose image sizes disagree with the VQ run's (one line with the fix)."""
    wanted = {"data.image_size": image_tokenizer.image_size,
              "data.image_tokens": image_tokenizer.num_codes,
              "data.image_codes": image_tokenizer.codebook_size}
    have = {"data.image_size": config.data.image_size,
            "data.image_tokens": config.data.image_tokens,
            "data.image_codes": config.data.image_codes}
    wrong = [f"{key}={have[key]} (the VQ run needs {value})" for key, value in wanted.items()
             if have[key] != value]
    if wrong:
        raise ValueError(f"config disagrees with the VQ tokenizer in {config.vq}: "
                         f"{', '.join(wrong)}; configs/chameleon.py sets them from vq=<workdir>")


def image_prefix(image_tokenizer, vocab: early_fusion.ImageVocabulary,
                 images: jax.Array) -> jax.Array:
    """uint8 images [N, S, S, 3] -> the prompt BOS <boi> code*T <eoi>, int32 [N, T + 3]."""
    codes = vq.tokenize(image_tokenizer.model, image_tokenizer.params, images)  # [N, T]
    n = codes.shape[0]
    column = lambda token: jnp.full((n, 1), token, jnp.int32)
    return jnp.concatenate([column(vocab.bos_id), column(vocab.boi_id),
                            codes.astype(jnp.int32) + vocab.code_offset,
                            column(vocab.eoi_id)], axis=1)


def caption_log_likelihood(model: LM, params, prefix: jax.Array,
                           text_tokens: jax.Array, pad_id: int) -> jax.Array:
    """log p(text_tokens [N, L] | prefix [N, P]) summed over the non-padding tokens: [N]."""
    sequence = jnp.concatenate([prefix, text_tokens], axis=1)
    logits = model.apply({"params": params}, sequence[:, :-1],
                         valid=sequence[:, :-1] != pad_id)
    counted = jnp.concatenate([jnp.zeros_like(prefix[:, 1:], bool), text_tokens != pad_id], 1)
    return generative.sequence_log_likelihood(logits, sequence[:, 1:], counted)


def caption_tokens(model: LM, params, prefix: jax.Array, settings: decoding.DecodeSettings,
                   rng, prompt: jax.Array | None, eos_id: int, pad_id: int) -> jax.Array:
    """Continue prefix [N, P] (the image) with a forced prompt [N, Q] (pad-padded, or None)
    and then up to settings.max_len tokens: int32 [N, Q + max_len] (prompt then new tokens)."""
    forced = jnp.zeros((prefix.shape[0], 0), jnp.int32) if prompt is None else prompt
    total = forced.shape[1] + settings.max_len
    tokens, _ = lm_generation.generate_after_prefill(
        model, params, prefix, forced, settings, eos_id, pad_id, rng, total)
    return tokens


def make_captioner(model: LM, params, tokenizer, mesh, config: ml_collections.ConfigDict,
                   image_tokenizer) -> CaptionModel:
    """The generative evals' CaptionModel: captions from the image's codes, decoded as
    config.decode says; likelihoods of captions given the image."""
    vocab = early_fusion.image_vocabulary(tokenizer, image_tokenizer.codebook_size)
    prefix = functools.partial(image_prefix, image_tokenizer, vocab)

    def generate_tokens(p, images, settings, rng, prompt):
        return caption_tokens(model, p, prefix(images), settings, rng, prompt, vocab.eos_id,
                              vocab.pad_id)

    def log_likelihood(p, images, text_tokens):
        return caption_log_likelihood(model, p, prefix(images), text_tokens, vocab.pad_id)

    return serving.make_captioner(generate_tokens, log_likelihood, params, tokenizer, mesh,
                                  serving.decode_settings(config), config.data.text_length,
                                  config.seed)


def image_code_log_likelihood(model: LM, params, vocab: early_fusion.ImageVocabulary,
                              prompt: jax.Array, prompt_lengths: jax.Array,
                              codes: jax.Array) -> jax.Array:
    """log p(codes | prompt): the sum of the T image-code log-likelihoods [N] after each row's
    prompt (BOS text <boi>, int32 [N, Q], pad-padded on the right, prompt_lengths [N] real
    tokens); codes int32 [N, T] in 0..K-1. The codes follow the prompt directly (as in a
    caption-first document) and are scored under the full softmax: the model's own joint
    probability, not one renormalised over the codes."""
    code_logits, targets = teacher_forced_code_logits(model, params, vocab, prompt,
                                                      prompt_lengths, codes)
    return jnp.sum(generative.token_log_probs(code_logits, targets), axis=-1)


def teacher_forced_code_logits(model: LM, params, vocab: early_fusion.ImageVocabulary,
                               prompt: jax.Array, prompt_lengths: jax.Array,
                               codes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logits [N, T, V] predicting each code, the codes' ids [N, T]) of prompt (BOS text <boi>
    or BOS <boi>, int32 [N, Q], pad-padded, prompt_lengths [N]) followed by codes [N, T]."""
    n, num_codes = codes.shape
    padding = jnp.full((n, num_codes), vocab.pad_id, jnp.int32)
    sequence = jnp.concatenate([prompt.astype(jnp.int32), padding], axis=1)  # [N, Q + T]
    where = prompt_lengths[:, None] + jnp.arange(num_codes)  # [N, T]: the codes' positions
    rows = jnp.arange(n)[:, None]
    sequence = sequence.at[rows, where].set(codes.astype(jnp.int32) + vocab.code_offset)
    inputs = sequence[:, :-1]
    logits = model.apply({"params": params}, inputs, valid=inputs != vocab.pad_id)
    # Code j is predicted at position where - 1; gathered in code order, so every row sums its
    # T terms in the same order (a text-blind model gives bitwise-equal scores).
    return logits[rows, where - 1], sequence[rows, where]  # [N, T, V], [N, T]


def caption_kl(model: LM, params, vocab: early_fusion.ImageVocabulary, prompt: jax.Array,
               prompt_lengths: jax.Array, codes: jax.Array) -> jax.Array:
    """KL(p(. | BOS text <boi> codes<t>) || p(. | BOS <boi> codes<t>)) of the next-code
    distributions (both renormalised over the K codes, as the sampler draws them), teacher-forced
    on codes [N, T], in nats a code: [N, T]. Zero everywhere when the caption is ignored; the
    measure of whether there is anything for guidance to amplify."""
    n = codes.shape[0]
    unconditional = jnp.tile(jnp.array([[vocab.bos_id, vocab.boi_id]], jnp.int32), (n, 1))
    def code_log_probs(prefix, lengths):
        logits, _ = teacher_forced_code_logits(model, params, vocab, prefix, lengths, codes)
        logits = logits[..., vocab.code_offset:vocab.code_offset + vocab.codebook_size]
        return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [N, T, K]

    conditional = code_log_probs(prompt, prompt_lengths)
    unconditional = code_log_probs(unconditional, jnp.full((n,), 2, jnp.int32))
    return jnp.sum(jnp.exp(conditional) * (conditional - unconditional), axis=-1)


PROMPT_BUCKET = 16  # prompt widths round up to this, so a jitted scorer compiles a few times


def image_prompts(tokenizer, vocab: early_fusion.ImageVocabulary, texts: Sequence[str],
                  max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt int32 [N, Q], lengths int32 [N]): BOS text <boi> per text, pad-padded to the
    longest rounded up to PROMPT_BUCKET; a prompt longer than max_length is refused."""
    rows = [[vocab.bos_id, *tokenizer.text_ids(text), vocab.boi_id] for text in texts]
    longest = max(len(row) for row in rows)
    if longest > max_length:
        raise ValueError(f"a prompt of {longest} tokens does not fit before the image codes "
                         f"(at most {max_length}: data.text_length - data.image_tokens - 1); "
                         "shorten the text or raise data.text_length")
    width = min(-(-longest // PROMPT_BUCKET) * PROMPT_BUCKET, max_length)
    prompt = np.full((len(rows), width), vocab.pad_id, np.int32)
    for i, row in enumerate(rows):
        prompt[i, :len(row)] = row
    return prompt, np.array([len(row) for row in rows], np.int32)


def make_image_likelihood(model: LM, params, tokenizer, mesh,
                          config: ml_collections.ConfigDict, image_tokenizer) -> ImageLikelihood:
    """The image-likelihood evals' ImageLikelihood: log p(VQ codes of image i | BOS text i
    <boi>), one jitted forward (VQ encoder and LM) per chunk of (image, text) rows."""
    vocab = early_fusion.image_vocabulary(tokenizer, image_tokenizer.codebook_size)
    max_length = config.data.text_length - image_tokenizer.num_codes - 1

    def score(p, images, prompt, lengths):
        codes = vq.tokenize(image_tokenizer.model, image_tokenizer.params, images)  # [N, T]
        return image_code_log_likelihood(model, p, vocab, prompt, lengths, codes)

    scored = serving.host_function(score, mesh)

    def log_likelihood(images: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        prompt, lengths = image_prompts(tokenizer, vocab, list(texts), max_length)
        return scored(params, images, prompt, lengths)

    return ImageLikelihood(log_likelihood=log_likelihood)


@functools.partial(jax.jit, static_argnums=(0, 2, 5, 6, 7))
def sample_codes(model: LM, params, vocab: early_fusion.ImageVocabulary,
                 conditional: jax.Array, unconditional: jax.Array, num_codes: int,
                 guidance_scale: float, temperature: float, rng: jax.Array) -> jax.Array:
    """Image codes int32 [B, num_codes] (0..K-1) after prompts conditional [B, P] and
    unconditional [B, Q] (both unpadded, ending in <boi>).

    Each step mixes the two streams' next-token logits by `early_fusion.guided_logits` (scale 1:
    the conditional logits alone, the unconditional stream is not run), restricts them to the
    image codes and samples at `temperature` (0: argmax); the chosen code feeds both streams.
    """
    guided = guidance_scale != 1.0

    def start(prompt):
        logits, cache = lm_generation.prefill(model, params, prompt, prompt.shape[1] + num_codes)
        return logits[:, -1], cache, lm_generation.lm_step_fn(model, params, prompt.shape[1])

    logits_c, cache_c, step_c = start(conditional)
    logits_u, cache_u, step_u = start(unconditional) if guided else (logits_c, None, None)

    def body(carry, key):
        logits_c, logits_u, cache_c, cache_u, position = carry
        logits = (early_fusion.guided_logits(logits_c, logits_u, guidance_scale) if guided
                  else logits_c)
        logits = early_fusion.restrict_to_codes(logits, vocab)
        token = (jnp.argmax(logits, -1) if temperature == 0 else
                 jax.random.categorical(key, logits / temperature, -1)).astype(jnp.int32)
        logits_c, cache_c = step_c(cache_c, token, position)
        if guided:
            logits_u, cache_u = step_u(cache_u, token, position)
        return (logits_c, logits_u, cache_c, cache_u, position + 1), token

    keys = jax.random.split(rng, num_codes)
    _, tokens = jax.lax.scan(body, (logits_c, logits_u, cache_c, cache_u, jnp.int32(0)), keys)
    return tokens.T - vocab.code_offset  # [B, num_codes]


@dataclasses.dataclass(frozen=True)
class ImageSampling:
    """How text_to_image samples: per prompt `samples` images at `temperature`, guidance
    scale `guidance_scale` (1: none)."""

    samples: int = 4
    guidance_scale: float = 3.0
    temperature: float = 1.0
    seed: int = 0


def text_to_image(model: LM, params, tokenizer, image_tokenizer, prompts: Sequence[str],
                  sampling: ImageSampling) -> np.ndarray:
    """uint8 images [len(prompts), samples, S, S, 3] generated from each prompt."""
    vocab = early_fusion.image_vocabulary(tokenizer, image_tokenizer.codebook_size)
    unconditional = np.tile([[vocab.bos_id, vocab.boi_id]], (sampling.samples, 1))
    rng = jax.random.PRNGKey(sampling.seed)
    out = []
    for k, prompt in enumerate(prompts):
        row = [vocab.bos_id, *tokenizer.text_ids(prompt), vocab.boi_id]
        conditional = np.tile([row], (sampling.samples, 1)).astype(np.int32)
        codes = sample_codes(model, params, vocab, jnp.asarray(conditional),
                             jnp.asarray(unconditional, jnp.int32), image_tokenizer.num_codes,
                             float(sampling.guidance_scale), float(sampling.temperature),
                             jax.random.fold_in(rng, k))
        out.append(image_tokenizer.detokenize(np.asarray(codes)))
    return np.stack(out)


def main(argv=None) -> dict:
    from vlm_jax import pictures, restore
    from vlm_jax.evals import text_to_image as t2i_eval

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="an early-fusion run")
    parser.add_argument("--prompts", type=int, default=6, help="fixed one-object world prompts")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--clipscore_workdir", default="", help="a contrastive run (judge)")
    args = parser.parse_args(argv)
    run = restore.restore_run(args.workdir)
    image_tokenizer = load_image_tokenizer(run.config)
    judge = restore.restore_run(args.clipscore_workdir).scorer() if args.clipscore_workdir \
        else None
    results, rows, all_prompts = {}, [], []
    # Seen colour-shape pairs, then the held-out pairs never captioned in training.
    for prompt_set, heldout in (("seen", False), ("heldout", True)):
        prompts, colours = t2i_eval.colour_prompts(args.prompts, image_tokenizer.image_size,
                                                   heldout=heldout)
        set_rows = [[] for _ in prompts]
        for name, scale in (("no_guidance", 1.0), (f"guidance_{args.guidance:g}", args.guidance)):
            sampling = ImageSampling(args.samples, scale, args.temperature)
            images = text_to_image(run.model, run.params, run.tokenizer, image_tokenizer,
                                   prompts, sampling)
            for k in range(len(prompts)):
                set_rows[k] += list(images[k])
            results[f"{prompt_set}/{name}"] = t2i_eval.score_generated(images, prompts, colours,
                                                                       judge)
        rows += set_rows
        all_prompts += prompts
    path = os.path.join(args.workdir, "text_to_image.png")
    pictures.save_image_grid(path, rows)
    report = {"prompts": all_prompts, "results": results, "grid": path}
    with open(os.path.join(args.workdir, "text_to_image.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
