"""Batch formats: what one training example becomes, by `data.format` (or `data.mixture`).

Every format gives fixed-shape arrays per example (L = data.text_length, M = data.max_images,
T = data.image_tokens, S = data.image_size):

  caption      image uint8 [S, S, 3], text_tokens int32 [L] (caption, EOS, padding)
  prefix_lm    image, text_tokens [L] = the tokenizer's chat template of (user: question,
               assistant: answer): BOS "user:" question "assistant:" answer EOS (with
               data.chat_turns K > 1, up to K such turns about the same image; with
               data.prompt_image_tokens P > 0, P "<image>" placeholders open the first user
               turn, where LLaVA puts the image: BOS "user:" <image>*P question ...); mask_ar int32
               [L] (0 on the prefix, 1 on answer + EOS and on padding: PaliGemma's rule, token
               i sees j iff cumsum(mask_ar)[j] <= cumsum(mask_ar)[i] with the image tokens
               prepended at 0), mask_loss int32 [L] (1 on the answer and its EOS only),
               text_mask bool [L] (not padding)
  interleaved  images uint8 [M, S, S, 3], image_valid bool [M], image_positions int32 [M]
               (index in text_tokens of image m's first placeholder, -1 if none), text_tokens
               [L] = BOS (<boi> <image>*T <eoi> caption_m)* closing EOS, mask_ar (1 on text and
               <boi>, 0 on the placeholders and <eoi>: each image is one bidirectional block,
               text is causal), mask_loss (1 on text spans and EOS), text_mask, segment_ids
               int32 [L] (1 + the span's number: spans are image 0, caption 0, image 1, ...,
               closing; BOS joins the first span, EOS the last; 0 on padding)
  image_only   image
  text_only    text_tokens (the caption)
  qa_text      prefix_lm's sequence arrays without the image: the chat template of the
               example's (question, answer) as text alone (a language model's QA text)

A mixture (data.mixture = (("caption", 0.7), ("prefix_lm", 0.3))) gives every example the union
of its formats' keys, the absent ones at their fill value (zeros; text_tokens at pad_id;
mask_ar 1; image_positions -1), plus format_id int32 (the index into FORMATS). One batch
structure for every step, so the train step is traced once; each example's format is drawn from
(seed, position), so ratios hold per example and any process count sees the same formats.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np

FORMATS = ("caption", "prefix_lm", "interleaved", "image_only", "text_only", "qa_text")
QA_FORMATS = ("prefix_lm", "qa_text")  # the formats built from the example's (question, answer)
SEQUENCE_KEYS = ("text_tokens", "mask_ar", "mask_loss", "text_mask")
FORMAT_KEYS = {
    "caption": ("image", "text_tokens"),
    "prefix_lm": ("image", *SEQUENCE_KEYS),
    "interleaved": ("images", "image_valid", "image_positions", *SEQUENCE_KEYS, "segment_ids"),
    "image_only": ("image",),
    "text_only": ("text_tokens",),
    "qa_text": SEQUENCE_KEYS,
}
_FORMAT_STREAM = 21  # the rng stream of the per-example format draw


def mixture_of(data_config: ml_collections.ConfigDict) -> tuple[tuple[str, float], ...]:
    """The (format, weight) pairs of a config: data.mixture, or data.format alone; checked."""
    mixture = tuple((str(name), float(weight)) for name, weight in data_config.get("mixture", ()))
    if not mixture:
        mixture = ((data_config.get("format", "caption"), 1.0),)
    for name, weight in mixture:
        if name not in FORMATS:
            raise ValueError(f"Unknown data format {name!r} in data.format/data.mixture; choose "
                             f"from {FORMATS}.")
        if not weight > 0:
            raise ValueError(f"data.mixture weight of {name!r} is {weight}; weights must be > 0.")
    if len({name for name, _ in mixture}) != len(mixture):
        raise ValueError(f"data.mixture {mixture} names a format twice; merge the weights.")
    return mixture


def check_lengths(data_config: ml_collections.ConfigDict) -> None:
    """Interleaved documents need room for every image block plus BOS and EOS."""
    names = [name for name, _ in mixture_of(data_config)]
    if data_config.get("chat_turns", 1) < 1 or data_config.get("prompt_image_tokens", 0) < 0:
        raise ValueError(f"data.chat_turns={data_config.get('chat_turns')} must be >= 1 and "
                         f"data.prompt_image_tokens={data_config.get('prompt_image_tokens')} "
                         ">= 0.")
    if "interleaved" in names:
        if data_config.max_images < 1 or data_config.image_tokens < 1:
            raise ValueError("data.max_images and data.image_tokens must be >= 1 for "
                             "interleaved documents.")
        need = data_config.max_images * (data_config.image_tokens + 2) + 2
        if data_config.text_length < need:
            raise ValueError(
                f"data.text_length={data_config.text_length} cannot hold {data_config.max_images}"
                f" images of {data_config.image_tokens} placeholder tokens (+ <boi>/<eoi>) and "
                f"BOS/EOS ({need} tokens); raise data.text_length or lower data.max_images.")


class FormatDraw:
    """format_id of a global position: a categorical draw seeded by (seed, position)."""

    def __init__(self, mixture: Sequence[tuple[str, float]], seed: int):
        weights = np.array([w for _, w in mixture], np.float64)
        self.ids = [FORMATS.index(name) for name, _ in mixture]
        self.cdf = np.cumsum(weights / weights.sum())
        self.seed = seed

    def __call__(self, position: int) -> int:
        if len(self.ids) == 1:
            return self.ids[0]
        u = np.random.default_rng((_FORMAT_STREAM, self.seed, position)).random()
        return self.ids[min(int(np.searchsorted(self.cdf, u, side="right")), len(self.ids) - 1)]


def sequence_from(ids: list[int], ar: list[int], loss: list[int], length: int, eos_id: int,
                  pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded text_tokens/mask_ar/mask_loss/text_mask [length]; a sequence that does not
    fit keeps its first length - 1 tokens and ends with EOS (supervised, causal)."""
    if len(ids) > length:
        keep = length - 1
        ids, ar, loss = ids[:keep] + [eos_id], ar[:keep] + [1], loss[:keep] + [1]
    n = len(ids)
    tokens = np.full(length, pad_id, np.int32)
    mask_ar = np.ones(length, np.int32)  # padding is causal and comes after everything real
    mask_loss = np.zeros(length, np.int32)
    tokens[:n], mask_ar[:n], mask_loss[:n] = ids, ar, loss
    return {"text_tokens": tokens, "mask_ar": mask_ar, "mask_loss": mask_loss,
            "text_mask": np.arange(length) < n}


