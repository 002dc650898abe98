"""MiniGPT-4 (Zhu et al., 2023): BLIP-2's frozen ViT and frozen Q-Former, a frozen LM, and
between them the only trained part, one linear projection of the query outputs into the LM's
embedding space (model prefix_vlm, connector "qformer"; trainer prefix_lm).

    stage 1: captions, BOS <query embeddings>*Q caption EOS, loss on the caption + EOS;
    stage 2: the world's instruction data in the chat template (data.format prefix_lm),
             BOS "user:" <image>*Q question "assistant:" answer EOS; loss on the answer tokens
             only; initialised from stage 1's workdir (the whole model).

    configs/minigpt4.py:tiny,stage=1,blip2=runs/blip2_tiny,lm=runs/lm_tiny
    configs/minigpt4.py:tiny,stage=2,stage1=runs/minigpt4_1
    configs/minigpt4.py:tiny,stage=1,blip2=runs/blip2_tiny,smollm2   SmolLM2 as the LM

`blip2=` names a BLIP-2 stage-1 workdir (configs/blip2.py, same `variant`; MiniGPT-4 used
EVA ViT-g/14): its image tower and the query parts of its Q-Former (configs/qformer_lm.py).
MiniGPT-4 takes the Q-Former BLIP-2 trained; stage 2 here is the world's question/answer
turns (MiniGPT-4's is 3.5k curated image descriptions).
"""

from configs import backbone_lm, common, qformer_lm
from vlm_jax.configlib import ConfigError, parse_arg

# Everything but the projector is frozen: no weight gradients, no optimizer state.
FROZEN = (("image_tower/.*", "freeze"), ("qformer/.*", "freeze"), ("lm/.*", "freeze"))


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, stage=1, smollm2=False, lm="", blip2="", stage1="",
                    turns=1, variant="B/16", batch=0, steps=0, image_size=0, text_length=0)
    backbone_lm.check_lm_arg(arg)
    if arg.stage not in (1, 2):
        raise ConfigError(f"config arg stage={arg.stage}: use 1 (projection on captions) or 2 "
                          "(projection on chat-template instructions)")
    if arg.stage == 1 and arg.stage1:
        raise ConfigError("stage1= is stage 2's start; stage 1 loads blip2= and lm=")
    if arg.stage == 2 and (arg.blip2 or arg.lm):
        raise ConfigError("stage 2 starts from stage 1's workdir (stage1=...), which holds the "
                          "tower, Q-Former, projection and LM; drop blip2= / lm=")
    c = common.base_config()
    c.trainer = "prefix_lm"
    c.model = qformer_lm.model_section(arg)
    backbone_lm.set_tokenizer(c, arg.smollm2)
    c.optim.param_rules = FROZEN
    if arg.stage == 1:
        c.init_from = qformer_lm.init_from(arg.blip2, c.model.qformer,
                                           "smollm2" if arg.smollm2 else arg.lm)
    else:
        c.init_from = arg.stage1
        c.data.format, c.data.chat_turns = "prefix_lm", arg.turns
        c.data.prompt_image_tokens = c.model.qformer.num_queries
    backbone_lm.generative_evals(c)
    if arg.tiny:
        c.optim.warmup_steps = 50
        c.log_every, c.checkpoint_every = 25, 200
        # Stage 2's chat sequence holds the 8 placeholders, the template and the turns.
        text_length = 24 if arg.stage == 1 else 24 + 24 * arg.turns
        common.apply_run_args(c, arg, steps=400 if arg.stage == 1 else 200, image_size=32,
                              text_length=text_length)
        c.batch_size = arg.batch or 64
    else:
        common.full_run(c, arg)
        c.batch_size = arg.batch or 256
        # MiniGPT-4: stage 1 at 1e-4 (20k steps of 256), stage 2 at 3e-5 (400 steps of 12).
        c.optim.lr = 1e-4 if arg.stage == 1 else 3e-5
    return c
