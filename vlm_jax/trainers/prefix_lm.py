"""Training VLMs on a pretrained LM (Frozen, LLaVA stages 1 and 2, BLIP-2 stage 2, MiniGPT-4):
next-token cross-entropy on the supervised tokens of one causal sequence, image embeddings at
its placeholders.

The sequence of a batch, by `data.format`:
  caption    (Frozen, LLaVA stage 1, BLIP-2 stage 2, MiniGPT-4 stage 1): BOS <image>*N caption
             EOS; loss on caption + EOS;
  prefix_lm  (LLaVA stage 2, MiniGPT-4 stage 2): the chat template, BOS "user:" <image>*N
             question "assistant:" answer EOS (multi-turn with data.chat_turns); loss on each
             answer + its EOS (mask_loss), never on the instructions or role markers (LLaVA's
             rule).
N = the model's image tokens per image (Frozen's n prefix embeddings, LLaVA's patches, the
Q-Former's queries).
The loss is the token mean over the batch (HF / LLaVA), position t predicting token t + 1.
What trains is `optim.param_rules`: a frozen LM costs its forward and its activation gradients
only (no weight gradients, no optimizer state).

As a captioner (the generative evals, `python -m vlm_jax.generate`) prompts are laid out the
same way: a prompt is a text with "<image>" markers (one per image; each expands to N
placeholders), the user turn of a chat model, continued by decoding or scored as the answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm_jax import generation, serving
from vlm_jax.data import formats
from vlm_jax.evals.caption_model import CaptionModel
from vlm_jax.losses import generative
from vlm_jax.models import sizes
from vlm_jax.models.prefix_vlm import PrefixVLM

CAPABILITIES = frozenset({"captioner"})
IMAGE_MARKER = "<image>"  # a prompt's image; the data's placeholder token too
FORMATS = ("caption", "prefix_lm")
_LENGTH_MULTIPLE = 16  # host-built sequences are padded to this: few distinct jit shapes


def num_image_tokens(config: ml_collections.ConfigDict) -> int:
    """Placeholders per image: Frozen's prefix size, the Q-Former's query count (BLIP-2
    stage 2, MiniGPT-4), or LLaVA's patch count at data.image_size."""
    connector = config.model.get("connector", "patches")
    if connector == "prefix":
        return config.model.num_prefix_tokens
    if connector == "qformer":
        return config.model.qformer.num_queries
    patch = sizes.tower_kwargs(config.model.image)["patch_size"]
    return (config.data.image_size // patch) ** 2


def data_format(config: ml_collections.ConfigDict) -> str:
    """The one batch format of the run (caption or prefix_lm), checked."""
    mixture = formats.mixture_of(config.data)
    if len(mixture) != 1 or mixture[0][0] not in FORMATS:
        raise ValueError(f"trainer {config.trainer!r} trains on one data.format of {FORMATS}; "
                         f"got {mixture}")
    return mixture[0][0]


def sequence_length(config: ml_collections.ConfigDict) -> int:
    """The model's input length in training: BOS + N + caption, or the chat sequence (whose
    data.text_length already holds the placeholders), less the last token."""
    if data_format(config) == "caption":
        return num_image_tokens(config) + config.data.text_length
    return config.data.text_length - 1


def init_batch(config: ml_collections.ConfigDict) -> dict:
    """One image and one training sequence (BOS + N placeholders + text, the last dropped)."""
    size = config.data.image_size
    return {"images": np.zeros((1, size, size, 3), np.uint8),
            "tokens": np.zeros((1, sequence_length(config)), np.int32)}


def training_sequence(batch: dict, image_tokens: int, bos_id: int, image_id: int,
                      pad_id: int) -> tuple[jax.Array, jax.Array]:
    """(tokens [B, T], weights [B, T]) of a batch: weights[:, t] > 0 where token t is a target."""
    if "mask_loss" in batch:  # prefix_lm: the chat sequence as the data built it
        return batch["text_tokens"], batch["mask_loss"]
    text = batch["text_tokens"]  # caption EOS padding [B, L]
    rows = text.shape[0]
    head = jnp.concatenate([jnp.full((rows, 1), bos_id, text.dtype),
                            jnp.full((rows, image_tokens), image_id, text.dtype)], axis=1)
    weights = jnp.concatenate([jnp.zeros_like(head), (text != pad_id).astype(text.dtype)], 1)
    return jnp.concatenate([head, text], axis=1), weights


def supervised_targets(tokens: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(targets [B, T-1], supervised bool [B, T-1]): position t predicts token t + 1. Targets
    that are not supervised become 0: a placeholder may lie outside the LM's vocabulary, and
    a log-prob read out of range is NaN even where its weight is 0."""
    supervised = weights[:, 1:] > 0
    return jnp.where(supervised, tokens[:, 1:], 0), supervised


def _check_model(model: PrefixVLM, config: ml_collections.ConfigDict) -> int:
    image_tokens = num_image_tokens(config)
    if model.num_image_tokens(config.data.image_size) != image_tokens:
        raise ValueError(f"the model has {model.num_image_tokens(config.data.image_size)} image "
                         f"tokens per image, the config {image_tokens}")
    if data_format(config) == "prefix_lm" and config.data.prompt_image_tokens != image_tokens:
        raise ValueError(
            f"data.prompt_image_tokens={config.data.prompt_image_tokens} must equal the model's "
            f"{image_tokens} image tokens per image (the chat sequence holds one placeholder "
            "per image embedding); set data.prompt_image_tokens accordingly")
    return image_tokens


def make_loss_fn(model: PrefixVLM, config: ml_collections.ConfigDict, mesh=None):
    """loss_fn(params, batch, rng) -> (loss, metrics): the supervised tokens' cross-entropy."""
    del mesh  # plain GSPMD: the batch is sharded, the loss is a mean
    image_tokens = _check_model(model, config)

    def loss_fn(params, batch, rng):
        del rng  # no dropout
        tokens, weights = training_sequence(batch, image_tokens, model.bos_id,
                                            model.image_token_id, model.pad_id)
        logits = model.apply({"params": params}, batch["image"], tokens[:, :-1])
        targets, supervised = supervised_targets(tokens, weights)
        loss, metrics = generative.caption_loss(logits, targets, supervised)
        return loss, {**metrics, "loss": loss}

    return loss_fn


@dataclasses.dataclass(frozen=True)
class PromptLayout:
    """Host-side token layout of prompts and scored continuations, as the run trained.

    A prompt's "<image>" markers expand to N placeholders each; without a marker the image
    comes first. caption format: BOS prompt continuation EOS; prefix_lm: the chat template,
    prompt in the user turn, continuation as the answer.
    """

    tokenizer: object
    image_tokens: int
    chat: bool
    caption_prompt: str  # what a chat model is asked to caption

    def expand(self, prompt: str) -> str:
        if IMAGE_MARKER not in prompt:
            prompt = IMAGE_MARKER + prompt
        return prompt.replace(IMAGE_MARKER, IMAGE_MARKER * self.image_tokens)

    def prompt_ids(self, prompt: str) -> list[int]:
        """The ids decoding forces after BOS: the prompt, then (chat) the assistant marker."""
        if self.chat:
            # Everything before the answer's first supervised token (a one-word stand-in
            # answer: the template's layout after it is no concern here).
            ids, loss = self.tokenizer.apply_chat_template(
                [("user", self.expand(prompt)), ("assistant", "yes")])
            ids = ids[: loss.index(1)]
            return ids[1:] if ids[:1] == [self.tokenizer.bos_id] else ids  # decoding feeds BOS
        return self.tokenizer.text_ids(self.expand(prompt))

    def scored_ids(self, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
        """(ids, weights) of BOS + prompt + continuation + EOS; weights 1 on continuation + EOS."""
        if self.chat:
            return self.tokenizer.apply_chat_template(
                [("user", self.expand(prompt)), ("assistant", continuation)])
        head = [self.tokenizer.bos_id] + self.tokenizer.text_ids(self.expand(prompt))
        tail = self.tokenizer.text_ids(continuation) + [self.tokenizer.eos_id]
        return head + tail, [0] * len(head) + [1] * len(tail)

    @property
    def caption_request(self) -> str:
        """The prompt of a plain caption: the image alone, or the chat model's caption prompt."""
        return IMAGE_MARKER + (self.caption_prompt if self.chat else "")


def pack(rows: Sequence[list[int]], pad_id: int, minimum: int = 1) -> np.ndarray:
    """int32 [N, L] right-padded; L is the longest row (or `minimum`) rounded up to 16."""
    longest = max([minimum, *map(len, rows)])
    length = -(-longest // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE
    out = np.full((len(rows), length), pad_id, np.int32)
    for out_row, row in zip(out, rows, strict=True):
        out_row[: len(row)] = row
    return out


def make_captioner(model: PrefixVLM, params, tokenizer, mesh,
                   config: ml_collections.ConfigDict) -> CaptionModel:
    """Captions, prompted answers and likelihoods of the trained model, decoded as
    `config.decode` says (max_len: new tokens after the prompt; sampling seeded by
    config.seed)."""
    if (tokenizer.bos_id, tokenizer.pad_id) != (model.bos_id, model.pad_id) or tokenizer.bos_id < 0:
        raise ValueError(
            f"tokenizer {tokenizer.path} has bos_id={tokenizer.bos_id}, pad_id={tokenizer.pad_id} "
            f"but the model was built with bos_id={model.bos_id}, pad_id={model.pad_id}; set "
            "config.model.bos_id / pad_id to the tokenizer's (a BOS is needed)")
    image_tokens = _check_model(model, config)
    layout = PromptLayout(tokenizer, image_tokens, data_format(config) == "prefix_lm",
                          config.data.caption_prompt)
    settings = serving.decode_settings(config)
    rng = jax.random.PRNGKey(config.seed)
    score = serving.host_function(
        lambda p, images, tokens, weights: generation.prefix_log_likelihood(
            model, p, images, tokens, weights), mesh)
    decoders = {}  # prompt length -> host function decoding it (settings are static)

    def decode(images: np.ndarray, prompt: np.ndarray) -> np.ndarray:
        length = prompt.shape[1]
        if length not in decoders:
            total = dataclasses.replace(settings, max_len=length + settings.max_len)
            decoders[length] = serving.host_function(
                lambda p, images, prompt: generation.prefix_generate(
                    model, p, images, total, eos_id=tokenizer.eos_id, prompt=prompt, rng=rng)[0],
                mesh)
        return decoders[length](params, images, prompt)

    def generate(images: np.ndarray, prompts: Sequence[str] | None = None) -> list[str]:
        if prompts is None:
            prompts = [layout.caption_request] * len(images)
        rows = [layout.prompt_ids(prompt) for prompt in prompts]
        prompt = pack(rows, tokenizer.pad_id)
        tokens = decode(np.asarray(images), prompt)
        lengths = np.array([len(row) for row in rows])
        # The decode length covers the longest (padded) prompt; each row keeps max_len new tokens.
        new_tokens = serving.strip_prompts(tokens, lengths, tokenizer.pad_id)[:, :settings.max_len]
        return tokenizer.decode(new_tokens)

    def prompted_log_likelihood(images: np.ndarray, prompts: Sequence[str],
                                continuations: Sequence[str]) -> np.ndarray:
        rows = [layout.scored_ids(p, c) for p, c in zip(prompts, continuations, strict=True)]
        tokens = pack([ids for ids, _ in rows], tokenizer.pad_id)
        weights = pack([loss for _, loss in rows], 0, tokens.shape[1])
        return score(params, np.asarray(images), tokens, weights)

    def log_likelihood(images: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        images = np.asarray(images)[:, None]  # one image per text
        return prompted_log_likelihood(images, [layout.caption_request] * len(texts), texts)

    return CaptionModel(generate=generate, log_likelihood=log_likelihood,
                        prompted_log_likelihood=prompted_log_likelihood)
