"""Decoding against NumPy references on a toy model whose cache matters.

The toy's logits at step t depend on its row, t, the input token and the token before it (kept
in the cache), so beam search must reorder the cache correctly to score hypotheses right.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import decoding

PAD, BOS, EOS = 0, 1, 2
VOCAB, MAX_LEN, ROWS = 6, 4, 3
IDS = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)


def _table(seed=0, rows=ROWS, eos_bias=0.0):
    """logits [row, position, previous input, input, next token]; pad/bos very unlikely."""
    table = 2.0 * np.random.default_rng(seed).normal(size=(rows, MAX_LEN, VOCAB, VOCAB, VOCAB))
    table[..., [PAD, BOS]] -= 20.0
    table[..., EOS] += eos_bias
    return table.astype(np.float32)


def _step(table):
    table = jnp.asarray(table)

    def step(cache, token, position):
        logits = table[cache["row"], position, cache["previous"], token]  # [B, V]
        return logits, {"row": cache["row"], "previous": token}

    return step


def _cache(rows):
    rows = np.asarray(rows)
    return {"row": jnp.asarray(rows, jnp.int32), "previous": jnp.full(rows.shape, BOS, jnp.int32)}


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _next_log_probs(table, row, sequence):
    """log p(next token | sequence so far) under the toy: [V]."""
    t = len(sequence)
    inputs = [BOS, *sequence]
    previous = inputs[t - 1] if t > 0 else BOS
    return _log_softmax(table[row, t, previous, inputs[t]])


def _sequence_log_prob(table, row, sequence):
    return sum(_next_log_probs(table, row, sequence[:t])[token] for t, token in enumerate(sequence))


def _greedy_reference(table, row, prompt=()):
    sequence = list(prompt)
    while len(sequence) < MAX_LEN and EOS not in sequence:
        sequence.append(int(np.argmax(_next_log_probs(table, row, sequence))))
    return sequence + [PAD] * (MAX_LEN - len(sequence))


def _best_sequence_reference(table, row, length_penalty):
    """Exhaustive search: finished sequences (ending in EOS) and unfinished full-length ones,
    each scored log p / length ** length_penalty."""
    best, best_score = None, -np.inf
    others = [token for token in range(VOCAB) if token != EOS]
    for length in range(1, MAX_LEN + 1):
        endings = [(EOS,)] + ([()] if length == MAX_LEN else [])
        for prefix_length, ending in ((length - len(e), e) for e in endings):
            for prefix in itertools.product(others, repeat=prefix_length):
                sequence = list(prefix) + list(ending)
                score = _sequence_log_prob(table, row, sequence) / length ** length_penalty
                if score > best_score:
                    best, best_score = sequence, score
    return best + [PAD] * (MAX_LEN - len(best)), best_score


def test_greedy_matches_the_reference():
    table = _table()
    tokens, extras = jax.jit(lambda c: decoding.greedy(_step(table), c, MAX_LEN, **IDS))(
        _cache(range(ROWS)))
    for row in range(ROWS):
        expected = _greedy_reference(table, row)
        assert tokens[row].tolist() == expected
        generated = [t for t in expected if t != PAD]
        np.testing.assert_allclose(
            extras["log_prob"][row], _sequence_log_prob(table, row, generated), rtol=1e-5)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_with_enough_beams_is_exhaustive(length_penalty):
    # 5 non-EOS tokens and 4 steps: at most 5**3 live prefixes x 6 tokens = 750 candidates,
    # so 750 beams keep every hypothesis and the result must be the global best.
    table = _table(seed=1)
    search = jax.jit(lambda c: decoding.beam_search(
        _step(table), c, MAX_LEN, beam_size=750, length_penalty=length_penalty, **IDS))
    tokens, extras = search(_cache(range(ROWS)))
    for row in range(ROWS):
        expected, score = _best_sequence_reference(table, row, length_penalty)
        assert tokens[row].tolist() == expected
        np.testing.assert_allclose(extras["score"][row], score, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_beam_width_one_equals_greedy(seed):
    table = _table(seed=seed, eos_bias=1.0)  # some rows stop early, some run to max_len
    cache = _cache(range(ROWS))
    greedy, greedy_extras = decoding.greedy(_step(table), cache, MAX_LEN, **IDS)
    beam, beam_extras = decoding.beam_search(
        _step(table), cache, MAX_LEN, beam_size=1, length_penalty=0.0, **IDS)
    np.testing.assert_array_equal(beam, greedy)
    np.testing.assert_allclose(beam_extras["log_prob"], greedy_extras["log_prob"], rtol=1e-5)


def test_top_k_one_and_tiny_top_p_sample_greedily():
    table = _table(seed=4)
    cache = _cache(range(ROWS))
    greedy, _ = decoding.greedy(_step(table), cache, MAX_LEN, **IDS)
    for options in (dict(top_k=1), dict(top_p=1e-6), dict(top_k=1, temperature=3.0)):
        tokens, _ = decoding.sample(_step(table), cache, MAX_LEN, jax.random.PRNGKey(7),
                                    **options, **IDS)
        np.testing.assert_array_equal(tokens, greedy, err_msg=str(options))


def test_sampling_is_deterministic_for_a_key_and_varies_across_keys():
    table = _table(seed=5)
    cache = _cache(np.arange(64) % ROWS)
    run = jax.jit(lambda c, key: decoding.sample(_step(table), c, MAX_LEN, key, **IDS)[0])
    first = run(cache, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(run(cache, jax.random.PRNGKey(0)), first)
    assert not np.array_equal(run(cache, jax.random.PRNGKey(1)), first)


def test_sampled_first_tokens_follow_the_tempered_softmax():
    table = _table(seed=6)
    temperature, draws = 0.7, 4000
    tokens, _ = jax.jit(lambda c: decoding.sample(
        _step(table), c, 1, jax.random.PRNGKey(0), temperature=temperature, **IDS))(
        _cache(np.zeros(draws, int)))
    frequencies = np.bincount(np.asarray(tokens[:, 0]), minlength=VOCAB) / draws
    expected = np.exp(_log_softmax(table[0, 0, BOS, BOS] / temperature))
    np.testing.assert_allclose(frequencies, expected, atol=0.03)  # ~4 standard errors


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
    logits = np.log(np.array([[0.05, 0.4, 0.1, 0.3, 0.15]], np.float32))
    kept = lambda out: np.isfinite(np.asarray(out))[0].tolist()
    assert kept(decoding.filter_logits(jnp.asarray(logits), top_k=2)) == [0, 1, 0, 1, 0]
    # Sorted: 0.4, 0.3, 0.15, 0.1, 0.05; mass before each: 0, 0.4, 0.7, 0.85, 0.95.
    assert kept(decoding.filter_logits(jnp.asarray(logits), top_p=0.7)) == [0, 1, 0, 1, 0]
    assert kept(decoding.filter_logits(jnp.asarray(logits), top_p=0.71)) == [0, 1, 0, 1, 1]
    assert kept(decoding.filter_logits(jnp.asarray(logits), top_k=3, top_p=0.5)) == [0, 1, 0, 1, 0]
    kept_values = decoding.filter_logits(jnp.asarray(logits), top_k=2)[0, [1, 3]]
    np.testing.assert_array_equal(kept_values, logits[0, [1, 3]])


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_tokens_after_eos_are_padding(strategy):
    table = _table(seed=8)
    table[0, 0, ..., EOS] -= 50.0
    table[0, 1, ..., EOS] += 50.0  # row 0 ends at its second token; row 1 cannot end
    table[1, ..., EOS] -= 50.0
    settings = decoding.DecodeSettings(strategy=strategy, max_len=MAX_LEN, beam_size=2)
    tokens, _ = decoding.generate(_step(table[:2]), _cache([0, 1]), settings,
                                  rng=jax.random.PRNGKey(0), **IDS)
    tokens = np.asarray(tokens)
    assert tokens[0, 1] == EOS and (tokens[0, 2:] == PAD).all() and tokens[0, 0] not in (EOS, PAD)
    assert (tokens[1] != PAD).all() and (tokens[1] != EOS).all()


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_the_step_is_traced_once_whatever_max_len(strategy):
    table = _table()
    traces = []

    def step(cache, token, position):
        traces.append(position)
        return _step(table)(cache, token, position)

    for max_len in (2, MAX_LEN):
        settings = decoding.DecodeSettings(strategy=strategy, max_len=max_len, beam_size=2)
        jax.jit(lambda c, settings=settings: decoding.generate(
            step, c, settings, rng=jax.random.PRNGKey(0), **IDS))(_cache(range(ROWS)))
    assert len(traces) == 2  # once per compilation, not once per token


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_a_prompt_forces_the_first_tokens(strategy):
    table = _table(seed=9)
    prompt = np.array([[4, 3], [5, PAD], [PAD, PAD]], np.int32)  # lengths 2, 1, 0
    settings = decoding.DecodeSettings(strategy=strategy, max_len=MAX_LEN, beam_size=1,
                                       length_penalty=0.0)
    tokens, extras = decoding.generate(_step(table), _cache(range(ROWS)), settings,
                                       prompt=jnp.asarray(prompt), **IDS)
    for row, row_prompt in enumerate(([4, 3], [5], [])):
        expected = _greedy_reference(table, row, row_prompt)
        assert tokens[row].tolist() == expected
        generated = [t for t in expected[len(row_prompt):] if t != PAD]
        np.testing.assert_allclose(
            extras["log_prob"][row],
            _sequence_log_prob(table, row, row_prompt + generated)
            - _sequence_log_prob(table, row, row_prompt), rtol=1e-5)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="strategy"):
        decoding.DecodeSettings(strategy="nucleus")
    with pytest.raises(ValueError, match="temperature"):
        decoding.DecodeSettings(strategy="sample", temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        decoding.DecodeSettings(top_p=0.0)
    with pytest.raises(ValueError, match="rng"):
        decoding.generate(_step(_table()), _cache([0]), decoding.DecodeSettings(strategy="sample"),
                          **IDS)
