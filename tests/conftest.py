"""Test session set-up: 8 CPU devices (before JAX starts), so mesh tests can split them."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# The world tokenizer is trained once per test session into a temporary cache.
os.environ.setdefault("VLM_JAX_CACHE", os.path.join(os.path.dirname(__file__), ".cache"))
# Compiled XLA executables persist in the same cache, shared by the session's subprocesses: the
# CLI tests rerun one tiny config many times (fresh processes), and in-process tests rebuild the
# same steps; each compiles once per cache. Executables are keyed by their HLO, options and JAX
# version, so a hit runs the very program a compile would have built (bitwise tests hold).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.environ["VLM_JAX_CACHE"], "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
