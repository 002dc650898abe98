"""BLIP-2 stage 1: a Q-Former (learned queries, cross-attention to a frozen image encoder
every other layer) trained with ITC + ITM + ITG, weight 1 each, label smoothing 0.1.

    configs/blip2.py:tiny                          the CPU demo: SigLIP tiny's ViT, frozen
    configs/blip2.py:tiny,init_from=runs/siglip_tiny   ... with the ViT of a trained run
    configs/blip2.py:variant=B/16                  ViT-B/16 image encoder, BERT-base Q-Former

The image encoder is frozen through optim.param_rules (("image_tower/.*", "freeze")), as LiT
locks a tower; `init_from` loads only its parameters (init_from_regex "image_tower/.*"), so
the run's image tower must have the source's sizes (SigLIP tiny's for `:tiny`). Without
init_from the Q-Former learns to read fixed random features: the mechanics, not BLIP-2.
Text enters the Q-Former behind a task token: [CLS] (ITC, ITM) or [DEC] (ITG), two special
tokens added after the tokenizer's base vocabulary.
"""

import math

from configs import common
from vlm_jax.configlib import ConfigError, parse_arg

TASK_TOKENS = ("[CLS]", "[DEC]")
STAGES = (1,)
TINY_STEPS = 300
TINY_BATCH = 128


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, stage=1, init_from="", variant="B/16", batch=0,
                    steps=0, image_size=0, text_length=0)
    if arg.stage not in STAGES:
        raise ConfigError(f"config arg stage={arg.stage}: only stage 1 (the Q-Former with "
                          "ITC + ITM + ITG) is implemented; stage 2 needs the LM (models/lm.py)")
    c = common.base_config()
    c.trainer = "blip2"
    c.loss = dict(itc_weight=1.0, itm_weight=1.0, itg_weight=1.0, label_smoothing=0.1,
                  variant="gspmd", bidirectional=False)  # variant (ITC): gspmd|gather|ring
    c.data.special_tokens = TASK_TOKENS
    base = c.data.vocab_size  # the world tokenizer's: the task tokens come right after it
    c.model = dict(
        name="blip2", execution=common.execution(), embed_dim=256,
        # BLIP-2's temperature 0.07 as a log-scale ln(1/0.07), capped like CLIP's.
        logit_scale_init=math.log(1 / 0.07), max_logit_scale=100.0,
        cls_id=base, dec_id=base + 1,
        image=common.tower(arg.variant, patch_size=0, pool="map"),
        # BERT-base sizes, 32 queries, cross-attention in every other layer.
        qformer=common.tower("B", max_len=64, num_queries=32, cross_attention_frequency=2,
                             ln_eps=1e-12, activation="gelu_exact"),
    )
    c.optim.param_rules = (("image_tower/.*", "freeze"),)
    c.optim.lr, c.optim.weight_decay = 1e-4, 0.05  # BLIP-2 stage 1 (cosine to 1e-5)
    if arg.init_from:
        c.init_from, c.init_from_regex = arg.init_from, "image_tower/.*"
    # The ITC scorer's evals, then the ITM matcher's: retrieval reranked, probes scored by ITM.
    c.evals.names = ("zeroshot", "retrieval", "compositional", "itm_retrieval",
                     "itm_compositional")
    if arg.tiny:
        c.model.embed_dim = 128
        c.model.image = common.tiny_tower(patch_size=8, pool="map")  # SigLIP tiny's ViT
        c.model.qformer = common.tiny_tower(
            depth=2, max_len=32, num_queries=8, cross_attention_frequency=2, ln_eps=1e-12,
            activation="gelu_exact")
        c.optim.lr, c.optim.weight_decay = 1e-3, 1e-4  # the tiny configs' (fast on the world)
        common.tiny_run(c, arg)
        # A step runs the Q-Former five times (queries, text, 3B matching pairs, captioning):
        # measured ~55-80 examples/s on 2 cores, so :tiny takes 300 steps of batch 128 (~8 min
        # with compile and evals) instead of SigLIP tiny's 600 of 256.
        c.total_steps = arg.steps or TINY_STEPS
        c.batch_size = arg.batch or TINY_BATCH  # batch 0: the variant's own
    else:
        common.full_run(c, arg)
        c.batch_size = arg.batch or 256
        c.data.text_length = 32  # BLIP-2's max_txt_len
    return c
