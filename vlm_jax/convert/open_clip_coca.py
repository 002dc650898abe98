"""open_clip's CoCa (a state dict + its model config) -> our `vlm_jax.models.coca.CoCa`.

Both of open_clip's pooler layouts convert (our `CoCa.pool_layout`):
  - vision `attentional_pool=True`, open_clip's default and that of every released CoCa
    checkpoint: one pooler of `attn_pooler_queries` queries (256), `ln_post` after it, query 0
    the contrastive embedding (vision `pool_type="tok"`) -> `pool_layout="single"` with
    `caption_queries = attn_pooler_queries - 1`;
  - vision `attentional_pool="parallel"`, the paper's: two poolers over the `ln_post`-normed
    ViT tokens -> `pool_layout="parallel"`.
("cascade" and poolers other than attentional are refused.) The text tower must append a
[CLS] (`embed_cls=True`). Its mask is open_clip's default, shifted by one position
(`legacy_cls_mask=True`), unless the model was run with `correct_cls_mask=True`, which open_clip
sets only by hand (it is no config field); pass `correct_cls_mask=` as the model ran.

Sizes are read from the tensors where open_clip ignores its config (the multimodal decoder's
MLP is always 4x wide). Texts: open_clip's rows start with BOS; ours do not (the model
prepends it), so `text_tokens_from_open_clip` drops the BOS column and appends a padding one,
which makes our teacher-forcing inputs exactly open_clip's text and `caption_logits[:, t]`
equal to open_clip's `logits[:, t]` for t < context - 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vlm_jax.convert import hf
from vlm_jax.convert.torch_layout import Weights, layer_norm

OPEN_CLIP_LN_EPS = 1e-5  # torch's LayerNorm default, which open_clip uses


def text_tokens_from_open_clip(text: np.ndarray, pad_id: int = 0) -> np.ndarray:
    """open_clip text ids [B, C] (BOS first) -> our text_tokens [B, C] (no BOS, one more pad)."""
    text = np.asarray(text)
    pad = np.full((text.shape[0], 1), pad_id, text.dtype)
    return np.concatenate([text[:, 1:], pad], axis=1).astype(np.int32)


def pool_layout(vision_cfg: Mapping) -> str:
    """Our `CoCa.pool_layout` for open_clip's vision config (ValueError for other poolers)."""
    attentional_pool = vision_cfg.get("attentional_pool", False)
    if attentional_pool == "parallel":
        return "parallel"
    if attentional_pool is True:
        if vision_cfg.get("pool_type", "tok") != "tok":
            raise ValueError(f"open_clip CoCa with vision_cfg.pool_type="
                             f"{vision_cfg['pool_type']!r} does not convert: the single pooler's "
                             "query 0 is the embedding only with pool_type='tok' (the default)")
        return "single"
    raise ValueError(
        "open_clip CoCa converts with vision_cfg.attentional_pool=True (its default, one "
        "pooler) or 'parallel' (the paper's two poolers); this model has "
        f"attentional_pool={attentional_pool!r}")


def coca_kwargs(model_config: Mapping, state_dict: Mapping[str, np.ndarray], *,
                pad_id: int, bos_id: int, quick_gelu: bool = False,
                correct_cls_mask: bool = False) -> dict:
    """Keyword arguments of `coca.CoCa` for an open_clip CoCa model config and its weights.
    `correct_cls_mask`: whether open_clip ran the text tower with it (False, its default, for
    every released checkpoint)."""
    vision, text, multimodal = (model_config[k] for k in
                                ("vision_cfg", "text_cfg", "multimodal_cfg"))
    layout = pool_layout(vision)
    if not text.get("embed_cls"):
        raise ValueError("open_clip CoCa text towers append a [CLS] (text_cfg.embed_cls=True)")
    embed_dim = model_config["embed_dim"]
    if embed_dim != text["width"] or multimodal["width"] != text["width"]:
        raise ValueError(f"embed_dim {embed_dim}, text width {text['width']} and multimodal "
                         f"width {multimodal['width']} must be equal: our poolers output "
                         "text-width tokens, open_clip's embed_dim-wide ones")
    activation = "quick_gelu" if quick_gelu else "gelu_exact"  # open_clip: nn.GELU (erf)
    vision_width = vision["width"]

    def mlp_dim(prefix: str) -> int:
        return int(state_dict[f"{prefix}.mlp.c_fc.weight"].shape[0])

    return dict(
        image=dict(width=vision_width, depth=vision["layers"],
                   num_heads=vision_width // vision.get("head_width", 64),
                   mlp_dim=mlp_dim("visual.transformer.resblocks.0"),
                   patch_size=vision["patch_size"], pool="cls",
                   pre_norm=not vision.get("no_ln_pre", False), ln_eps=OPEN_CLIP_LN_EPS,
                   activation=activation),
        text=dict(vocab_size=text["vocab_size"], width=text["width"], depth=text["layers"],
                  num_heads=text["heads"], mlp_dim=mlp_dim("text.transformer.resblocks.0"),
                  max_len=text["context_length"]),
        multimodal=dict(width=multimodal["width"], depth=multimodal["layers"],
                        num_heads=multimodal["heads"],
                        mlp_dim=mlp_dim("text_decoder.resblocks.0")),
        embed_dim=embed_dim,
        # The single pooler's queries are the embedding's (query 0) and the caption tokens.
        caption_queries=vision.get("attn_pooler_queries", 256) - (layout == "single"),
        pool_heads=vision.get("attn_pooler_heads", 8),
        pool_layout=layout, legacy_cls_mask=not correct_cls_mask,
        logit_bias_init=(float(state_dict["logit_bias"].reshape(()))
                         if "logit_bias" in state_dict else None),
        pad_id=pad_id, bos_id=bos_id, ln_eps=OPEN_CLIP_LN_EPS, activation=activation,
    )


