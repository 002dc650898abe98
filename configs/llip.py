"""Llip: K mixture tokens on the ViT, mixed per caption by one cross-attention; sigmoid loss.

    configs/llip.py:tiny                   the CPU demo (SigLIP tiny's towers, K = 8)
    configs/llip.py:tiny,loss=softmax      the same with the symmetric softmax loss
    configs/llip.py:variant=B/16           ViT-B/16 at 224 px, K = 64 mixture tokens

Our defaults (not checked against the paper): attention temperature tau = 5, the SigLIP
init t = ln 10, b = -10 for the sigmoid loss, CLIP's t = ln(1/0.07) capped at 100 for softmax.
"""

import math

from configs import common
from vlm_jax.configlib import ConfigError, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, variant="B/16", text_variant="B", loss="sigmoid",
                    mixture_tokens=0, temperature=5.0, batch=256, steps=0, image_size=0,
                    text_length=0)
    if arg.loss not in ("sigmoid", "softmax"):
        raise ConfigError(f"config arg loss={arg.loss!r}: use sigmoid or softmax")
    c = common.base_config()
    c.trainer = "llip"
    c.loss = dict(name=arg.loss, variant="gspmd", bidirectional=False)  # gspmd|gather|ring
    if arg.loss == "sigmoid":
        scale = dict(logit_scale_init=math.log(10.0), logit_bias_init=-10.0,
                     max_logit_scale=float("inf"))
    else:  # a constant bias cancels in the softmax, so none is learned
        scale = dict(logit_scale_init=math.log(1 / 0.07), logit_bias_init=None,
                     max_logit_scale=100.0)
    c.model = dict(
        name="llip", execution=common.execution(), embed_dim=768,
        num_mixture_tokens=arg.mixture_tokens or 64, temperature=arg.temperature, **scale,
        # The pooled output is unused (the mixture tokens are the image's output): "gap"
        # pools without parameters.
        image=common.tower(arg.variant, patch_size=0, pool="gap"),
        text=common.tower(arg.text_variant, max_len=64, causal=False, pool="eos"),
    )
    if arg.tiny:
        common.tiny_two_tower(c, arg, image_pool="gap")
        c.model.num_mixture_tokens = arg.mixture_tokens or 8
    else:
        common.full_run(c, arg)
    return c
