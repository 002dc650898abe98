"""Chameleon: early fusion on the LLaMA-style LM, images as a frozen VQ's codes in one vocabulary
(models/early_fusion.py, trainers/early_fusion.py).

    configs/chameleon.py:tiny,vq=runs/vq_tiny   width 128, 4 layers, 4 heads (2 KV heads),
                               QK-norm per head; world documents of 1-2 images (caption after
                               or, half of the time, before each image); CPU minutes
    configs/chameleon.py:vq=DIR                 a 12-layer width-768 model for accelerators
    ...,swin_norm=True                          Chameleon-34B's x + norm(f(x)) blocks
    configs/chameleon.py:tiny,t2i,vq=DIR        the text -> image variant: one image per
                               document, 80% caption-first, shorter rows, more steps in the
                               same CPU minutes (docs/text_to_image.md)
    ...,caption_first=F,max_images=M            those two knobs alone

`vq` is a configs/vq.py run: its codebook size, image size and code grid set
data.image_codes, data.image_size and data.image_tokens (read from DIR/config.json). Without it
the sizes are configs/vq.py:tiny's (128 codes, 32 px, 8 x 8) and training asks for the run.
"""

import json
import os

from configs import common
from vlm_jax.configlib import parse_arg

# configs/vq.py:tiny: 128 codes; 32 px images, downsampled 4x (two stages) -> 8 x 8 codes.
TINY_VQ = dict(codebook_size=128, image_size=32, downsampling=4)


def vq_sizes(workdir: str) -> dict:
    """codebook_size, image_size and downsampling of the VQ run in `workdir`."""
    if not workdir:
        return dict(TINY_VQ)
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"vq={workdir} holds no run (no config.json): train configs/vq.py:tiny "
                         "there first")
    with open(path) as f:
        run = json.load(f)["config"]
    if run.get("trainer") != "vq":
        raise ValueError(f"vq={workdir} is a {run.get('trainer')!r} run, not a configs/vq.py one")
    return dict(codebook_size=run["model"]["codebook_size"], image_size=run["data"]["image_size"],
                downsampling=2 ** len(run["model"]["channels"]))


def get_config(arg=None):
    # image_size: the VQ run's (any other is refused when training starts).
    arg = parse_arg(arg, tiny=False, vq="", swin_norm=False, batch=0, steps=0, image_size=0,
                    text_length=0, t2i=False, caption_first=-1.0, max_images=0)
    c = common.base_config()
    c.trainer = "early_fusion"
    c.vq = arg.vq
    sizes = vq_sizes(arg.vq)
    grid = sizes["image_size"] // sizes["downsampling"]
    # caption_first: the fraction of documents whose captions precede their images.
    # t2i: most documents caption-first (the image-first rest teach the unconditional stream
    # BOS <boi> that classifier-free guidance runs), one image each (shorter, faster rows).
    default_first = 0.8 if arg.t2i else 0.5
    c.loss = dict(z_loss_weight=1e-5,
                  caption_first=arg.caption_first if arg.caption_first >= 0 else default_first)
    c.model = dict(
        name="early_fusion", execution=common.execution(), width=768, depth=12, num_heads=12,
        num_kv_heads=4, head_dim=0, mlp_dim=2048, rope_theta=10000.0, norm_eps=1e-5,
        tie_embeddings=False, qk_norm=True, qk_norm_type="head_layernorm", qk_norm_eps=1e-5,
        norm_position="output" if arg.swin_norm else "pre")
    c.data.format = "interleaved"
    c.data.max_images = arg.max_images or (1 if arg.t2i else 2)
    c.data.image_size = sizes["image_size"]
    c.data.image_tokens = grid * grid
    c.data.image_codes = sizes["codebook_size"]
    # Chameleon's optimiser (AdamW 0.9 / 0.95, weight decay 0.1, clip 1.0).
    c.optim.update(b1=0.9, b2=0.95, weight_decay=0.1, grad_clip_norm=1.0)
    # Decoding of captions (vlm_jax.decoding.DecodeSettings); max_len 0: data.text_length.
    c.decode = dict(strategy="greedy", max_len=24, temperature=1.0, top_k=0, top_p=1.0,
                    beam_size=4, length_penalty=1.0)
    c.evals.names = ("captioning", "vqa", "pope")
    # BOS, per image <boi> codes <eoi> and a caption (<= ~20 tokens), the closing sentence, EOS.
    text_length = 1 + c.data.max_images * (c.data.image_tokens + 2 + 20) + 16 + 1
    if arg.tiny:
        c.model.update(width=128, depth=4, num_heads=4, num_kv_heads=2, mlp_dim=384)
        # 200 steps: 1.6-1.9 s a step measured at nice 19 on the loaded 2-core CPU (load 6).
        # t2i: 400 steps of the ~104-token one-image rows (sized from a measured short run).
        common.apply_run_args(c, arg, steps=400 if arg.t2i else 200,
                              image_size=sizes["image_size"], text_length=text_length)
        c.batch_size = arg.batch or 16
        c.optim.warmup_steps = 30
        c.log_every, c.checkpoint_every = 25, c.total_steps
        c.evals.update(captioning_size=64, vqa_size=64, pope_size=16)
    else:
        common.apply_run_args(c, arg, steps=10_000, image_size=sizes["image_size"],
                              text_length=text_length)
        c.batch_size = arg.batch or 256
        c.compute_dtype = "bfloat16"
    return c
