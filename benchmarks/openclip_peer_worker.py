"""open_clip's train step at our `:tiny` shapes, timed on command: the peer of cpu_peer.py.

Runs under the peer interpreter (Python 3.11, CPU torch, open-clip-torch 3.3.0; see
docs/performance.md), never under vlm_jax's. `benchmarks/cpu_peer.py` starts it and writes one
command per line on stdin; each answer is one JSON line on stdout:

    time N       -> {"seconds": wall seconds of N train steps}
    profile N    -> {"table": torch.profiler's table over N steps}
    quit

Same work as ours: random init, synthetic float images and int tokens built once, open_clip's
ClipLoss or SigLipLoss, torch.optim.AdamW (foreach, its CPU default) with our betas, eps and
weight decay, gradient clipping at our norm. Only the step is timed, eager, float32.
"""
import argparse
import json
import sys
import time

import open_clip
import torch
from open_clip.loss import ClipLoss, SigLipLoss


def build(args):
    """open_clip.model.CLIP with our tiny towers; SigLIP: attention-pooled image, full text mask."""
    siglip = args.loss == "siglip"
    vision = open_clip.model.CLIPVisionCfg(
        layers=args.depth, width=args.width, head_width=args.width // args.heads,
        mlp_ratio=args.mlp_dim / args.width, patch_size=args.patch, image_size=args.image_size,
        # SigLIP's MAP head: one learned query attending over the tokens.
        attentional_pool=siglip, attn_pooler_queries=1, attn_pooler_heads=args.heads,
        pool_type="tok" if not siglip else "avg", no_ln_pre=True)
    text = open_clip.model.CLIPTextCfg(
        context_length=args.text_length, vocab_size=args.vocab, width=args.width,
        heads=args.heads, layers=args.depth, mlp_ratio=args.mlp_dim / args.width,
        no_causal_mask=siglip, pool_type="last" if siglip else "argmax")
    kwargs = dict(init_logit_scale=2.302585, init_logit_bias=-10.0) if siglip else {}
    model = open_clip.model.CLIP(args.embed, vision, text, output_dict=True, **kwargs).train()
    return model, (SigLipLoss() if siglip else ClipLoss())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--loss", choices=["clip", "siglip"], default="clip")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp-dim", type=int, default=512)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--text-length", type=int, default=24)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps torch's")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, loss_fn = build(a)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=1e-4)
    images = torch.randn(a.batch, 3, a.image_size, a.image_size)
    texts = torch.randint(4, a.vocab, (a.batch, a.text_length))

    def step():
        out = model(images, texts)
        extra = [out["logit_bias"]] if a.loss == "siglip" else []
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"], *extra)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(3):
        step()
    print(json.dumps({"ready": True, "torch": torch.__version__,
                      "open_clip": open_clip.__version__, "threads": torch.get_num_threads(),
                      "params": sum(p.numel() for p in model.parameters())}), flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "quit":
            break
        steps = int(rest[0])
        if command == "time":
            started = time.perf_counter()
            for _ in range(steps):
                step()
            print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
        elif command == "profile":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    step()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
            print(json.dumps({"table": table}), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)


if __name__ == "__main__":
    main()
