"""Make the golden fixture of the Chameleon parity test with `transformers` (torch, CPU).

    /work/oracle-venv/bin/python tests/convert/make_chameleon_fixture.py [OUT_DIR]
        (default: tests/fixtures/chameleon_tiny)

Two tiny random `ChameleonForConditionalGeneration`s, one per layer type (swin_norm False:
x + f(norm(x)); True: x + norm(f(x))), grouped-query heads, every parameter random (the
per-head q/k LayerNorm scales and biases included). Written per model: config.json (the text
part's settings), model.safetensors (the text transformer's tensors only: the VQ-VAE, which
has no decoder in transformers, is left out), and expected.npz: tokens and
lm_head(ChameleonModel(tokens).last_hidden_state), the transformer's logits before
ChameleonForConditionalGeneration sets the image-token columns to -inf. The live parity test
imports this file to build the same references on the fly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

VOCAB, WIDTH, LAYERS, HEADS, KV_HEADS, MLP, LENGTH, BATCH = 64, 32, 2, 4, 2, 48, 9, 2
IMAGE_TOKENS = 8  # the last 8 ids are image codes in the vocabulary map
TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "swin_norm",
             "attention_bias", "mlp_bias", "tie_word_embeddings", "rope_parameters",
             "hidden_act")


def tiny_chameleon(swin_norm: bool, seed: int = 0):
    vocabulary_map = {f"t{i}": i for i in range(VOCAB - IMAGE_TOKENS - 1)}
    vocabulary_map["<image>"] = VOCAB - IMAGE_TOKENS - 1
    vocabulary_map.update({f"IMGIMG{chr(65 + i)}Z": VOCAB - IMAGE_TOKENS + i
                           for i in range(IMAGE_TOKENS)})
    config = transformers.ChameleonConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, rms_norm_eps=1e-5,
        swin_norm=swin_norm, vocabulary_map=vocabulary_map,
        vq_config=dict(embed_dim=4, num_embeddings=IMAGE_TOKENS, latent_channels=4,
                       resolution=16, base_channels=32, channel_multiplier=[1, 1],
                       num_res_blocks=1),
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = transformers.ChameleonForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every parameter random (norm scales near 1): nothing can hide
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.2 * noise if "norm" in name and "bias" not in name
                        else 0.2 * noise)
    return model


def tiny_tokens(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int64)


def transformer_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        hidden = model.model(input_ids=torch.from_numpy(tokens)).last_hidden_state
        return model.lm_head(hidden).float().numpy()


def text_config(model) -> dict:
    full = model.config.to_dict()
    return {key: full[key] for key in TEXT_KEYS}


def text_tensors(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()
            if not name.startswith("model.vqmodel.")}


def write(out: Path, swin_norm: bool, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model, tokens = tiny_chameleon(swin_norm, seed), tiny_tokens(seed + 1)
    (out / "config.json").write_text(json.dumps(text_config(model), indent=1))
    save_file(text_tensors(model), str(out / "model.safetensors"))
    np.savez(out / "expected.npz", tokens=tokens, logits=transformer_logits(model, tokens))
    print(f"wrote {out} (transformers {transformers.__version__}, swin_norm={swin_norm})")


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "fixtures"
    write(root / "chameleon_tiny", swin_norm=False, seed=0)
    write(root / "chameleon_tiny_swin", swin_norm=True, seed=3)
