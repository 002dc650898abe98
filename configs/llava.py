"""LLaVA (Liu et al., 2023) and LLaVA-1.5: image features from a trained image tower (hidden
states below its last block, CLS dropped) through a projector into the LM's sequence, where
the chat template's image placeholders stand. Two stages, one trainer (trainers/prefix_lm.py):

    stage 1: projector only (tower and LM frozen), on captions: BOS <image>*N caption EOS;
    stage 2: projector + LM (tower frozen), on the world's multi-turn instruction data:
             BOS "user:" <image>*N question "assistant:" answer EOS ...; loss on each answer
             and its EOS only.

    configs/llava.py:tiny,stage=1,image=runs/siglip_tiny,lm=runs/lm_tiny
    configs/llava.py:tiny,stage=2,stage1=runs/llava1     stage 2 starts from stage 1's workdir
    configs/llava.py:tiny,stage=1,projector=linear       LLaVA's linear projector (default mlp:
                                                         LLaVA-1.5's Linear-GELU-Linear)
    configs/llava.py:tiny,stage=1,smollm2,image=...      SmolLM2-135M-Instruct as the LM

N is the tower's patch count (16 at 32 px, patch 8). The image tower is the SigLIP tiny tower
(pool "map", whose head is built but unused), so `image=` loads a contrastive run whole.
"""

from configs import backbone_lm, common
from vlm_jax.configlib import ConfigError, parse_arg

PROJECTORS = ("linear", "mlp")


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, stage=1, smollm2=False, lm="", image="", stage1="",
                    projector="mlp", turns=2, variant="L/14", batch=0, steps=0,
                    image_size=0, text_length=0)
    backbone_lm.check_lm_arg(arg)
    if arg.stage not in (1, 2):
        raise ConfigError(f"config arg stage={arg.stage}: use 1 (projector on captions) or 2 "
                          "(projector + LM on instructions)")
    if arg.projector not in PROJECTORS:
        raise ConfigError(f"config arg projector={arg.projector!r}: use one of {PROJECTORS}")
    if arg.stage == 2 and (arg.image or arg.lm):
        raise ConfigError("stage 2 starts from stage 1's workdir (stage1=...), which holds the "
                          "tower and the LM; drop image= / lm=")
    c = common.base_config()
    c.trainer = "prefix_lm"
    c.model = dict(
        name="prefix_vlm", execution=common.execution(), connector="patches",
        projector=arg.projector, feature_layer=-2,
        image=common.tower(arg.variant, patch_size=0, pool="cls"),
        lm=backbone_lm.lm_section(arg.smollm2),
    )
    backbone_lm.set_tokenizer(c, arg.smollm2)
    if arg.stage == 1:
        c.optim.param_rules = (("image_tower/.*", "freeze"), ("lm/.*", "freeze"))
        c.init_from = backbone_lm.init_entries(
            image_tower=arg.image, lm="smollm2" if arg.smollm2 else arg.lm)
    else:
        c.optim.param_rules = (("image_tower/.*", "freeze"),)
        c.init_from = arg.stage1  # the whole model: tower, projector and LM of stage 1
        c.data.format, c.data.chat_turns = "prefix_lm", arg.turns
    backbone_lm.generative_evals(c)
    if arg.tiny:
        c.model.image = common.tiny_tower(patch_size=8, pool="map")  # SigLIP tiny's tower
        c.optim.warmup_steps = 50
        c.log_every, c.checkpoint_every = 25, 250
        # Stage 2's chat sequence holds the 16 placeholders, the template and two turns.
        text_length = 24 if arg.stage == 1 else 64
        common.apply_run_args(c, arg, steps=400, image_size=32, text_length=text_length)
        c.batch_size = arg.batch or 64  # batch 0: the variant's own (tiny 64, else 256)
        if arg.stage == 2:
            c.optim.lr = 3e-4
    else:
        common.full_run(c, arg)
        c.batch_size = arg.batch or 256
        c.optim.lr = 1e-3 if arg.stage == 1 else 2e-5  # LLaVA-1.5's pretrain / finetune rates
    patch = 8 if arg.tiny else int(arg.variant.split("/")[1])
    if arg.stage == 2:
        c.data.prompt_image_tokens = (c.data.image_size // patch) ** 2
    return c