def chat_turns(questions: str | Sequence[str], answers: str | Sequence[str],
               image_tokens: int = 0) -> list[tuple[str, str]]:
    """The (role, text) turns of a conversation of questions and their answers (one string
    each, or equal-length sequences); `image_tokens` placeholders open the first user turn."""
    if isinstance(questions, str):
        questions, answers = [questions], [answers]
    if len(questions) != len(answers) or not questions:
        raise ValueError(f"a conversation needs as many answers as questions (>= 1); got "
                         f"{len(questions)} questions and {len(answers)} answers")
    turns = []
    for turn, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        opening = "<image>" * image_tokens if turn == 0 else ""
        turns += [("user", opening + str(question)), ("assistant", str(answer))]
    return turns


def prefix_lm_example(tokenizer, question: str | Sequence[str], answer: str | Sequence[str],
                      length: int, image_tokens: int = 0) -> dict[str, np.ndarray]:
    """The prefix-LM arrays of one (question, answer), or of a conversation of several: see
    the module docstring."""
    ids, loss = tokenizer.apply_chat_template(chat_turns(question, answer, image_tokens))
    # The supervised answer is the causal part; BOS, prompt and role markers are the prefix.
    return sequence_from(ids, list(loss), list(loss), length, tokenizer.eos_id, tokenizer.pad_id)


