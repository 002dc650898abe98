"""VQ-VAE image tokenizer (van den Oord et al. 2017; EMA codebook as in VQ-VAE-2): images ->
a grid of discrete codes and back, for early-fusion models (Chameleon, CM3leon) and FLAVA's
masked-image-modelling targets. loss = pixel MSE on [-1, 1] + 0.25 x commitment.

    configs/vq.py:tiny                  the CPU demo: 32 px world images -> 8 x 8 codes of 128
    configs/vq.py:tiny,quantizer=st     straight-through codebook trained by the codebook loss
    configs/vq.py                       256 px -> 16 x 16 codes of 8192 (Chameleon's grid)

The quantiser's statistics are parameters under the optimizer rule "assign" (set here from
`quantizer`; vlm_jax/trainers/vq.py explains how the codebook update reaches them).
"""

from configs import common
from vlm_jax.configlib import parse_arg
from vlm_jax.models import vq


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, quantizer="ema", batch=0, steps=0, image_size=0)
    c = common.base_config()
    c.trainer = "vq"
    c.model = dict(name="vq", channels=(128, 128, 256, 256), res_blocks=2, code_dim=256,
                   codebook_size=8192, quantizer=arg.quantizer)
    c.loss = dict(commitment_weight=0.25, codebook_weight=1.0)  # codebook_weight: "st" only
    # The codebook update (models/vq.codebook_update). A code is dead when its count EMA is
    # below dead_count or it went unused restart_after steps (0: no such limit); with restart
    # ("ema" only) it restarts at a random encoder output of the batch.
    c.codebook = dict(decay=0.99, epsilon=1e-5, dead_count=0.01, restart_after=100,
                      restart=arg.quantizer == "ema")
    c.optim.param_rules = ((vq.state_param_regex(arg.quantizer), "assign"),)
    c.data.format = "image_only"
    c.evals.names = ()  # vlm_jax.vq_tokenizer evaluates a finished run (MSE, usage, a PNG)
    if arg.tiny:
        # Narrow at 16 x 16, where the strided and transposed convs cost the most.
        c.model.update(channels=(16, 32), res_blocks=1, code_dim=32, codebook_size=128)
        c.codebook.restart_after = 20
        c.optim.update(lr=2e-3, warmup_steps=50)
        c.batch_size = arg.batch or 32
        c.total_steps, c.data.image_size = arg.steps or 800, arg.image_size or 32
        c.log_every, c.checkpoint_every = 25, 200
    else:  # float32 throughout (the model takes no compute dtype)
        c.batch_size = arg.batch or 256
        c.total_steps, c.data.image_size = arg.steps or 20_000, arg.image_size or 256
    return c
