"""Our `:tiny` CLIP / SigLIP train steps against open_clip eager on the same CPU, alternating.

    python benchmarks/cpu_peer.py                               # ~3-5 min on 2 cores
    python benchmarks/cpu_peer.py --peer-python=.peer-venv/bin/python --rounds=5 --steps=5

open_clip runs in its own interpreter (`--peer-python`: Python 3.11 with CPU torch and
open-clip-torch; docs/performance.md says how to build it) as `openclip_peer_worker.py`, at our
shapes, batch, loss and AdamW. Each round times `--steps` of ours, then the same of the peer's,
for every model, so load on a shared machine hits both; the table gives the median over rounds
and the median of the per-round ratios. Then one profile of each: our step through
`jax.profiler` (per-XLA-op times summed into matmuls, attention, norms, elementwise, loss,
optimizer, copies) and torch.profiler's table. The output is Markdown for docs/performance.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from train_throughput import synthetic_batch  # noqa: E402

from vlm_jax import configlib, host_memory, loop, parallel, trainers  # noqa: E402

WORKER = os.path.join(ROOT, "benchmarks", "openclip_peer_worker.py")
# Our tiny configs' loss -> open_clip's (configs/clip.py: softmax; configs/siglip.py: sigmoid).
PEER_LOSS = {"clip": "clip", "siglip": "siglip"}


class Peer:
    """The open_clip worker process: `time(steps)` -> seconds, `profile(steps)` -> table."""

    def __init__(self, python: str, name: str, config, keep_freed_memory: bool):
        image, text = config.model.image, config.model.text
        args = [
            "--loss", PEER_LOSS[name], "--batch", str(config.batch_size),
            "--image-size", str(config.data.image_size), "--patch", str(image.patch_size),
            "--width", str(image.width), "--depth", str(image.depth),
            "--heads", str(image.num_heads), "--mlp-dim", str(image.mlp_dim),
            "--embed", str(config.model.embed_dim), "--text-length", str(config.data.text_length),
            "--vocab", str(config.data.vocab_size),
        ]
        if (text.width, text.depth, text.num_heads) != (image.width, image.depth, image.num_heads):
            raise ValueError("the peer worker builds equal towers; this config's differ")
        env = dict(os.environ, **(host_memory.environment() if keep_freed_memory else {}))
        self.process = subprocess.Popen([python, WORKER, *args], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._answer()

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the open_clip worker exited (code {self.process.wait()}); run "
                           f"{WORKER} under the peer python by hand to see why")

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait()


class Ours:
    """Our compiled train step (`loop.build`) on synthetic data already on the device."""

    def __init__(self, config):
        mesh = parallel.make_mesh(config.mesh)
        rules = parallel.logical_rules(config)
        trainer = trainers.get_trainer(config.trainer)
        vocab = config.data.vocab_size
        _, self.state, _, self.step = loop.build(config, trainer, vocab, mesh, rules)
        host = synthetic_batch(config, np.random.default_rng(0), vocab)
        self.batch = parallel.global_batch(host, mesh)
        self.run(3)  # compile and warm up

    def run(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - started

    def hlo_text(self) -> str:
        return self.step.lower(self.state, self.batch).compile().as_text()


def op_category(op_name: str, opcode_text: str) -> str:
    """One compiled XLA op -> where its time goes, from its jax name stack and what it fuses."""
    is_matmul = "ynn_fusion" in opcode_text or re.search(r"\b(dot|convolution)\(", opcode_text)
    if "TwoTower" in op_name or "tower" in op_name:
        # jax.nn.dot_product_attention's XLA path: its einsums and softmax run under vmap.
        if re.search(r"attn\._attend/vmap|/attn/vmap|dot_product_attention", op_name):
            return "attention (QK^T, softmax, PV)"
        if is_matmul:
            return "matmuls (projections, MLP, patch embed)"
        if re.search(r"/(norm\d?|pre_norm|LayerNorm_\d+)/", op_name):
            return "layer norms"
        return "elementwise (GELU, residuals, transposes)"
    if "jvp(" in op_name or "take_along_axis" in op_name or "reduce_max" in op_name:
        return "loss (+ pooling gather)"
    if "state.params" in op_name or not op_name:
        return "copies / data transfer"
    return "optimizer (AdamW, clip, schedule)"


def profile_ours(ours: Ours, steps: int, category=op_category) -> list[tuple[str, float, float]]:
    """[(category, ms per step, % of op time)] from a jax.profiler trace of `steps` steps;
    `category(op_name, opcode_text)` names where one compiled op's time goes."""
    instructions = {}
    for line in ours.hlo_text().splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        if match:
            name_match = re.search(r'op_name="([^"]*)"', match.group(2))
            instructions[match.group(1)] = (name_match.group(1) if name_match else "",
                                            match.group(1) + " " + match.group(2)[:200])
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            ours.run(steps)
        (path,) = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as file:
            events = json.load(file)["traceEvents"]
    totals = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event["name"] in instructions:
            totals[category(*instructions[event["name"]])] += event["dur"] / 1e3 / steps
    whole = sum(totals.values())
    return [(name, ms, 100 * ms / whole) for name, ms in totals.most_common()]


