"""A trained model served to the evals from the host: NumPy in and out, rows over the mesh.

What every family's `make_scorer` / `make_captioner` is built from, so a new family only says
which of its methods embed, caption or score a caption:
  - `host_function`: a jitted `fn(params, *arrays)` whose arrays' rows are split over the
    batch axes, for any row count;
  - `make_scorer`: a `Scorer` from a model's `encode_image` / `encode_text` methods;
  - `make_captioner`: a `CaptionModel` from a token-level generate and log-likelihood;
  - `make_matcher`: a `Matcher` from a model's ITM logit of aligned (image, text) rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlm_jax import decoding, parallel
from vlm_jax.evals.caption_model import CaptionModel
from vlm_jax.evals.matching import Matcher
from vlm_jax.evals.scoring import Scorer, cosine_similarity


def host_function(fn: Callable, mesh: Mesh) -> Callable[..., np.ndarray]:
    """`fn(params, *arrays)` under jit with every array's rows split over the batch axes.

    Every process passes the same full arrays (e.g. an eval chunk) and gets the full result
    back. Rows are padded (repeating the last) to a multiple of the batch shards and the
    padding is trimmed from the result, so any row count works.
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


def make_scorer(model, params, tokenizer, mesh: Mesh, text_length: int,
                similarity: Callable | None = None) -> Scorer:
    """The Scorer of a model with `encode_image(images)` and `encode_text(tokens)` methods
    (each returning (embeddings, extras)); `similarity` defaults to the cosine."""
    encode_image = host_function(
        lambda p, images: model.apply({"params": p}, images, method=model.encode_image)[0], mesh)
    encode_text = host_function(
        lambda p, tokens: model.apply({"params": p}, tokens, method=model.encode_text)[0], mesh)
    return Scorer(
        encode_images=lambda images: encode_image(params, images),
        encode_texts=lambda tokens: encode_text(params, tokens),
        tokenize=lambda texts: tokenizer.encode(list(texts), text_length),
        similarity=similarity or cosine_similarity,
    )


# match_logits(params, images uint8 [N, S, S, 3], text_tokens int32 [N, L]) -> ITM logit [N]
MatchLogits = Callable[..., jax.Array]


def make_matcher(match_logits: MatchLogits, params, tokenizer, mesh: Mesh,
                 text_length: int) -> Matcher:
    """The Matcher of a model whose `match_logits` (jit-traceable) scores image i with text i;
    texts are tokenized to `text_length` as the Scorer's are."""
    match = host_function(match_logits, mesh)
    return Matcher(
        match=lambda images, tokens: match(params, images, tokens),
        tokenize=lambda texts: tokenizer.encode(list(texts), text_length),
    )


def decode_settings(config: ml_collections.ConfigDict) -> decoding.DecodeSettings:
    """`config.decode` as DecodeSettings; max_len 0 means the training text length."""
    fields = dict(config.decode.to_dict())
    fields["max_len"] = fields["max_len"] or config.data.text_length
    return decoding.DecodeSettings(**fields)


# generate_tokens(params, images, settings, rng, prompt tokens or None) -> int32 [N, max_len]
GenerateTokens = Callable[..., jax.Array]
# token_log_likelihood(params, images, text_tokens [N, L]) -> float [N]
TokenLogLikelihood = Callable[..., jax.Array]


def make_captioner(generate_tokens: GenerateTokens, token_log_likelihood: TokenLogLikelihood,
                   params, tokenizer, mesh: Mesh, settings: decoding.DecodeSettings,
                   text_length: int, seed: int = 0) -> CaptionModel:
    """The CaptionModel of a generative model given at the level of tokens (both functions are
    jit-traceable): captions decoded with `settings`, texts tokenized with `tokenizer`.

    `generate(images, prompts=None)`: with prompts, each prompt's tokens (without the EOS that
    would end them) are forced first and the texts returned are what the model adds after it.
    """
    log_likelihood = host_function(token_log_likelihood, mesh)
    rng = jax.random.PRNGKey(seed)
    plain = host_function(
        lambda p, images: generate_tokens(p, images, settings, rng, None), mesh)
    prompted = host_function(
        lambda p, images, prompt: generate_tokens(p, images, settings, rng, prompt), mesh)

    def generate(images: np.ndarray, prompts: Sequence[str] | None = None) -> list[str]:
        if prompts is None:
            return tokenizer.decode(plain(params, images))
        prompt = tokenizer.encode(list(prompts), settings.max_len)
        prompt[prompt == tokenizer.eos_id] = tokenizer.pad_id
        tokens = prompted(params, images, prompt)
        lengths = np.sum(prompt != tokenizer.pad_id, axis=1)
        return tokenizer.decode(strip_prompts(tokens, lengths, tokenizer.pad_id))

    return CaptionModel(
        generate=generate,
        log_likelihood=lambda images, texts: log_likelihood(
            params, images, tokenizer.encode(list(texts), text_length)),
    )


def strip_prompts(tokens: np.ndarray, prompt_lengths: np.ndarray, pad_id: int) -> np.ndarray:
    """Each row's tokens after its prompt, moved to the front and padded at the end."""
    out = np.full_like(tokens, pad_id)
    for row, (sequence, length) in enumerate(zip(tokens, prompt_lengths, strict=True)):
        out[row, : len(sequence) - length] = sequence[length:]
    return out
