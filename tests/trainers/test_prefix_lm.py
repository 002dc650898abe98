"""The prefix_lm trainer (Frozen, LLaVA): a frozen LM costs its forward and its activation
gradients only and keeps no optimizer state; the loss sees the supervised tokens only; the
captioner's layouts score and decode what the loss trained."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import backbone_lm, common, frozen, llava
from tests.data.word_tokenizer import WordTokenizer
from vlm_jax import decoding, models, optim, parallel
from vlm_jax.data import formats
from vlm_jax.optim import param_path
from vlm_jax.trainers import prefix_lm

IMAGE_ID = 16  # WordTokenizer's 16 ids, then the added "<image>"


def tiny_config(module, arg: str = "tiny"):
    c = module.get_config(arg)
    c.model.image = common.tower("", width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8,
                                 pool="map")
    c.model.lm.update(vocab_size=IMAGE_ID, width=32, depth=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=64)
    c.model.update(image_token_id=IMAGE_ID, bos_id=1, pad_id=0)
    c.data.update(image_size=16, text_length=8)
    if c.data.format == "prefix_lm":
        c.data.update(text_length=24, prompt_image_tokens=4)
    return c


def built(config):
    model = models.build_model(config.model, IMAGE_ID + 1)
    batch = {key: jnp.asarray(value) for key, value in prefix_lm.init_batch(config).items()}
    params = nn.unbox(model.init(jax.random.PRNGKey(0), **batch)["params"])
    return model, params


def caption_batch(rows: int = 2) -> dict:
    rng = np.random.default_rng(0)
    text = np.array([[4, 9, 10, 11, 2, 0, 0, 0], [6, 7, 8, 12, 13, 14, 2, 0]][:rows], np.int32)
    return {"image": rng.integers(0, 256, (rows, 16, 16, 3), dtype=np.uint8),
            "text_tokens": text}


def _dot_count(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("dot_general")


def test_frozen_lm_costs_its_forward_and_activation_gradients_only():
    """A trained matmul costs 3 (forward, input and weight gradients); a frozen LM's weight
    matmuls drop the weight gradient only: the image side below still needs the gradient
    of the LM's activations. So freezing saves exactly one matmul per LM weight matmul."""
    config = tiny_config(frozen)
    model, params = built(config)
    batch = {key: jnp.asarray(value) for key, value in caption_batch().items()}
    loss_fn = prefix_lm.make_loss_fn(model, config)
    rng = jax.random.PRNGKey(1)

    def gradients(rules):
        return lambda p: jax.grad(lambda q: loss_fn(optim.stop_frozen_gradients(q, rules),
                                                    batch, rng)[0])(p)

    lm_paths = [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
                if param_path(path).startswith("lm/")]
    # One weight matmul per kernel, but one for q, k and v together (layers.project runs them
    # as one matmul), plus the tied embedding's output projection.
    qkv_kernels = sum(path.endswith(("/query/kernel", "/key/kernel", "/value/kernel"))
                      for path in lm_paths)
    lm_weight_matmuls = (sum(path.endswith("/kernel") for path in lm_paths) - qkv_kernels * 2 // 3
                         + int(config.model.lm.tie_embeddings))
    assert lm_weight_matmuls == 2 * (1 + 1 + 3) + 1  # qkv, out and SwiGLU's three, per layer
    frozen_rules = tuple(config.optim.param_rules)
    assert frozen_rules == (("lm/.*", "freeze"),)
    saved = _dot_count(gradients(()), params) - _dot_count(gradients(frozen_rules), params)
    assert saved == lm_weight_matmuls

    grads = jax.jit(gradients(frozen_rules))(params)
    assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(grads["lm"]))
    assert np.any(np.asarray(grads["prefix"]["kernel"]))  # through the frozen LM's activations
    assert np.any(np.asarray(grads["image_tower"]["embedding"]["kernel"]))


