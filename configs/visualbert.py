"""Single stream (VisualBERT-style): one transformer over patch and text token embeddings,
trained with MLM + ITM only. It is FLAVA's multimodal encoder alone: the unimodal encoders have
depth 0 (their embeddings and norms remain), and the MIM, MMM and contrastive terms are off; the
MLM reads the multimodal text states (FLAVA's MMM-text head), as VisualBERT does.

    configs/visualbert.py:tiny    the CPU demo (3 joint layers over 16 patches + 24 tokens)
"""

from configs import common, flava
from vlm_jax.configlib import parse_arg
from vlm_jax.models import sizes


def get_config(arg=None):
    parsed = parse_arg(arg, tiny=False, variant="B/16", batch=256, steps=0, image_size=0,
                       text_length=0)
    c = flava.get_config(arg)
    c.loss.update(contrastive_weight=0.0, mim_weight=0.0, mlm_weight=0.0, mmm_image_weight=0.0,
                  mmm_text_weight=1.0, itm_weight=1.0)
    # Single-stream ITM with 10% negatives is a weak signal; VisualBERT's alignment uses 50%.
    c.loss.itm_rate = 0.5
    c.mim.target = "pixels"  # no codebook to fit: no image target is used
    # Explicit sizes with depth 0 (a variant's own depth would win over a zero).
    for name in ("image", "text"):
        tower = c.model[name]
        explicit = sizes.decode_variant(tower.variant) if tower.variant else {}
        tower.update({**explicit, "variant": "", "depth": 0})
    if parsed.tiny:
        c.model.multimodal = common.tiny_tower(depth=3)
    else:
        c.model.multimodal.depth = 12
    c.model.mim_dim = 1
    c.evals.names = ()
    return c
