"""`python -m vlm_jax.convert` on an open_clip CoCa checkpoint in open_clip's default (released)
layout, end to end: the fixture's safetensors file -> OUT (params, model_config.json,
config.json) -> `restore.restore_run(OUT)`, whose model gives open_clip's embeddings and caption
log-likelihoods and whose captioner decodes. Golden outputs: tests/fixtures/coca_tiny_default
(tests/fixtures/make_coca_fixture.py --layout=default)."""

import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import sentencepiece as spm

from vlm_jax import decoding, generation, restore
from vlm_jax.convert import cli
from vlm_jax.convert.open_clip_coca import text_tokens_from_open_clip

FIXTURE = Path(__file__).parents[1] / "fixtures" / "coca_tiny_default"
CONFIGS = Path(__file__).parents[2] / "configs"
TOLERANCE = 1e-5


def tokenizer_with_open_clip_ids(path: Path, record: dict) -> Path:
    """A SentencePiece model with the checkpoint's vocab size and ids (pad 0, BOS and EOS the
    last two), as open_clip's tokenizer numbers them."""
    sentences = ["a small red circle above a blue square", "two green triangles",
                 "a large yellow cross left of a white circle", "three cyan circles"] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, minloglevel=2,
        vocab_size=record["model_config"]["text_cfg"]["vocab_size"], model_type="bpe",
        pad_id=record["pad_id"], unk_id=1, bos_id=record["bos_id"], eos_id=record["eos_id"])
    path.write_bytes(model.getvalue())
    return path


# Slow: converts, restores and decodes; test_coca_parity's golden fixture checks the layout.
@pytest.mark.slow
def test_cli_converts_default_layout_coca_into_a_workdir_restore_captions_from(tmp_path,
                                                                                capsys):
    record = json.loads((FIXTURE / "config.json").read_text())
    expected = np.load(FIXTURE / "expected.npz")
    tokenizer = tokenizer_with_open_clip_ids(tmp_path / "tokenizer.model", record)
    out = tmp_path / "coca_import"
    # open_clip_config.json beside the weights is the model config, as on open_clip's hub.
    assert cli.main([str(FIXTURE / "model.safetensors"), str(out), "--run-config",
                     f"{CONFIGS / 'coca.py'}:tiny", "--tokenizer", str(tokenizer)]) == 0
    assert "converted open_clip_coca" in capsys.readouterr().out

    run = restore.restore_run(str(out))
    assert (run.model.pool_layout, run.model.legacy_cls_mask) == ("single", True)
    images = expected["pixel_values"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    text_tokens = text_tokens_from_open_clip(expected["text"], record["pad_id"])
    variables = {"params": run.params}
    image_emb, text_emb, _ = jax.jit(run.model.apply)(variables, images, text_tokens)
    np.testing.assert_allclose(image_emb, expected["image_features"], atol=TOLERANCE)
    np.testing.assert_allclose(text_emb, expected["text_features"], atol=TOLERANCE)

    # Caption log-likelihoods of the fixture texts: open_clip's, from its logits.
    labels = expected["text"][:, 1:]  # [B, C - 1]: what open_clip's logits predict
    log_probs = jax.nn.log_softmax(expected["logits"].astype(np.float64), axis=-1)
    picked = np.take_along_axis(np.asarray(log_probs), labels[..., None], axis=-1)[..., 0]
    theirs = (picked * (labels != record["pad_id"])).sum(axis=1)
    ours = jax.jit(lambda p, i, t: generation.caption_log_likelihood(run.model, p, i, t))(
        run.params, images, text_tokens)
    assert np.abs(theirs).min() > 1.0  # not trivially small
    np.testing.assert_allclose(ours, theirs, atol=1e-4)

    # Greedy decoding starts with open_clip's most likely token after BOS (pad is never
    # generated), and the restored captioner decodes the same tokens to text.
    settings = decoding.DecodeSettings(strategy="greedy", max_len=record["model_config"][
        "text_cfg"]["context_length"])
    tokens, _ = jax.jit(lambda p, i: generation.generate(
        run.model, p, i, settings, eos_id=run.tokenizer.eos_id))(run.params, images)
    first = np.asarray(expected["logits"][:, 0]).copy()
    first[:, record["pad_id"]] = -np.inf
    np.testing.assert_array_equal(np.asarray(tokens)[:, 0], first.argmax(axis=1))
    captions = run.caption_model().generate(images)
    assert captions == run.tokenizer.decode(np.asarray(tokens))
    assert len(captions) == len(images)
