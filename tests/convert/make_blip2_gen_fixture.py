"""Make the golden fixture of the BLIP-2 stage-2 parity test with `transformers` (torch, CPU).

    /work/oracle-venv/bin/python tests/convert/make_blip2_gen_fixture.py [OUT_DIR]
                                                                (default: tests/fixtures)

Writes OUT_DIR/blip2_gen_tiny/: a tiny random `Blip2ForConditionalGeneration` (BLIP-2 ViT with
CLS and fused qkv, 2 layers; Q-Former 32 wide, 3 layers with cross-attention every other one,
4 queries, no text input; language_projection 32 -> 40; a Llama LM 40 wide with grouped-query
attention, 4 heads over 2 key/value heads) written by save_pretrained, and expected.npz: fixed
pixel_values [B, 3, S, S], input_ids [B, T], and what transformers computes on them:
  query_hidden  [B, Q, 32]  the Q-Former's last hidden state (query outputs)
  projected     [B, Q, 40]  language_projection of those (the LM-width soft prompt)
  logits        [B, T, V]   the LM's logits at every position

How the queries enter the LM: transformers 5 replaces the embeddings at the positions where
input_ids holds `image_token_index` (masked_scatter, in order) with the projected queries; it
prepends nothing. Blip2Processor writes num_query_tokens image tokens before BOS, so row 0 is
[IMG]*Q BOS text; row 1 holds them inside the text. Our prefix_vlm replaces the k-th
placeholder of a row by the k-th image embedding, so both models see the same sequence.
Never touches a hub. The live parity test imports this file to build the same kind of model.
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

IMAGE_SIZE, PATCH, VISION_WIDTH, VISION_LAYERS, VISION_HEADS, VISION_MLP = 32, 8, 24, 2, 4, 40
QFORMER_WIDTH, QFORMER_LAYERS, QFORMER_HEADS, QFORMER_MLP, QUERIES = 32, 3, 4, 48, 4
VOCAB, WIDTH, LAYERS, HEADS, KV_HEADS, MLP = 64, 40, 2, 4, 2, 56
IMAGE_TOKEN = VOCAB - 1  # inside the LM's vocabulary, as Salesforce/blip2-* checkpoints have it
BOS, BATCH, TEXT = 1, 2, 6  # TEXT: text tokens per row besides the image tokens (BOS included)


def tiny_blip2(seed: int = 0) -> transformers.Blip2ForConditionalGeneration:
    vision = dict(hidden_size=VISION_WIDTH, intermediate_size=VISION_MLP,
                  num_hidden_layers=VISION_LAYERS, num_attention_heads=VISION_HEADS,
                  image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="gelu",
                  layer_norm_eps=1e-5, qkv_bias=True, attention_dropout=0.0)
    qformer = dict(hidden_size=QFORMER_WIDTH, num_hidden_layers=QFORMER_LAYERS,
                   num_attention_heads=QFORMER_HEADS, intermediate_size=QFORMER_MLP,
                   hidden_act="gelu", cross_attention_frequency=2,
                   encoder_hidden_size=VISION_WIDTH, max_position_embeddings=16,
                   layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0, use_qformer_text_input=False)
    text = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
        rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=BOS,
        eos_token_id=2, pad_token_id=0)
    config = transformers.Blip2Config(
        vision_config=vision, qformer_config=qformer, text_config=text.to_dict(),
        num_query_tokens=QUERIES, image_token_index=IMAGE_TOKEN, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.Blip2ForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every parameter random (norm scales near 1): nothing can hide
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm = "norm" in name.lower() and name.endswith("weight")
            param.copy_(1.0 + 0.2 * noise if is_norm else 0.2 * noise)
    return model


def tiny_inputs(seed: int = 1) -> dict[str, np.ndarray]:
    """pixel_values [B, 3, S, S] (normalised floats, as BLIP's processor gives) and input_ids
    [B, Q + TEXT]: row 0 as Blip2Processor lays it out (image tokens, then BOS and the text),
    row 1 with the image tokens inside the text."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(size=(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    words = rng.integers(3, IMAGE_TOKEN, (BATCH, TEXT))  # never BOS/EOS/pad or the image token
    image = [IMAGE_TOKEN] * QUERIES
    rows = [[*image, BOS, *words[0, 1:]], [BOS, *words[1, 1:3], *image, *words[1, 3:]]]
    return {"pixel_values": pixels, "input_ids": np.array(rows, np.int64)}


def tiny_outputs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    pixels = torch.from_numpy(inputs["pixel_values"])
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels, return_dict=True)
        logits = model(pixel_values=pixels,
                       input_ids=torch.from_numpy(inputs["input_ids"])).logits
    return {"query_hidden": features.qformer_outputs.last_hidden_state.float().numpy(),
            "projected": features.pooler_output.float().numpy(),
            "logits": logits.float().numpy()}


def main(out_dir: Path) -> None:
    model, inputs = tiny_blip2(), tiny_inputs()
    directory = out_dir / "blip2_gen_tiny"
    model.save_pretrained(directory)
    expected = tiny_outputs(model, inputs)
    np.savez(directory / "expected.npz", **inputs, **expected)
    print(transformers.__version__, {name: value.shape for name, value in expected.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "fixtures")
