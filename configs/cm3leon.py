"""CM3leon (Yu et al., 2023): Chameleon's early-fusion LM (models/early_fusion.py) trained with
retrieval-augmented CM3 pretraining, then instruction tuning (trainers/cm3leon.py).

    configs/cm3leon.py:tiny,stage=1,vq=DIR,retriever=DIR   each world caption document after
                        the 2 documents a contrastive run retrieves for it from a bank of the
                        first 4096 train documents; CM3 infilling on half of the rows
    ...,retrieved=0                                         the same pretraining without
                        retrieval: same documents, order, sequence budget and steps
    configs/cm3leon.py:tiny,stage=2,stage1=DIR              from stage 1's workdir: captioning,
                        VQA and text -> image as prompt -> answer, the loss on the answers

`vq` is a configs/vq.py run (it fixes the code sizes, as in configs/chameleon.py); `retriever`
a contrastive run (configs/siglip.py:tiny) whose scorer keys the bank
(data/cm3leon_sources.py). Stage 2 takes the model, tokenizer and VQ of stage 1's run.
"""

import json
import os

from configs import chameleon, common
from vlm_jax.configlib import ConfigError, parse_arg

CM3_TOKENS = ("<mask>", "<infill>")
CAPTION_BUDGET = 28  # tokens per caption in the sequence budget (world captions: p99 27, mean 10)
BUDGET_RETRIEVED = 2  # retrieved documents the stage-1 budget holds, whatever `retrieved` is


def stage1_record(workdir: str) -> dict:
    """The config stage 1 recorded in workdir/config.json (a CM3leon stage-1 run)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"stage1={workdir} holds no run (no config.json): train "
                          "configs/cm3leon.py:tiny,stage=1,vq=...,retriever=... there first")
    with open(path) as f:
        run = json.load(f)["config"]
    if run.get("trainer") != "cm3leon" or run.get("loss", {}).get("stage") != 1:
        raise ConfigError(f"stage1={workdir} is not a CM3leon stage-1 run (trainer "
                          f"{run.get('trainer')!r}); pass a configs/cm3leon.py:stage=1 workdir")
    return run


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, stage=1, vq="", retriever="", retrieved=2, stage1="",
                    bank_size=0, batch=0, steps=0, text_length=0, image_size=0)
    if arg.image_size:
        raise ConfigError("image_size is the VQ run's (configs/vq.py:image_size=...); drop it")
    if arg.stage not in (1, 2):
        raise ConfigError(f"config arg stage={arg.stage}: use 1 (retrieval-augmented CM3 "
                          "pretraining) or 2 (instruction tuning, stage1=<stage-1 workdir>)")
    c = common.base_config()
    c.trainer = "cm3leon"
    c.loss = dict(stage=arg.stage, z_loss_weight=1e-5, caption_first=0.5,
                  infill_probability=0.5, text_to_image=0.5)
    c.data.format = "interleaved"
    c.data.special_tokens = CM3_TOKENS
    c.optim.update(b1=0.9, b2=0.95, weight_decay=0.1, grad_clip_norm=1.0)
    c.decode = dict(strategy="greedy", max_len=24, temperature=1.0, top_k=0, top_p=1.0,
                    beam_size=4, length_penalty=1.0)
    c.evals.names = ("captioning", "vqa", "pope")
    if arg.stage == 1:
        if not arg.vq:
            raise ConfigError("stage 1 needs vq=<a configs/vq.py:tiny workdir> (the image "
                              "tokenizer): train one and pass configs/cm3leon.py:tiny,vq=DIR,...")
        if arg.retrieved > 0 and not arg.retriever:
            raise ConfigError("stage 1 needs retriever=<a configs/siglip.py:tiny workdir> to "
                              "retrieve documents; pass it, or retrieved=0 for plain pretraining")
        if arg.retrieved > BUDGET_RETRIEVED or arg.retrieved < 0:
            raise ConfigError(f"retrieved={arg.retrieved}: use 0..{BUDGET_RETRIEVED} (the "
                              "sequence budget holds that many)")
        c.vq = arg.vq
        sizes = chameleon.vq_sizes(arg.vq)
        grid = sizes["image_size"] // sizes["downsampling"]
        c.model = dict(
            name="early_fusion", execution=common.execution(), width=768, depth=12,
            num_heads=12, num_kv_heads=4, head_dim=0, mlp_dim=2048, rope_theta=10000.0,
            norm_eps=1e-5, tie_embeddings=False, qk_norm=True, qk_norm_type="head_layernorm",
            qk_norm_eps=1e-5, norm_position="pre")
        c.data.source = "retrieval"
        # max_score 0.95, not CM3leon's 0.9: measured on the SigLIP tiny keys of the bank,
        # a key's norm is ~0.97 (its image and text embeddings nearly agree) and documents
        # of the same objects but other images score 0.90-0.94 (more than half of the bank
        # has one above 0.9): only scores near a key's own norm squared are duplicates.
        c.data.retrieval = dict(retriever=arg.retriever, k=arg.retrieved,
                                bank_size=arg.bank_size or 4096, max_score=0.95,
                                document_images=1, cache_dir="")
        # The budget: BOS, 2 retrieved + 1 own (<boi> codes <eoi> caption), EOS; retrieved=0
        # keeps it (padding), so both variants cost the same. CM3's move adds 2 tokens in the
        # loss: the model sees data.text_length + 2.
        c.data.max_images = BUDGET_RETRIEVED + 1
        c.data.image_size = sizes["image_size"]
        c.data.image_tokens = grid * grid
        c.data.image_codes = sizes["codebook_size"]
        text_length = 1 + c.data.max_images * (c.data.image_tokens + 2 + CAPTION_BUDGET) + 1
        default_steps = 160 if arg.tiny else 10_000
    else:
        if not arg.stage1:
            raise ConfigError("stage 2 needs stage1=<a configs/cm3leon.py:tiny,stage=1 workdir> "
                              "(it starts from that run's weights)")
        if arg.vq or arg.retriever:
            raise ConfigError("stage 2 takes the VQ from stage 1's run and retrieves nothing; "
                              "drop vq= / retriever=")
        run = stage1_record(arg.stage1)
        c.vq = run["vq"]
        c.model = run["model"]  # the same transformer, filled from stage 1
        for key in ("image_size", "image_tokens", "image_codes", "tokenizer", "vocab_size",
                    "world_seed"):
            c.data[key] = run["data"][key]
        c.init_from = arg.stage1
        c.data.source = "instructions"
        c.data.max_images = 1
        # BOS <boi> codes <eoi>, a caption or a question and its answer, EOS.
        text_length = 1 + c.data.image_tokens + 2 + CAPTION_BUDGET + 1
        default_steps = 300 if arg.tiny else 2_000
        c.optim.lr = 3e-4
    if arg.tiny:
        if arg.stage == 1:
            c.model.update(width=128, depth=4, num_heads=4, num_kv_heads=2, mlp_dim=384)
        common.apply_run_args(c, arg, steps=default_steps, image_size=c.data.image_size,
                              text_length=text_length)
        c.batch_size = arg.batch or 16
        c.optim.warmup_steps = 30 if arg.stage == 1 else 20
        c.log_every, c.checkpoint_every = 20, c.total_steps
        c.evals.update(captioning_size=64, vqa_size=64, pope_size=16)
    else:
        common.apply_run_args(c, arg, steps=default_steps, image_size=c.data.image_size,
                              text_length=text_length)
        c.batch_size = arg.batch or 256
        c.compute_dtype = "bfloat16"
    return c
