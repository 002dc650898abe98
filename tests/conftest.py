"""Test session set-up: 8 CPU devices (before JAX starts), so mesh tests can split them."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# The world tokenizer is trained once per test session into a temporary cache.
os.environ.setdefault("VLM_JAX_CACHE", os.path.join(os.path.dirname(__file__), ".cache"))
