"""CoCa: ViT + attentional poolers; a text decoder split into a unimodal half ([CLS] -> text
embedding) and a multimodal half (cross-attention to the image) -> captions.
loss = 1.0 x CLIP softmax loss + 2.0 x captioning cross-entropy (open_clip's CoCaLoss).

    configs/coca.py:tiny                 the CPU demo (32 px world, 16 caption queries)
    configs/coca.py:variant=B/16         ViT-B/16; 12 + 12 decoder layers at width 512 (open_clip's
                                         coca_ViT-B-32 text sizes), 256 caption queries
"""

import math

from configs import common
from vlm_jax.configlib import parse_arg
from vlm_jax.data.tokenizer import BOS_ID, PAD_ID


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, variant="B/16", text_variant="M", batch=256, steps=0,
                    image_size=0, text_length=0)
    c = common.base_config()
    c.trainer = "coca"
    c.loss = dict(contrastive="softmax", contrastive_weight=1.0, caption_weight=2.0,
                  variant="gspmd", bidirectional=False)  # variant: gspmd|gather|ring
    c.model = dict(
        name="coca", execution=common.execution(), embed_dim=512, caption_queries=256, pool_heads=8,
        logit_scale_init=math.log(1 / 0.07), max_logit_scale=100.0,
        pad_id=PAD_ID, bos_id=BOS_ID,
        ln_eps=1e-6, activation="gelu",  # poolers + decoder (open_clip: 1e-5, gelu_exact)
        # CoCa pools the ViT tokens itself, so the tower's own pool is the parameter-free "gap".
        image=common.tower(arg.variant, patch_size=0, pool="gap"),
        text=common.tower(arg.text_variant, max_len=64),  # the unimodal half
        multimodal=common.tower(arg.text_variant),  # same width as the text
    )
    # Contrastive evals of the two towers, then the generative ones (captions, likelihoods).
    c.evals.names = ("zeroshot", "retrieval", "compositional", "captioning", "vqa", "pope",
                     "genzeroshot")
    # Decoding for captions (vlm_jax.decoding.DecodeSettings); max_len 0: data.text_length.
    c.decode = dict(strategy="greedy", max_len=0, temperature=1.0, top_k=0, top_p=1.0,
                    beam_size=4, length_penalty=1.0)
    if arg.tiny:
        c.model.embed_dim = 128
        c.model.caption_queries = 16  # 32 px / patch 8 = 16 image tokens
        c.model.pool_heads = 4
        c.model.image = common.tiny_tower(patch_size=8, pool="gap")
        # Four text blocks, as in the other tiny configs: two unimodal, and one multimodal
        # layer (a self-attention and a cross-attention block). Near SigLIP tiny's step time.
        c.model.text = common.tiny_tower(depth=2, max_len=32)
        c.model.multimodal = common.tiny_tower(depth=1)
        common.tiny_run(c, arg)
    else:
        common.full_run(c, arg)
    return c
