"""FLAVA: ViT image encoder, text encoder, multimodal encoder over both; MIM + MLM + global
contrastive + MMM (image, text) + ITM, weight 1 each (HF FlavaForPreTraining's defaults).

    configs/flava.py:tiny            the CPU demo (32 px world, patch 8, k-means MIM codes)
    configs/flava.py:variant=B/16    ViT-B/16 towers, a 6-layer multimodal encoder (FLAVA's)
    configs/flava.py:tiny,unimodal=0.25   a quarter of the examples unimodal: data.mixture =
                                     (("caption", 0.75), ("image_only", 0.125),
                                      ("text_only", 0.125)); MIM trains on every row with an
                                     image, MLM on every row with text, contrastive / MMM /
                                     ITM on the paired rows (trainers/flava.py)

A term is switched off by its weight: --config.loss.mim_weight=0. MIM targets:
--config.mim.target=pixels|kmeans|vq (vq: with --config.mim.vq_workdir=<a configs/vq.py run>
and --config.model.mim_dim=<its codebook size>). How this differs from the reference:
docs/masking.md.
"""

import math

from configs import common
from vlm_jax.configlib import parse_arg
from vlm_jax.data.tokenizer import PAD_ID


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, variant="B/16", batch=256, steps=0, image_size=0,
                    text_length=0, unimodal=0.0)
    c = common.base_config()
    c.trainer = "flava"
    c.data.special_tokens = ("[MASK]",)
    c.loss = dict(variant="gspmd", bidirectional=False,  # the contrastive term's sharding
                  contrastive_weight=1.0, mim_weight=1.0, mlm_weight=1.0, mmm_image_weight=1.0,
                  mmm_text_weight=1.0, itm_weight=1.0,
                  itm_rate=0.1,  # examples/flava's itm_probability
                  mlm_rate=0.15)
    c.model = dict(
        name="flava", execution=common.execution(), embed_dim=768,
        ln_eps=1e-12, activation="gelu_exact", logit_scale_init=math.log(1 / 0.07),
        log_scale_range=(0.0, math.log(100.0)),
        mim_dim=1024,  # = mim.num_codes for k-means codes; p*p*3 for pixels (set below)
        pad_id=PAD_ID,
        image=common.tower(arg.variant),
        text=common.tower(arg.variant.split("/")[0], max_len=78),
        multimodal=common.tower(arg.variant.split("/")[0], depth=6),
    )
    # MIM targets (vlm_jax/mim_targets.py); mask_ratio 75/196 with blocks >= 16 of 196
    # patches, scaled to the grid (masking.beit_mask_sizes).
    # target "kmeans" saves its codebook in the workdir (mim_kmeans.npy, reused on resume);
    # "vq" takes the codes of the VQ run in vq_workdir (its grid = the patch grid, and
    # model.mim_dim = its codebook size).
    c.mim = dict(target="kmeans", num_codes=1024, fit_images=512, mask_ratio=75 / 196,
                 vq_workdir="")
    c.evals.names = ("zeroshot", "retrieval", "compositional")
    if arg.unimodal:
        if not 0.0 < arg.unimodal < 1.0:
            raise ValueError(f"unimodal={arg.unimodal} is the fraction of unimodal examples: "
                             "give one in (0, 1)")
        half = arg.unimodal / 2  # split evenly between image-only and text-only examples
        c.data.mixture = (("caption", 1.0 - arg.unimodal), ("image_only", half),
                          ("text_only", half))
    if arg.tiny:
        c.model.embed_dim = 64
        c.mim.update(num_codes=64, fit_images=256)
        c.model.mim_dim = 64
        c.model.image = common.tiny_tower(depth=2, patch_size=8)
        c.model.text = common.tiny_tower(depth=2, max_len=32)
        c.model.multimodal = common.tiny_tower(depth=1)
        common.tiny_run(c, arg)
        # A step runs both towers twice (clean and masked) and the fusion encoder: ~110-150
        # examples/s on 2 cores, so :tiny takes 200 steps of batch 256 (~8 min with compile).
        c.total_steps = arg.steps or 200
    else:
        common.full_run(c, arg, text_length=77)
    return c