def markdown_table(header: list[str], rows: list[list]) -> str:
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clip,siglip")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="steps timed per round and side")
    parser.add_argument("--peer-python", default=os.path.join(ROOT, ".peer-venv/bin/python"))
    parser.add_argument("--bf16-row", action="store_true",
                        help="also time ours with compute_dtype=bfloat16 (no peer row)")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: both sides keep freed host memory (vlm_jax/host_memory.py, "
                        "as vlm_jax.main does); default: glibc's defaults on both sides")
    parser.add_argument("--profile-steps", type=int, default=2, help="0: no profiles")
    args = parser.parse_args()
    keep = args.malloc == "keep" and host_memory.keep_freed_memory()  # before jax computes
    if not os.path.exists(args.peer_python):
        sys.exit(f"--peer-python {args.peer_python} does not exist; build the peer venv as "
                 "docs/performance.md says, or point the flag at one")

    sides = {}  # row name -> (ours, peer or None, model name)
    for name in args.models.split(","):
        config = configlib.load_config(f"{ROOT}/configs/{name}.py:tiny,batch={args.batch}")
        peer = Peer(args.peer_python, name, config, keep)
        sides[f"{name} float32"] = (Ours(config), peer, name)
        if args.bf16_row:
            configlib.override(config, "compute_dtype", "bfloat16")
            sides[f"{name} bfloat16"] = (Ours(config), None, name)

    seconds = {row: ([], []) for row in sides}
    for _ in range(args.rounds):
        for row, (ours, peer, _) in sides.items():
            seconds[row][0].append(ours.run(args.steps))
            if peer:
                seconds[row][1].append(peer.ask(f"time {args.steps}")["seconds"])

    per_s = lambda s: args.batch * args.steps / s
    rows = []
    for row, (ours_s, peer_s) in seconds.items():
        ours_rate = statistics.median(per_s(s) for s in ours_s)
        if peer_s:
            peer_rate = statistics.median(per_s(s) for s in peer_s)
            ratio = statistics.median(p / o for o, p in zip(ours_s, peer_s))
            rows.append([row, ours_rate, peer_rate, ratio,
                         f"{min(p / o for o, p in zip(ours_s, peer_s)):.2f}-"
                         f"{max(p / o for o, p in zip(ours_s, peer_s)):.2f}"])
        else:
            rows.append([row, ours_rate, "-", "-", "-"])

    peer_info = next(p for _, p, _ in sides.values() if p).info
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores visible), load average "
          f"{os.getloadavg()[0]:.1f} at the end; Python {platform.python_version()}, "
          f"jax {jax.__version__}; peer: torch {peer_info['torch']} "
          f"({peer_info['threads']} threads), open_clip {peer_info['open_clip']}; "
          f"batch {args.batch}, {args.rounds} rounds x {args.steps} steps per side; host "
          f"malloc: {'both keep freed memory' if keep else 'glibc defaults'}\n")
    print(markdown_table(["step", "ours samples/s", "open_clip samples/s",
                          "ours / open_clip (median of rounds)", "range over rounds"], rows))

    if args.profile_steps:
        for row, (ours, peer, name) in sides.items():
            if not peer:
                continue
            print(f"\n#### Where our {row} step goes (jax.profiler, per-op time)\n")
            table = profile_ours(ours, args.profile_steps)
            print(markdown_table(["category", "thread-ms / step (both threads)", "% of op time"],
                                 [list(r) for r in table]))
            print(f"\n#### open_clip {name} (torch.profiler, {args.profile_steps} steps)\n")
            print("```\n" + peer.ask(f"profile {args.profile_steps}")["table"] + "\n```")
    for _, peer, _ in sides.values():
        if peer:
            peer.close()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
