"""CoCa: cached decoding equals full recomputation, masking, likelihoods, the trainer's loss and
the host-side Captioner."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import coca as coca_config
from vlm_jax import decoding, generation, models, parallel, serving
from vlm_jax.data.tokenizer import world_tokenizer
from vlm_jax.models import coca
from vlm_jax.trainers import coca as coca_trainer

PAD, BOS, EOS, VOCAB = 0, 2, 3, 16
SIZES = dict(width=32, depth=1, num_heads=4, mlp_dim=64)
IMAGES = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
TEXT = np.array([[5, 6, 7, 8, 3, 0, 0, 0],
                 [9, 10, 3, 0, 0, 0, 0, 0],
                 [11, 12, 13, 14, 15, 4, 5, 3]], np.int32)  # tokens, EOS (3), padding (0)


def _model(vocab_size=VOCAB, **overrides):
    fields = dict(
        image=dict(SIZES, patch_size=8, pool="gap"),
        text=dict(SIZES, depth=2, vocab_size=vocab_size, max_len=10),
        multimodal=dict(SIZES), embed_dim=16, caption_queries=4, pool_heads=4,
        pad_id=PAD, bos_id=BOS)
    return coca.CoCa(**{**fields, **overrides})


@pytest.fixture(scope="module")
def model_and_params():
    model = _model()
    return model, model.init(jax.random.PRNGKey(0), IMAGES, TEXT)["params"]


def _apply(model, params, *args, method):
    return _jitted_apply(model, method.__name__)(params, *args)


_COMPILED = {}


def _jitted_apply(model, name):
    """One jitted function per (model, method): the tests call each many times."""
    if (id(model), name) not in _COMPILED:
        method = getattr(type(model), name)
        _COMPILED[id(model), name] = jax.jit(
            lambda params, *args: model.apply({"params": params}, *args, method=method))
    return _COMPILED[id(model), name]


def test_cached_decoding_gives_the_teacher_forcing_logits(model_and_params):
    model, params = model_and_params
    _, image_extras = _apply(model, params, IMAGES, method=model.encode_image)
    caption_tokens = image_extras["caption_tokens"]
    full = _apply(model, params, caption_tokens, TEXT, method=model.caption_logits)  # [B, L, V]
    inputs = np.asarray(coca.decoder_inputs(jnp.asarray(TEXT), BOS))
    cache = model.apply({"params": params}, caption_tokens, TEXT.shape[1],
                        method=model.init_cache)
    step = jax.jit(lambda c, t, p: _apply(model, params, c, t, p, method=model.decode_step))
    for position in range(TEXT.shape[1]):
        logits, cache = step(cache, jnp.asarray(inputs[:, position]), jnp.int32(position))
        real = inputs[:, position] != PAD  # padded inputs only predict ignored padding
        np.testing.assert_allclose(logits[real], full[real, position], rtol=1e-4, atol=1e-5)


def test_cached_greedy_decoding_equals_greedy_by_full_recomputation(model_and_params):
    model, params = model_and_params
    settings = decoding.DecodeSettings(strategy="greedy", max_len=6)
    tokens, extras = jax.jit(lambda images: generation.generate(
        model, params, images, settings, eos_id=EOS))(IMAGES)
    _, image_extras = _apply(model, params, IMAGES, method=model.encode_image)
    expected = np.full((3, 6), PAD, np.int32)
    for row in range(3):
        for position in range(6):
            logits = _apply(model, params, image_extras["caption_tokens"][row:row + 1],
                            expected[row:row + 1], method=model.caption_logits)
            expected[row, position] = int(np.argmax(logits[0, position, 1:])) + 1  # never PAD
            if expected[row, position] == EOS:
                break
    np.testing.assert_array_equal(tokens, expected)
    likelihood = generation.caption_log_likelihood(model, params, IMAGES, jnp.asarray(expected))
    np.testing.assert_allclose(extras["log_prob"], likelihood, rtol=1e-4)


def test_decoder_is_causal_and_the_text_embedding_ignores_padding(model_and_params):
    model, params = model_and_params
    _, image_extras = _apply(model, params, IMAGES, method=model.encode_image)
    logits = lambda text: _apply(model, params, image_extras["caption_tokens"], text,
                                 method=model.caption_logits)
    changed = TEXT.copy()
    changed[:, 3] = 1  # input position 4 onwards sees the change, positions 0..3 must not
    np.testing.assert_allclose(logits(changed)[:, :4], logits(TEXT)[:, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits(changed)[:, 4], logits(TEXT)[:, 4])

    embed = lambda text: _apply(model, params, text, method=model.encode_text)[0]
    padded = np.concatenate([TEXT[:2, :6], np.zeros((2, 4), np.int32)], axis=1)  # 10 columns
    np.testing.assert_allclose(embed(padded), embed(TEXT[:2, :6]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(embed(TEXT), axis=-1), 1.0, rtol=1e-5)
    # The [CLS] sees the last real input: changing it changes the embedding.
    last = TEXT.copy()
    last[0, 3] = 9
    assert not np.allclose(embed(last)[0], embed(TEXT)[0])


def test_captions_depend_on_the_image(model_and_params):
    model, params = model_and_params
    image_emb, image_extras = _apply(model, params, IMAGES, method=model.encode_image)
    assert image_extras["caption_tokens"].shape == (3, 4, 32)
    np.testing.assert_allclose(np.linalg.norm(image_emb, axis=-1), 1.0, rtol=1e-5)
    logits = _apply(model, params, image_extras["caption_tokens"], TEXT,
                    method=model.caption_logits)
    swapped = _apply(model, params, image_extras["caption_tokens"][::-1], TEXT,
                     method=model.caption_logits)
    assert not np.allclose(logits, swapped)


def test_caption_log_likelihood_sums_real_token_log_probs(model_and_params):
    model, params = model_and_params
    scores = generation.caption_log_likelihood(model, params, IMAGES, TEXT)
    _, image_extras = _apply(model, params, IMAGES, method=model.encode_image)
    logits = np.asarray(_apply(model, params, image_extras["caption_tokens"], TEXT,
                               method=model.caption_logits), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_log_probs = np.take_along_axis(log_probs, TEXT[..., None], -1)[..., 0]
    np.testing.assert_allclose(scores, np.where(TEXT != PAD, token_log_probs, 0).sum(-1),
                               rtol=1e-5)
    padded = np.concatenate([TEXT[:, :8], np.zeros((3, 2), np.int32)], axis=1)
    np.testing.assert_allclose(generation.caption_log_likelihood(model, params, IMAGES, padded),
                               scores, rtol=1e-5)


def _config(**loss):
    config = coca_config.get_config("tiny")
    config.model.image.update(width=32, depth=1, mlp_dim=64)
    config.model.text.update(width=32, depth=1, mlp_dim=64, max_len=8)
    config.model.multimodal.update(width=32, depth=1, mlp_dim=64)
    config.model.embed_dim, config.model.caption_queries = 16, 4
    config.data.update(image_size=16, text_length=8)
    config.loss.update(loss)
    return config


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_loss_is_weighted_contrastive_plus_captioning(kind):
    config = _config(contrastive=kind, contrastive_weight=0.5, caption_weight=3.0)
    if kind == "sigmoid":
        config.model.logit_bias_init = -10.0
    model = models.build_model(config.model, VOCAB)
    params = nn.unbox(model.init(jax.random.PRNGKey(1), IMAGES, TEXT)["params"])
    batch = {"image": IMAGES, "text_tokens": TEXT}
    loss, metrics = coca_trainer.make_loss_fn(model, config)(params, batch, None)

    image_emb, text_emb, extras = model.apply({"params": params}, IMAGES, TEXT)
    logits = np.asarray(extras["logit_scale"] * image_emb @ text_emb.T, np.float64)
    log_softmax = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))
    if kind == "softmax":
        contrastive = -0.5 * (np.trace(log_softmax(logits)) + np.trace(log_softmax(logits.T))) / 3
    else:
        labels = 2 * np.eye(3) - 1
        contrastive = np.sum(np.log1p(np.exp(-labels * (logits + extras["logit_bias"])))) / 3
    caption_log_probs = log_softmax(np.asarray(extras["caption_logits"], np.float64))
    token_log_probs = np.take_along_axis(caption_log_probs, TEXT[..., None], -1)[..., 0]
    caption = -token_log_probs[TEXT != PAD].mean()
    np.testing.assert_allclose(metrics["contrastive_loss"], contrastive, rtol=1e-5)
    np.testing.assert_allclose(metrics["caption_loss"], caption, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.5 * contrastive + 3.0 * caption, rtol=1e-5)


def test_every_parameter_array_has_logical_axis_names():
    config = _config()
    model = models.build_model(config.model, VOCAB)
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), IMAGES, TEXT)["params"])
    leaves = jax.tree_util.tree_leaves_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    unnamed = [jax.tree_util.keystr(path) for path, leaf in leaves
               if not isinstance(leaf, nn.Partitioned) and leaf.shape != ()]
    assert unnamed == []


def test_bad_structures_are_errors():
    with pytest.raises(ValueError, match="pool to 'gap' or 'cls'"):
        _model(image=dict(SIZES, patch_size=8, pool="map")).init(
            jax.random.PRNGKey(0), IMAGES, TEXT)
    with pytest.raises(ValueError, match="multimodal width 64 must equal the text width 32"):
        _model(multimodal=dict(SIZES, width=64)).init(jax.random.PRNGKey(0), IMAGES, TEXT)
    model = _model()
    params = model.init(jax.random.PRNGKey(0), IMAGES, TEXT)["params"]
    with pytest.raises(ValueError, match="decoding max_len 11 exceeds"):
        model.apply({"params": params}, jnp.zeros((1, 4, 32)), 11, method=model.init_cache)


def test_captioner_matches_the_model_on_a_mesh_for_any_row_count():
    tokenizer = world_tokenizer(256)
    config = _config()
    config.decode.update(max_len=6)
    model = models.build_model(config.model, tokenizer.vocab_size)
    params = nn.unbox(model.init(jax.random.PRNGKey(2), IMAGES, TEXT)["params"])
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
    captioner = coca_trainer.make_captioner(model, params, tokenizer, mesh, config)

    # The captioner speaks texts (evals.caption_model.CaptionModel): the model's tokens, decoded.
    captions = captioner.generate(IMAGES)  # 3 rows over 8 devices
    settings = serving.decode_settings(config)
    expected, _ = generation.generate(model, params, IMAGES, settings, eos_id=tokenizer.eos_id)
    assert captions == tokenizer.decode(np.asarray(expected))

    texts = ["a red circle.", "two blue squares.", "a cross."]
    text_tokens = tokenizer.encode(texts, config.data.text_length)
    np.testing.assert_allclose(
        captioner.log_likelihood(IMAGES, texts),
        generation.caption_log_likelihood(model, params, IMAGES, text_tokens), rtol=1e-4)

    # A prompt is forced, then stripped: the result is what the model adds after it.
    prompts = ["a red", "two", "a"]
    prompted = captioner.generate(IMAGES, prompts)
    prompt = tokenizer.encode(prompts, 6)
    prompt[prompt == tokenizer.eos_id] = 0
    full, _ = generation.generate(model, params, IMAGES, settings, eos_id=tokenizer.eos_id,
                            prompt=jnp.asarray(prompt))
    for row, length in enumerate((prompt != 0).sum(1)):
        assert prompted[row] == tokenizer.decode(np.asarray(full)[row : row + 1, length:])[0]
        np.testing.assert_array_equal(np.asarray(full)[row, :length], prompt[row, :length])