def _attention(weights: Weights, prefix: str, num_heads: int) -> dict:
    """torch nn.MultiheadAttention (fused in_proj, or separate q/k/v when the key width
    differs) -> our Attention params {query, key, value, out}."""
    if f"{prefix}.in_proj_weight" in weights:
        fused = weights.take(f"{prefix}.in_proj_weight")  # [3D, D]
        projections = np.split(fused, 3, axis=0)
    else:
        projections = [weights.take(f"{prefix}.{name}_proj_weight") for name in "qkv"]
    biases = np.split(weights.take(f"{prefix}.in_proj_bias"), 3)
    out_weight = weights.take(f"{prefix}.out_proj.weight")  # [D, D]
    width = out_weight.shape[0]
    head_dim = width // num_heads
    params = {
        name: {"kernel": matrix.T.reshape(matrix.shape[1], num_heads, head_dim),
               "bias": bias.reshape(num_heads, head_dim)}
        for name, matrix, bias in zip(("query", "key", "value"), projections, biases, strict=True)
    }
    params["out"] = {"kernel": out_weight.T.reshape(num_heads, head_dim, width),
                     "bias": weights.take(f"{prefix}.out_proj.bias")}
    return params


def _mlp(weights: Weights, prefix: str) -> dict:
    return {name: {"kernel": weights.take(f"{prefix}.{torch_name}.weight").T,
                   "bias": weights.take(f"{prefix}.{torch_name}.bias")}
            for name, torch_name in (("Dense_0", "c_fc"), ("Dense_1", "c_proj"))}


def _block(weights: Weights, prefix: str, num_heads: int) -> dict:
    """A residual attention block (ln_1, attn, ln_2, mlp) -> our pre-norm block."""
    return {"norm1": layer_norm(weights, f"{prefix}.ln_1"),
            "attn": _attention(weights, f"{prefix}.attn", num_heads),
            "norm2": layer_norm(weights, f"{prefix}.ln_2"), "mlp": _mlp(weights, f"{prefix}.mlp")}


def _cross_block(weights: Weights, prefix: str, num_heads: int) -> dict:
    return {"norm_query": layer_norm(weights, f"{prefix}.ln_1"),
            "norm_context": layer_norm(weights, f"{prefix}.ln_1_kv"),
            "attn": _attention(weights, f"{prefix}.attn", num_heads),
            "norm2": layer_norm(weights, f"{prefix}.ln_2"), "mlp": _mlp(weights, f"{prefix}.mlp")}


def _pooler(weights: Weights, prefix: str, num_heads: int) -> dict:
    return {"queries": weights.take(f"{prefix}.query"),
            "norm_query": layer_norm(weights, f"{prefix}.ln_q"),
            "norm_context": layer_norm(weights, f"{prefix}.ln_k"),
            "attn": _attention(weights, f"{prefix}.attn", num_heads)}


