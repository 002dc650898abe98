"""CLIP: two towers, symmetric softmax InfoNCE; t = ln(1/0.07) at init, exp(t) capped at 100.

    configs/clip.py:tiny                   the CPU demo (32 px world, ~minutes on 2 cores)
    configs/clip.py:variant=B/16           ViT-B/16 at 224 px, 77 text tokens (causal text tower)
"""

import math

from configs import common
from vlm_jax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, variant="B/16", batch=256, steps=0, image_size=0,
                    text_length=0)
    c = common.base_config()
    c.loss = dict(name="softmax", variant="gspmd", bidirectional=False)  # gspmd|gather|ring
    c.model = dict(
        name="two_tower", execution=common.execution(), embed_dim=512,
        logit_scale_init=math.log(1 / 0.07), logit_bias_init=None, max_logit_scale=100.0,
        image=common.tower(arg.variant, patch_size=0, pool="cls"),
        # CLIP's B text tower: width 512, 12 layers, 8 heads.
        text=common.tower("", width=512, depth=12, num_heads=8, mlp_dim=2048, max_len=77,
                          causal=True, pool="eos"),
    )
    if arg.tiny:
        common.tiny_two_tower(c, arg, image_pool="cls", causal=True)
    else:
        common.full_run(c, arg, text_length=77)
    return c
