"""Fields shared by every config: run length, mesh, sharding rules, optimizer, data, evals.

Each family's config starts from `base_config()` and sets its model and loss. Every field can be
overridden on the command line as `--config.a.b=value` (typed from the default).
"""

from __future__ import annotations

import ml_collections

from vlm_jax import evals

# Logical axis name -> mesh axes, for parameters and activations alike. Parameters' `embed`
# dimension is split over fsdp (FSDP); heads / mlp / vocab over tensor (tensor parallel).
# `batch` places every batch (parallel.batch_axes) and the blocks' activations
# [batch, length, embed]. A mesh axis serves one logical name per array, the first rule
# first: under these rules an activation's `embed` stays whole (batch took fsdp).
# Edit to change the layout.
SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("proj", "tensor"),
    ("layers", None),  # the stacked depth axis of scanned blocks (model.execution.scan_layers)
)


def data_config(**overrides) -> ml_collections.ConfigDict:
    """`config.data`: where examples come from and how they become batches."""
    return ml_collections.ConfigDict(dict(
        source="world",  # world | array_record | tfds
        image_size=32, text_length=24, world_seed=0,
        # "world" (SentencePiece trained on the world, cached), a .model path, a tokenizer.json
        # path or "minilm"; vocab_size is the world tokenizer's base size (specials come after).
        tokenizer="world",
        vocab_size=256,
        # Added tokens after the base vocabulary (e.g. "[MASK]"); image_codes adds <img_0>..;
        # pad_token ("" = the tokenizer's own) may name any token, an added one included.
        special_tokens=(), image_codes=0, pad_token="",
        # What a batch holds (vlm_jax/data/formats.py): caption | prefix_lm | interleaved |
        # image_only | text_only; mixture, e.g. (("caption", 0.7), ("prefix_lm", 0.3)),
        # draws each example's format by weight instead (batches then carry format_id).
        format="caption", mixture=(),
        caption_prompt="describe the picture.",  # prefix_lm prompt of sources without questions
        # prefix_lm: question-answer turns per example (a source's conversation, the world's),
        # and "<image>" placeholders opening the first user turn (LLaVA's image position).
        chat_turns=1, prompt_image_tokens=0,
        max_images=2, image_tokens=1,  # interleaved: images per document, placeholders per image
        array_record_pattern="", tfds_name="", tfds_data_dir="", tfds_split="train",
        image_key="image", caption_key="caption",
        shuffle=True, flip=False,  # a flip also swaps "left"/"right" in the caption
        # fit (nearest, for world-sized arrays) | center | random_resized (real images).
        crop="fit",
        workers=0, prefetch=2,
    ) | overrides)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "contrastive"
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256  # global, over all processes and devices
    c.grad_accum_steps = 1  # micro-batches per step (contrastive negatives stay per micro-batch)
    c.compute_dtype = "float32"
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.eval_every = 0  # 0: evaluate at the end only
    # The run's directory, filled by loop.train and restore.restore_run (configlib.with_workdir)
    # for trainers that keep files made for the run there (FLAVA's k-means codebook).
    c.workdir = ""
    # Start a fresh run from saved or imported weights (vlm_jax/init_from.py): a converter
    # output (python -m vlm_jax.convert), a workdir, a Hugging Face directory or "minilm";
    # init_from_regex picks which parameters ("/"-joined paths) are loaded. Or a map from
    # parameter prefix to "source[:source prefix]", written as a dict literal (this field is a
    # string, so the map survives --config.init_from=... and config.json), e.g.
    # str({"image_tower": "runs/siglip_tiny:image_tower", "text_tower": "minilm"}).
    c.init_from = ""
    c.init_from_regex = ".*"

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: the rest
    c.sharding_rules = SHARDING_RULES

    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-3, warmup_steps=100, end_lr_ratio=0.0,
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-4, grad_clip_norm=1.0,
    ))
    # (regex, rule) pairs on "/"-joined parameter paths, first match wins: rule "freeze" (no
    # update, no optimizer state) or "lr=<m>" (learning-rate multiplier). A regex matching no
    # parameter is an error. E.g. (("image_tower/.*", "freeze"), ("text_tower/.*", "lr=0.1")).
    c.optim.param_rules = ()

    c.data = data_config()

    # Every eval field and its default (vlm_jax/evals/__init__.py, the one place they live):
    # names, sizes, seed, clipscore_workdir, and the dataset specs evals.zeroshot / retrieval /
    # captioning (vlm_jax/evals/datasets.py: the world, or ArrayRecord / TFDS data).
    c.evals = evals.default_eval_config()
    c.evals.image_size = c.data.get_ref("image_size")
    return c


def execution(**fields) -> ml_collections.ConfigDict:
    """How the encoders compute (vlm_jax.models.layers.Execution); outputs never change.

    attention auto|xla|cudnn, pad_multiple (8 for cuDNN), remat none|full|dots, scan_layers.
    """
    defaults = dict(attention="auto", pad_multiple=1, remat="none", scan_layers=False)
    return ml_collections.ConfigDict({**defaults, **fields})


def tower(variant: str = "", **fields) -> ml_collections.ConfigDict:
    """A tower config: sizes from `variant` ("B/16"), or explicit nonzero width/depth/... fields."""
    sizes = dict(width=0, depth=0, num_heads=0, mlp_dim=0)
    return ml_collections.ConfigDict(dict(variant=variant, **{**sizes, **fields}))


def tiny_tower(**fields) -> ml_collections.ConfigDict:
    """The CPU-scale tower of the `:tiny` configs (a few minutes of training on 2 cores)."""
    return tower("", **{**dict(width=128, depth=4, num_heads=4, mlp_dim=512), **fields})


def tiny_two_tower(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict, *,
                   image_pool: str, causal: bool = False) -> None:
    """The `:tiny` variant of a two-tower family: 128-wide towers, patch 8, then `tiny_run`."""
    c.model.embed_dim = 128
    c.model.image = tiny_tower(patch_size=8, pool=image_pool)
    c.model.text = tiny_tower(max_len=32, causal=causal, pool="eos")
    tiny_run(c, arg)


def tiny_run(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict) -> None:
    """The `:tiny` CPU runs: 600 steps of 32 px images and 24 text tokens, logged every 25."""
    apply_run_args(c, arg, steps=600, image_size=32, text_length=24)
    c.log_every, c.checkpoint_every = 25, 200


def full_run(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict, *,
             text_length: int = 64) -> None:
    """The accelerator runs: 10k steps of 224 px images in bfloat16 (float32 parameters)."""
    apply_run_args(c, arg, steps=10_000, image_size=224, text_length=text_length)
    c.compute_dtype = "bfloat16"


def apply_run_args(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict, *,
                   steps: int, image_size: int, text_length: int) -> None:
    """Copy the shared short args into the config; an arg left at 0 takes the given default."""
    c.batch_size = arg.batch
    c.total_steps = arg.steps or steps
    c.data.image_size = arg.image_size or image_size
    c.data.text_length = arg.text_length or text_length
