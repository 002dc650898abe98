"""The CM3 infilling transformation against a pure-Python reference; its loss is plain CE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.losses import cm3, generative
from vlm_jax.models.early_fusion import ImageVocabulary

# ids: 0 pad, 1 bos, 2 eos, 3 boi, 4 eoi, 5 <image>, 6 <mask>, 7 <infill>, 10..19 words,
# 20..27 image codes.
VOCAB = ImageVocabulary(code_offset=20, codebook_size=8, boi_id=3, eoi_id=4, placeholder_id=5,
                        bos_id=1, eos_id=2, pad_id=0, mask_id=6, infill_id=7)
IMAGE_FIRST = [1, 3, 20, 21, 22, 4, 10, 11, 12, 3, 23, 24, 25, 4, 13, 14, 2, 0, 0]
CAPTION_FIRST = [1, 10, 11, 3, 20, 21, 4, 12, 13, 14, 3, 22, 23, 4, 2, 0, 0, 0, 0]


def reference_spans(row):
    """[(start, end)] of each span: image blocks and text runs between them."""
    real = [i for i, t in enumerate(row) if t not in (VOCAB.pad_id, VOCAB.eos_id) and i > 0]
    spans, start = [], None
    for i in real:
        opens = i == 1 or row[i] == VOCAB.boi_id or row[i - 1] == VOCAB.eoi_id
        if opens:
            if start is not None:
                spans.append((start, i))
            start = i
    spans.append((start, real[-1] + 1))
    return spans


def reference_infill(row, chosen):
    length = len(row)
    if chosen == 0:
        return list(row) + [0, 0]
    a, b = reference_spans(row)[chosen - 1]
    end = row.index(VOCAB.eos_id)
    out = row[:a] + [VOCAB.mask_id] + row[b:end] + [VOCAB.infill_id] + row[a:b] + [VOCAB.eos_id]
    return out + [0] * (length + 2 - len(out))


def test_reference_spans_are_what_the_docstring_says():
    assert reference_spans(IMAGE_FIRST) == [(1, 6), (6, 9), (9, 14), (14, 16)]
    assert reference_spans(CAPTION_FIRST) == [(1, 3), (3, 7), (7, 10), (10, 14)]


@pytest.mark.parametrize("row", [IMAGE_FIRST, CAPTION_FIRST])
def test_infill_matches_the_python_reference_for_every_span(row):
    spans = len(reference_spans(row))
    tokens = jnp.asarray([row] * (spans + 1), jnp.int32)
    got = np.asarray(cm3.infill(tokens, jnp.arange(spans + 1), VOCAB))
    for s in range(spans + 1):
        assert got[s].tolist() == reference_infill(row, s), s
    ids = np.asarray(cm3.span_ids(tokens[:1], VOCAB))[0]
    assert ids.max() == spans and ids[0] == 0 and ids[row.index(2)] == 0


def test_a_moved_image_stays_whole_and_lengths_add_up():
    got = np.asarray(cm3.infill(jnp.asarray([IMAGE_FIRST]), jnp.asarray([3]), VOCAB))[0]
    # BOS <boi>c c c<eoi> w w w <mask> w w <infill> <boi> c c c <eoi> EOS pad
    assert got.tolist()[:19] == [1, 3, 20, 21, 22, 4, 10, 11, 12, 6, 13, 14, 7, 3, 23, 24, 25,
                                 4, 2]
    assert np.sum(got != 0) == np.sum(np.asarray(IMAGE_FIRST) != 0) + 2


def test_draw_spans_respects_probability_and_range():
    spans = cm3.span_ids(jnp.asarray([IMAGE_FIRST] * 4000), VOCAB)
    chosen = np.asarray(cm3.draw_spans(jax.random.PRNGKey(0), spans, 0.5))
    assert abs(np.mean(chosen > 0) - 0.5) < 0.03  # binomial sd 0.008
    assert set(np.unique(chosen[chosen > 0])) == {1, 2, 3, 4}
    assert not np.any(cm3.draw_spans(jax.random.PRNGKey(0), spans, 0.0))


def test_the_loss_is_plain_cross_entropy_over_the_moved_sequence():
    tokens = cm3.infill(jnp.asarray([IMAGE_FIRST, CAPTION_FIRST]), jnp.asarray([2, 4]), VOCAB)
    logits = jax.random.normal(jax.random.PRNGKey(1), (2, tokens.shape[1] - 1, 28))
    targets = tokens[:, 1:]
    loss, _ = generative.caption_loss(logits, targets, targets != VOCAB.pad_id)
    x, t = np.asarray(logits, np.float64), np.asarray(targets)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, t[..., None], -1)[..., 0]
    want = -picked[t != 0].mean()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
