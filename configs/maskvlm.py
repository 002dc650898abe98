"""MaskVLM: image and text encoders, an image and a text cross-modality encoder, a pixel
decoder and a token head; loss = ITC + ITM (hard negatives) + MIM (pixels | clean text) + MLM
(tokens | clean image), weight 1 each (our default; the primary text was not checked).

    configs/maskvlm.py:tiny             the CPU demo (32 px world, patch 8)
    configs/maskvlm.py:variant=B/16     ViT-B/16 and a B-sized text encoder, 3-layer cross
                                        encoders (the unofficial implementation's count)

Masking: --config.mask.image_ratio=0.6 (of the patches), --config.mask.text_rate=0.3 (of the
real tokens), our defaults. A term is switched off by its weight: --config.loss.mim_weight=0.
"""

import math

from configs import common
from vlm_jax.configlib import parse_arg
from vlm_jax.data.tokenizer import PAD_ID


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, variant="B/16", batch=0, steps=0, image_size=0,
                    text_length=0)
    c = common.base_config()
    c.trainer = "maskvlm"
    c.data.special_tokens = ("[MASK]",)
    c.loss = dict(contrastive="softmax", variant="gspmd", bidirectional=False,
                  itc_weight=1.0, itm_weight=1.0, mim_weight=1.0, mlm_weight=1.0)
    c.mask = dict(image_ratio=0.6, text_rate=0.3)
    c.model = dict(
        name="maskvlm", execution=common.execution(), embed_dim=512, decoder_depth=1,
        logit_scale_init=math.log(1 / 0.07), max_logit_scale=100.0, pad_id=PAD_ID,
        image=common.tower(arg.variant, pool="cls"),
        text=common.tower(arg.variant.split("/")[0], max_len=64, causal=False, pool="eos"),
        cross=dict(depth=3, num_heads=12, mlp_dim=3072),
    )
    # reconstruction: masked-patch MSE and workdir/mim_reconstructions.png (originals | masked
    # input | rebuilt), vlm_jax/evals/reconstruction.py.
    c.evals.names = ("zeroshot", "retrieval", "compositional", "itm_retrieval",
                     "itm_compositional", "reconstruction")
    if arg.tiny:
        # Eight cross-encoder passes per example (ITM's 3 pairs through both, MIM, MLM), so
        # narrower and smaller-batched than the two-tower tiny configs to train in minutes.
        c.model.embed_dim = 64
        c.model.decoder_depth = 0
        c.model.image = common.tiny_tower(depth=2, patch_size=8, pool="cls", width=64,
                                          mlp_dim=256)
        c.model.text = common.tiny_tower(depth=2, max_len=32, causal=False, pool="eos",
                                         width=64, mlp_dim=256)
        c.model.cross = dict(depth=1, num_heads=4, mlp_dim=256)
        common.tiny_run(c, arg)
        c.batch_size = arg.batch or 32  # batch 0: the variant's own
        c.total_steps = arg.steps or 300
        c.optim.warmup_steps = 30
        c.evals.retrieval_size = 250  # x 16 candidates x 2 directions x 2 splits ITM passes
    else:
        common.full_run(c, arg)
        c.batch_size = arg.batch or 256
    return c
