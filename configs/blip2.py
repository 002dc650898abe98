"""BLIP-2 stage 1: a Q-Former (learned queries, cross-attention to a frozen image encoder
every other layer) trained with ITC + ITM + ITG, weight 1 each, label smoothing 0.1.
Stage 2: the stage-1 Q-Former's query outputs through one linear layer into a frozen LM as a
soft prompt, LM loss on the caption (trainer prefix_lm, model prefix_vlm, connector "qformer").

    configs/blip2.py:tiny                          the CPU demo: SigLIP tiny's ViT, frozen
    configs/blip2.py:tiny,init_from=runs/siglip_tiny   ... with the ViT of a trained run
    configs/blip2.py:variant=B/16                  ViT-B/16 image encoder, BERT-base Q-Former
    configs/blip2.py:tiny,stage=2,stage1=runs/blip2_tiny,lm=runs/lm_tiny
                                                   stage 2 on stage 1's tower + Q-Former and
                                                   the world LM; Q-Former + projector train
    configs/blip2.py:tiny,stage=2,stage1=...,smollm2   SmolLM2-135M-Instruct as the LM
    configs/blip2.py:tiny,stage=2,...,train_lm     the LM trains too (BLIP-2 keeps it frozen)

The image encoder is frozen through optim.param_rules (("image_tower/.*", "freeze")), as LiT
locks a tower; `init_from` loads only its parameters (init_from_regex "image_tower/.*"), so
the run's image tower must have the source's sizes (SigLIP tiny's for `:tiny`). Without
init_from the Q-Former learns to read fixed random features: the mechanics, not BLIP-2.
Text enters the Q-Former behind a task token: [CLS] (ITC, ITM) or [DEC] (ITG), two special
tokens added after the tokenizer's base vocabulary.
"""

import math

from configs import backbone_lm, common, qformer_lm
from vlm_jax.configlib import ConfigError, parse_arg

TASK_TOKENS = ("[CLS]", "[DEC]")
STAGES = (1, 2)
TINY_STEPS = 300
TINY_BATCH = 128
STAGE2_TINY_STEPS = 400
STAGE2_TINY_BATCH = 64


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, stage=1, init_from="", variant="B/16", batch=0,
                    steps=0, image_size=0, text_length=0, stage1="", lm="", smollm2=False,
                    train_lm=False)
    if arg.stage not in STAGES:
        raise ConfigError(f"config arg stage={arg.stage}: use 1 (the Q-Former with ITC + ITM + "
                          "ITG) or 2 (its queries as the soft prompt of an LM)")
    if arg.stage == 2:
        return _stage2(arg)
    if arg.stage1 or arg.lm or arg.smollm2 or arg.train_lm:
        raise ConfigError("config args stage1= / lm= / smollm2 / train_lm are stage 2's; add "
                          "stage=2 or drop them")
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
        # BERT-base sizes, 32 queries, cross-attention in every other layer (stage 2 reads
        # the same sections: configs/qformer_lm.py).
        image=qformer_lm.image_section(arg.tiny, arg.variant),
        qformer=qformer_lm.qformer_section(arg.tiny),
    )
    c.optim.param_rules = (("image_tower/.*", "freeze"),)
    c.optim.lr, c.optim.weight_decay = 1e-4, 0.05  # BLIP-2 stage 1 (cosine to 1e-5)
    if arg.init_from:
        c.init_from, c.init_from_regex = arg.init_from, "image_tower/.*"
    # The ITC scorer's evals, then the ITM matcher's: retrieval reranked, probes scored by ITM.
    c.evals.names = ("zeroshot", "retrieval", "compositional", "itm_retrieval",
                     "itm_compositional")
    if arg.tiny:
        c.model.embed_dim = 128  # image: SigLIP tiny's ViT; Q-Former: 2 layers, 8 queries
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


def _stage2(arg):
    """BLIP-2 stage 2 (the decoder-only LM form, OPT's): image tower and LM frozen, Q-Former
    and projector trained on captions, BOS <query embeddings>*Q caption EOS."""
    backbone_lm.check_lm_arg(arg)
    if arg.init_from:
        raise ConfigError("stage 2 loads stage 1's workdir with stage1= (image tower and "
                          "Q-Former) and the LM with lm= / smollm2; drop init_from=")
    c = common.base_config()
    c.trainer = "prefix_lm"
    c.model = qformer_lm.model_section(arg)
    backbone_lm.set_tokenizer(c, arg.smollm2)
    frozen = (("image_tower/.*", "freeze"),) + (() if arg.train_lm else (("lm/.*", "freeze"),))
    c.optim.param_rules = frozen
    c.init_from = qformer_lm.init_from(arg.stage1, c.model.qformer,
                                       "smollm2" if arg.smollm2 else arg.lm)
    backbone_lm.generative_evals(c)
    if arg.tiny:
        c.optim.warmup_steps = 50
        c.log_every, c.checkpoint_every = 25, 200
        common.apply_run_args(c, arg, steps=STAGE2_TINY_STEPS, image_size=32, text_length=24)
        c.batch_size = arg.batch or STAGE2_TINY_BATCH  # batch 0: the variant's own
    else:
        common.full_run(c, arg)
        c.batch_size = arg.batch or 256
        c.optim.lr, c.optim.weight_decay = 1e-4, 0.05  # BLIP-2 stage 2 (cosine to 5e-5)
    return c
