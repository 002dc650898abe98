"""A LLaMA-style language model (models/lm.py) trained by next-token loss (trainers/lm.py).

    configs/lm.py:tiny       the world LM: width 128, 4 layers, 4 heads (2 KV heads), the world
                             tokenizer, pretrained on the world's captions (text_only) and its
                             question-answer texts (qa_text) half and half; CPU minutes. The
                             frozen LM of the later VLM recipes (init_from={"lm": workdir}).
    configs/lm.py:smollm2    SmolLM2-135M-Instruct from its packaged GGUF (init_from + its own
                             tokenizer), a short finetune on the world's QA in ChatML with the
                             loss on the answers only.
    configs/lm.py            a 12-layer width-768 world LM for accelerators (bfloat16).
"""

from configs import common
from vlm_jax.configlib import parse_arg

# The world's language: its captions and its question-answer texts, half and half.
WORLD_TEXT = (("text_only", 0.5), ("qa_text", 0.5))


def get_config(arg=None):
    # batch 0: the variant's own (256; tiny 32; smollm2 8).
    arg = parse_arg(arg, tiny=False, smollm2=False, batch=0, steps=0, image_size=0,
                    text_length=0)
    c = common.base_config()
    c.trainer = "lm"
    c.loss = dict(targets="all")  # all | supervised (trainers/lm.py)
    c.model = dict(
        name="lm", execution=common.execution(), width=768, depth=12, num_heads=12,
        num_kv_heads=4, head_dim=0, mlp_dim=2048, rope_theta=10000.0, norm_eps=1e-5,
        tie_embeddings=True, qk_norm=False)
    c.data.mixture = WORLD_TEXT
    c.data.image_size = 16  # the smallest world image: the loader still renders one per example
    # The blind baseline (evals/text_prior.py); the image evals need images: see
    # trainers/lm.heldout_metrics for the LM on held-out text.
    c.evals.names = ("blindprior",)
    if arg.smollm2:
        # The sizes are the GGUF's (convert/gguf_llama); init_from checks every shape.
        c.model.update(vocab_size=49152, width=576, depth=30, num_heads=9, num_kv_heads=3,
                       head_dim=64, mlp_dim=1536, rope_theta=100000.0, norm_eps=1e-5,
                       tie_embeddings=True)
        # This model is the LM itself (its tree at the root): the converted tree's "lm" subtree
        # fills it. A VLM holding the LM as `lm` writes {"lm": "smollm2"}.
        c.init_from = str({"": "smollm2:lm"})
        c.data.tokenizer = "smollm2"
        c.data.mixture = (("qa_text", 1.0),)
        c.loss.targets = "supervised"
        c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = 3e-5, 5, 0.0
        common.apply_run_args(c, arg, steps=20, image_size=16, text_length=64)
        c.batch_size = arg.batch or 8
        c.log_every, c.checkpoint_every = 5, 20
    elif arg.tiny:
        c.model.update(width=128, depth=4, num_heads=4, num_kv_heads=2, mlp_dim=384)
        common.apply_run_args(c, arg, steps=300, image_size=16, text_length=32)
        c.batch_size = arg.batch or 32
        c.optim.warmup_steps = 30
        c.log_every, c.checkpoint_every = 25, 200
    else:
        common.full_run(c, arg, text_length=64)
        c.batch_size = arg.batch or 256
        c.data.image_size = 16
    return c