def test_a_frozen_lm_keeps_no_optimizer_state():
    config = tiny_config(frozen)
    _, params = built(config)
    tx, _ = optim.make_optimizer(config.optim, 10)
    state = tx.init(params)
    sizes = lambda tree: sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(tree)
                             if np.ndim(x) > 0)
    trained = {name: value for name, value in params.items() if name != "lm"}
    assert sizes(params["lm"]) > 0
    assert sizes(state) == 2 * sizes(trained)  # AdamW's two moments of the trained params only
    state_paths = [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert not any(path.startswith("lm/") or "/lm/" in path for path in state_paths)


def test_caption_loss_is_the_cross_entropy_of_caption_tokens_only():
    """BOS <image>*n caption: the mean over caption tokens and EOS of -log p, by hand."""
    config = tiny_config(frozen)
    model, params = built(config)
    batch = caption_batch()
    loss, metrics = prefix_lm.make_loss_fn(model, config)(params, batch, None)
    n = config.model.num_prefix_tokens
    tokens = np.concatenate([np.full((2, 1), 1), np.full((2, n), IMAGE_ID),
                             batch["text_tokens"]], axis=1)
    logits = np.asarray(model.apply({"params": params}, batch["image"], tokens[:, :-1]),
                        np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    terms = [-log_probs[row, t - 1, tokens[row, t]] for row in range(2)
             for t in range(1 + n, tokens.shape[1]) if tokens[row, t] != 0]
    assert len(terms) == 5 + 7
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)
    assert float(metrics["caption_loss"]) == float(loss)


def test_chat_sequences_supervise_each_answer_and_its_end_only():
    tokenizer = WordTokenizer(specials=("<image>",))
    row = formats.prefix_lm_example(tokenizer, ["what colour is the circle?", "what colour"],
                                    ["red", "blue"], 20, image_tokens=3)
    u, a, i = 4, 5, IMAGE_ID
    expected = [1, u, i, i, i, 6, 7, 8, 9, 10, a, 11, 2, u, 6, 7, a, 14, 2, 0]
    np.testing.assert_array_equal(row["text_tokens"], expected)
    supervised = {11, 12, 17, 18}  # red EOS, blue EOS
    np.testing.assert_array_equal(row["mask_loss"], [int(t in supervised) for t in range(20)])


def test_stage_two_loss_reads_the_chat_mask():
    config = tiny_config(llava, "tiny,stage=2")
    assert config.optim.param_rules == (("image_tower/.*", "freeze"),)
    model, params = built(config)
    tokenizer = WordTokenizer(specials=("<image>",))
    rows = [formats.prefix_lm_example(tokenizer, "what colour is the circle?", answer, 24,
                                      image_tokens=4) for answer in ("red", "blue")]
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    batch["image"] = caption_batch()["image"]
    loss, _ = prefix_lm.make_loss_fn(model, config)(params, batch, None)
    tokens = batch["text_tokens"]
    logits = np.asarray(model.apply({"params": params}, batch["image"], tokens[:, :-1]),
                        np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    terms = [-log_probs[r, t - 1, tokens[r, t]] for r in range(2) for t in range(1, 24)
             if batch["mask_loss"][r, t]]
    assert len(terms) == 4  # each answer word and its EOS
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)
    config.data.prompt_image_tokens = 3
    with pytest.raises(ValueError, match="data.prompt_image_tokens=3 must equal the model's 4"):
        prefix_lm.make_loss_fn(model, config)


@pytest.mark.parametrize("stage", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_captioner_scores_what_the_loss_trains_and_decodes_greedily(stage):
    config = tiny_config(llava, f"tiny,stage={stage}")
    model, params = built(config)
    tokenizer = WordTokenizer(specials=("<image>",))
    mesh = parallel.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    config.decode.max_len = 5
    settings = decoding.DecodeSettings(max_len=5)
    captioner = prefix_lm.make_captioner(model, params, tokenizer, mesh, config)
    pixels = caption_batch()["image"]
    texts = ["a red circle.", "blue square."]
    scores = captioner.log_likelihood(pixels, texts)
    layout = prefix_lm.PromptLayout(tokenizer, 4, stage == 2, config.data.caption_prompt)
    for row, text in enumerate(texts):
        ids, weights = layout.scored_ids(layout.caption_request, text)
        if stage == 1:  # BOS <image>*4 text EOS
            assert ids == [1, *[IMAGE_ID] * 4, *tokenizer.text_ids(text), 2]
        tokens, weights = np.array([ids]), np.array([weights])
        logits = np.asarray(model.apply({"params": params}, pixels[row:row + 1],
                                        tokens[:, :-1]), np.float64)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        expected = sum(log_probs[0, t - 1, tokens[0, t]] for t in range(1, tokens.shape[1])
                       if weights[0, t])
        assert scores[row] == pytest.approx(expected, rel=1e-5, abs=1e-5)

    # Greedy decoding with the KV cache = argmax of the full forward, token by token.
    generated = captioner.generate(pixels, ["<image>what colour", "<image>is the"])
    for row, prompt in enumerate(["<image>what colour", "<image>is the"]):
        sequence = [1, *layout.prompt_ids(prompt)]
        new = []
        for _ in range(settings.max_len):
            logits = np.asarray(model.apply({"params": params}, pixels[row:row + 1],
                                            np.array([sequence])))[0, -1].copy()
            logits[0] = -np.inf  # decoding never emits padding
            token = int(np.argmax(logits))
            sequence.append(token)
            new.append(token)
            if token == 2:
                break
        assert generated[row] == tokenizer.decode(np.array([new + [2]]))[0]


def test_configs_keep_the_world_lm_sizes_and_freeze_what_each_stage_freezes():
    assert frozen.get_config("tiny").model.lm.vocab_size == backbone_lm.WORLD_BASE_VOCAB
    stage1 = llava.get_config("tiny,stage=1,image=runs/siglip_tiny,lm=runs/lm_tiny")
    assert stage1.optim.param_rules == (("image_tower/.*", "freeze"), ("lm/.*", "freeze"))
    assert stage1.init_from == str({"image_tower": "runs/siglip_tiny", "lm": "runs/lm_tiny"})
    stage2 = llava.get_config("tiny,stage=2,stage1=runs/llava1")
    assert stage2.init_from == "runs/llava1" and stage2.data.prompt_image_tokens == 16
