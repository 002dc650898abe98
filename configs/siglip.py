"""SigLIP: two towers, sigmoid loss per pair; t = exp(ln 10), b = -10 at init.

    configs/siglip.py:tiny                 the CPU demo (32 px world, ~minutes on 2 cores)
    configs/siglip.py:variant=B/16         ViT-B/16 at 224 px, 64 text tokens
    configs/siglip.py:variant=So400m/14,batch=32768
"""

import math

from configs import common
from vlm_jax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, variant="B/16", text_variant="B", batch=256, steps=0,
                    image_size=0, text_length=0)
    c = common.base_config()
    c.loss = dict(name="sigmoid", variant="gspmd", bidirectional=False)  # gspmd|gather|ring
    c.model = dict(
        name="two_tower", execution=common.execution(), embed_dim=768,
        logit_scale_init=math.log(10.0), logit_bias_init=-10.0, max_logit_scale=float("inf"),
        image=common.tower(arg.variant, patch_size=0, pool="map"),
        text=common.tower(arg.text_variant, max_len=64, causal=False, pool="eos"),
    )
    if arg.tiny:
        common.tiny_two_tower(c, arg, image_pool="map")
    else:
        common.full_run(c, arg)
    return c