def interleaved_example(tokenizer, texts: Sequence[str], closing: str, num_images: int,
                        data_config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The sequence arrays of a document of `num_images` images, texts[m] after image m.

    An image block cut by truncation is dropped whole (its image marked invalid)."""
    length, max_images, per_image = (data_config.text_length, data_config.max_images,
                                     data_config.image_tokens)
    boi, placeholder, eoi = (tokenizer.token_id(t) for t in ("<boi>", "<image>", "<eoi>"))
    start = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
    ids, ar, loss, seg = list(start), [1] * len(start), [0] * len(start), [1] * len(start)
    block_starts = []
    span = 0
    for m in range(num_images):
        span += 1
        block_starts.append(len(ids))
        ids += [boi] + [placeholder] * per_image + [eoi]
        ar += [1] + [0] * (per_image + 1)
        loss += [0] * (per_image + 2)
        seg += [span] * (per_image + 2)
        span += 1
        text = tokenizer.text_ids(texts[m])
        ids, ar, loss, seg = ids + text, ar + [1] * len(text), loss + [1] * len(text), seg + [
            span] * len(text)
    if closing:
        span += 1
        text = tokenizer.text_ids(closing)
        ids, ar, loss, seg = ids + text, ar + [1] * len(text), loss + [1] * len(text), seg + [
            span] * len(text)
    ids, ar, loss, seg = ids + [tokenizer.eos_id], ar + [1], loss + [1], seg + [span]
    valid = [True] * num_images
    if len(ids) > length:
        cut = length - 1
        for m, begin in enumerate(block_starts):
            if begin + per_image + 2 > cut:  # this block (and every later one) does not fit
                cut, valid[m:] = min(cut, begin), [False] * (num_images - m)
                break
        ids = ids[:cut] + [tokenizer.eos_id]
        ar, loss, seg = ar[:cut] + [1], loss[:cut] + [1], seg[:cut] + [seg[cut - 1] if cut else 1]
    out = sequence_from(ids, ar, loss, length, tokenizer.eos_id, tokenizer.pad_id)
    segment_ids = np.zeros(length, np.int32)
    segment_ids[: len(seg)] = seg
    positions = np.full(max_images, -1, np.int32)
    image_valid = np.zeros(max_images, bool)
    for m in range(num_images):
        if valid[m]:
            positions[m], image_valid[m] = block_starts[m] + 1, True
    return {**out, "segment_ids": segment_ids, "image_positions": positions,
            "image_valid": image_valid}


def fill_values(key: str, pad_id: int):
    """The value of `key` in an example of a format that lacks it (mixtures)."""
    return {"text_tokens": pad_id, "mask_ar": 1, "image_positions": -1}.get(key, 0)


def batch_keys(formats: Sequence[str]) -> tuple[str, ...]:
    """The union of the keys of `formats`, in a fixed order."""
    return tuple(dict.fromkeys(k for name in formats for k in FORMAT_KEYS[name]))


class BuildBatch:
    """Raw loaded batch (images, strings, format_id) -> the format arrays [b, ...]."""

    def __init__(self, tokenizer, data_config: ml_collections.ConfigDict):
        self.tokenizer, self.config = tokenizer, data_config
        self.formats = [name for name, _ in mixture_of(data_config)]
        self.keys = batch_keys(self.formats)
        self.is_mixture = len(self.formats) > 1

    def __call__(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        config, tokenizer = self.config, self.tokenizer
        b, length = len(raw["format_id"]), config.text_length
        shapes = {
            "image": ((config.image_size, config.image_size, 3), np.uint8),
            "images": ((config.max_images, config.image_size, config.image_size, 3), np.uint8),
            "image_valid": ((config.max_images,), bool),
            "image_positions": ((config.max_images,), np.int32),
            "text_tokens": ((length,), np.int32), "mask_ar": ((length,), np.int32),
            "mask_loss": ((length,), np.int32), "text_mask": ((length,), bool),
            "segment_ids": ((length,), np.int32),
        }
        out = {key: np.full((b, *shapes[key][0]), fill_values(key, tokenizer.pad_id),
                            shapes[key][1]) for key in self.keys}
        format_names = [FORMATS[i] for i in raw["format_id"]]
        captions = [k for k, name in enumerate(format_names) if name in ("caption", "text_only")]
        if captions:
            out["text_tokens"][captions] = tokenizer.encode(
                [str(raw["caption"][k]) for k in captions], length)
        for k, name in enumerate(format_names):
            if "image" in FORMAT_KEYS[name]:
                out["image"][k] = raw["image"][k]
            if name in QA_FORMATS:
                questions, answers = raw["question"][k], raw["answer"][k]
                if np.ndim(questions):  # data.chat_turns > 1: [K], "" past the conversation
                    kept = [i for i, q in enumerate(questions) if str(q)]
                    questions = [str(questions[i]) for i in kept]
                    answers = [str(answers[i]) for i in kept]
                image_tokens = config.get("prompt_image_tokens", 0) if name == "prefix_lm" else 0
                row = prefix_lm_example(tokenizer, questions, answers, length, image_tokens)
            elif name == "interleaved":
                count = int(raw["doc_count"][k])
                row = interleaved_example(tokenizer, [str(t) for t in raw["doc_texts"][k]],
                                          str(raw["closing"][k]), count, config)
                out["images"][k] = raw["images"][k] * row["image_valid"][:, None, None, None]
            else:
                continue
            for key, value in row.items():
                out[key][k] = value
        if self.is_mixture:
            out["format_id"] = np.asarray(raw["format_id"], np.int32)
        out["num_corrupt"] = np.asarray(raw["num_corrupt"], np.int32)
        return out
