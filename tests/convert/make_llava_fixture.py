"""Make the golden fixture of the LLaVA parity test with `transformers` (torch, CPU).

    python tests/convert/make_llava_fixture.py [OUT_DIR]      (default: tests/fixtures)

Writes OUT_DIR/llava_tiny/: a tiny random `LlavaForConditionalGeneration` (CLIP vision tower
with quick_gelu and pre_layrnorm, Linear-GELU-Linear projector, Llama with grouped-query
attention) written by save_pretrained, and expected.npz: fixed pixel_values [B, 3, S, S], the
input_ids [B, T] (each row holding IMAGE_TOKENS copies of the image token, already expanded as
LLaVA's processor expands `<image>`) and the logits [B, T, V] at every position. Never touches
a hub. The live parity test imports this file to build the same kind of reference on the fly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

IMAGE_SIZE, PATCH, VISION_WIDTH, VISION_LAYERS, VISION_HEADS, VISION_MLP = 32, 8, 32, 3, 4, 48
VOCAB, WIDTH, LAYERS, HEADS, KV_HEADS, MLP = 64, 32, 2, 4, 2, 48
IMAGE_TOKEN = VOCAB - 1  # inside the LM's vocabulary, as llava-hf checkpoints have it
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # 16: one per patch, CLS dropped
BOS, BATCH, TEXT = 1, 2, 6  # TEXT: text tokens per row besides the image tokens


def tiny_llava(seed: int = 0) -> transformers.LlavaForConditionalGeneration:
    vision = transformers.CLIPVisionConfig(
        hidden_size=VISION_WIDTH, intermediate_size=VISION_MLP,
        num_hidden_layers=VISION_LAYERS, num_attention_heads=VISION_HEADS,
        image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
        rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=BOS,
        eos_token_id=2, pad_token_id=0)
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
        image_seq_length=IMAGE_TOKENS, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every parameter random (norm scales near 1): nothing can hide
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm = "norm" in name or "layrnorm" in name
            param.copy_(1.0 + 0.2 * noise if is_norm else 0.2 * noise)
    return model


def tiny_inputs(seed: int = 1) -> dict[str, np.ndarray]:
    """pixel_values [B, 3, S, S] (normalised floats, as CLIP's processor gives) and input_ids
    [B, T]: row 0 has the image right after BOS, row 1 inside the text (a chat turn)."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    words = rng.integers(3, IMAGE_TOKEN, (BATCH, TEXT))  # never BOS/EOS/pad or the image token
    image = [IMAGE_TOKEN] * IMAGE_TOKENS
    rows = [[BOS, *image, *words[0, 1:]], [BOS, *words[1, :2], *image, *words[1, 2:-1]]]
    return {"pixel_values": pixels, "input_ids": np.array(rows, np.int64)}


def tiny_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(inputs["input_ids"]),
                    pixel_values=torch.from_numpy(inputs["pixel_values"]))
    return out.logits.float().numpy()


def main(out_dir: Path) -> None:
    model, inputs = tiny_llava(), tiny_inputs()
    directory = out_dir / "llava_tiny"
    model.save_pretrained(directory)
    np.savez(directory / "expected.npz", **inputs, logits=tiny_logits(model, inputs))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "fixtures")
