"""Frozen (Tsimpoukelli et al., 2021): a vision encoder and a linear map to n prefix token
embeddings are trained, captioning loss through a frozen LM; few-shot VQA by interleaved
image/text prompts at inference.

    configs/frozen.py:tiny,lm=runs/lm_tiny      the CPU demo on the world LM (configs/lm.py:tiny)
    configs/frozen.py:tiny,lm=runs/lm_tiny,image=runs/siglip_tiny   the ViT starts from SigLIP's
    configs/frozen.py:tiny,smollm2               SmolLM2-135M-Instruct as the frozen LM
    configs/frozen.py:tiny,prefix_tokens=4       n = 4 prefix embeddings (our default 2)

The sequence is BOS, the n prefix embeddings, the caption and EOS, attended causally (Frozen
uses no prefix-LM mask); the loss is on the caption and EOS. The LM is frozen by
`optim.param_rules` ("lm/.*" -> freeze): no weight gradients, no optimizer state; its forward
and the gradients of its activations (which the image side needs) are all it costs.
"""

from configs import backbone_lm, common
from vlm_jax.configlib import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, smollm2=False, lm="", image="", prefix_tokens=2,
                    variant="B/16", batch=0, steps=0, image_size=0, text_length=0)
    backbone_lm.check_lm_arg(arg)
    c = common.base_config()
    c.trainer = "prefix_lm"
    c.model = dict(
        name="prefix_vlm", execution=common.execution(), connector="prefix",
        num_prefix_tokens=arg.prefix_tokens,
        image=common.tower(arg.variant, patch_size=0, pool="map"),
        lm=backbone_lm.lm_section(arg.smollm2),
    )
    backbone_lm.set_tokenizer(c, arg.smollm2)
    c.optim.param_rules = (("lm/.*", "freeze"),)
    c.init_from = backbone_lm.init_entries(
        lm="smollm2" if arg.smollm2 else arg.lm, image_tower=arg.image)
    backbone_lm.generative_evals(c, shots=2)
    if arg.tiny:
        c.model.image = common.tiny_tower(patch_size=8, pool="map")  # SigLIP tiny's tower
        common.apply_run_args(c, arg, steps=500, image_size=32, text_length=24)
        c.batch_size = arg.batch or 64  # batch 0: the variant's own (tiny 64, else 256)
        c.log_every, c.checkpoint_every = 25, 250
        c.optim.warmup_steps = 50
    else:
        common.full_run(c, arg)
        c.batch_size = arg.batch or 256
    return c