def convert_coca_state_dict(state_dict: Mapping[str, np.ndarray], kwargs: dict) -> dict:
    """Our CoCa params from open_clip's state dict (NumPy arrays); `kwargs` from `coca_kwargs`.

    Every tensor of the state dict must be used: a leftover one means a layout we do not map.
    """
    weights = Weights({k: np.asarray(v, np.float32) for k, v in state_dict.items()},
                      "open_clip CoCa state dict")
    image, text, multimodal = kwargs["image"], kwargs["text"], kwargs["multimodal"]
    conv = weights.take("visual.conv1.weight")  # [out, in, kh, kw]
    image_tower = {
        "embedding": {"kernel": conv.transpose(2, 3, 1, 0),
                      "bias": np.zeros(conv.shape[0], np.float32)},  # open_clip: no bias
        "cls": weights.take("visual.class_embedding").reshape(1, 1, -1),
        "pos_embedding": weights.take("visual.positional_embedding")[None],
        "encoder": {f"block{i}": _block(weights, f"visual.transformer.resblocks.{i}",
                                        image["num_heads"]) for i in range(image["depth"])},
    }
    if image["pre_norm"]:
        image_tower["pre_norm"] = layer_norm(weights, "visual.ln_pre")
    if kwargs["pool_layout"] == "single":
        # One pooler over the ViT's un-normed tokens; ln_post norms its outputs.
        poolers = {"pool": _pooler(weights, "visual.attn_pool", kwargs["pool_heads"]),
                   "pool_norm": layer_norm(weights, "visual.ln_post")}
    else:
        # "parallel" applies ln_post to every token before both poolers: our ViT's final norm.
        image_tower["encoder"]["norm"] = layer_norm(weights, "visual.ln_post")
        poolers = {
            "contrastive_pool": _pooler(weights, "visual.attn_pool_contrastive",
                                        kwargs["pool_heads"]),
            "caption_pool": _pooler(weights, "visual.attn_pool", kwargs["pool_heads"])}
    params = {
        "image_tower": image_tower,
        **poolers,
        "image_proj": {"kernel": weights.take("visual.proj")},  # x @ proj: already [in, out]
        "unimodal": {
            "token_embedding": {"embedding": weights.take("text.token_embedding.weight")},
            "pos_embedding": weights.take("text.positional_embedding"),  # [context + 1, D]
            "cls_embedding": weights.take("text.cls_emb"),
            "norm": layer_norm(weights, "text.ln_final"),
            **{f"blocks_{i}": _block(weights, f"text.transformer.resblocks.{i}",
                                     text["num_heads"]) for i in range(text["depth"])},
        },
        "text_proj": {"kernel": weights.take("text.text_projection")},
        "multimodal_decoder": {
            "norm": layer_norm(weights, "text_decoder.ln_final"),
            "lm_head": {"kernel": weights.take("text_decoder.text_projection")},
            **{f"self_blocks_{i}": _block(weights, f"text_decoder.resblocks.{i}",
                                          multimodal["num_heads"])
               for i in range(multimodal["depth"])},
            **{f"cross_blocks_{i}": _cross_block(weights, f"text_decoder.cross_attn.{i}",
                                                 multimodal["num_heads"])
               for i in range(multimodal["depth"])},
        },
        "logit_scale": weights.take("logit_scale").reshape(()),
    }
    if "logit_bias" in weights:
        params["logit_bias"] = weights.take("logit_bias").reshape(())
    if weights.unused():
        raise ValueError(f"open_clip CoCa tensors left unmapped: {weights.unused()[:8]}; is "
                         "this another layout than open_clip's two (see the module docstring)?")
    return params


OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"  # what open_clip's hub upload writes


def read_model_config(weights_path: str, model_config_path: str | None = None) -> dict:
    """open_clip's model config: `model_config_path` (a model_configs/*.json file, or the hub's
    open_clip_config.json, {"model_cfg": ...}), or open_clip_config.json beside the weights."""
    path = (Path(model_config_path) if model_config_path
            else Path(weights_path).with_name(OPEN_CLIP_CONFIG_FILE))
    if not path.is_file():
        raise FileNotFoundError(
            f"open_clip model config {path} does not exist; pass --open-clip-config with the "
            "model's open_clip JSON (open_clip/model_configs/coca_*.json or the hub's "
            f"{OPEN_CLIP_CONFIG_FILE})")
    record = json.loads(path.read_text())
    config = record.get("model_cfg", record)
    if not all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg",
                                         "multimodal_cfg")):
        raise ValueError(f"{path} is no open_clip CoCa model config (it needs embed_dim, "
                         "vision_cfg, text_cfg and multimodal_cfg)")
    return config


def convert_file(weights_path: str, model_config_path: str | None = None, *,
                 correct_cls_mask: bool = False) -> hf.Converted:
    """An open_clip CoCa checkpoint (its state dict saved with safetensors.torch.save_file)
    -> our params and `config.model` fields. The model config is `model_config_path`, or
    open_clip_config.json beside the weights. Token ids are open_clip's: pad 0, BOS
    (<start_of_text>) the second-to-last id of the vocabulary."""
    from safetensors.numpy import load_file

    weights = Path(weights_path)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    model_config = read_model_config(weights_path, model_config_path)
    state_dict = load_file(weights)
    vocab_size = model_config["text_cfg"]["vocab_size"]
    kwargs = coca_kwargs(model_config, state_dict, pad_id=0, bos_id=vocab_size - 2,
                         quick_gelu=model_config.get("quick_gelu", False),
                         correct_cls_mask=correct_cls_mask)
    params = convert_coca_state_dict(state_dict, kwargs)
    return hf.Converted("open_clip_coca", {"name": "coca", **kwargs}, params, vocab_size, [],
                        str(weights))


def run_config(config, converted: hf.Converted, model_config: Mapping, tokenizer: str = ""):
    """`config` (a CoCa run config) with the converted model, the checkpoint's image size
    (`model_config`: open_clip's) and text length, and `tokenizer` if given: what
    restore.restore_run reads from config.json."""
    if config.get("trainer") != "coca":
        raise ValueError(f"the run config's trainer is {config.get('trainer')!r}; an open_clip "
                         "CoCa needs a CoCa config (configs/coca.py)")
    config.model = {"execution": config.model.get("execution", {}), **converted.model}
    config.data.image_size = model_config["vision_cfg"]["image_size"]
    config.data.text_length = model_config["text_cfg"]["context_length"]
    if tokenizer:
        config.data.tokenizer = tokenizer
    return config
