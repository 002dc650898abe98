"""caption_kl: KL(cond || uncond) of the next-code distributions, against NumPy full forwards
of the unpadded sequences on a tiny random LM."""

import jax
import numpy as np

from tests.evals.test_generative_classifiers import tiny_lm
from tests.models.test_early_fusion import CODES, tokenizer, vocab
from vlm_jax import early_fusion_generation as generation


def code_log_probs_numpy(model, params, prefix: list[int], codes: np.ndarray) -> np.ndarray:
    """[T, K] log-softmax over the code logits at the positions predicting each code."""
    v = vocab()
    sequence = np.array([*prefix, *(codes + v.code_offset)], np.int32)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, sequence[None, :-1]),
                        np.float64)[0]
    start = len(prefix) - 1
    code_logits = logits[start:start + len(codes), v.code_offset:v.code_offset + CODES]
    return code_logits - np.log(np.exp(code_logits).sum(-1, keepdims=True))


def test_caption_kl_matches_numpy_per_code():
    model, params = tiny_lm()
    v = vocab()
    texts = ["a red circle.", "there is a big blue square left of a small green triangle."]
    codes = np.random.default_rng(0).integers(0, CODES, (2, 5)).astype(np.int32)
    prompt, lengths = generation.image_prompts(tokenizer(), v, texts, 64)
    kl = np.asarray(generation.caption_kl(model, params, v, prompt, lengths, codes))
    for i, text in enumerate(texts):
        cond = code_log_probs_numpy(model, params,
                                    [v.bos_id, *tokenizer().text_ids(text), v.boi_id], codes[i])
        uncond = code_log_probs_numpy(model, params, [v.bos_id, v.boi_id], codes[i])
        expected = (np.exp(cond) * (cond - uncond)).sum(-1)
        np.testing.assert_allclose(kl[i], expected, rtol=1e-4, atol=1e-7)
    assert kl.min() >= -1e-6 and kl.max() > 1e-4  # a random model does read the caption


def test_caption_kl_is_zero_for_the_unconditional_prompt_itself():
    model, params = tiny_lm()
    v = vocab()
    codes = np.random.default_rng(1).integers(0, CODES, (1, 4)).astype(np.int32)
    prompt = np.array([[v.bos_id, v.boi_id, v.pad_id]], np.int32)
    kl = generation.caption_kl(model, params, v, prompt, np.array([2], np.int32), codes)
    np.testing.assert_allclose(np.asarray(kl), 0.0, atol=1e-6)
