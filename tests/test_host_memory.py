"""keep_freed_memory: a freed large block's pages are reused, not faulted in again (glibc)."""

import subprocess
import sys

import pytest

# Allocate, touch and free 64 MB twice; print the minor page faults of the second round.
_PROBE = """
import ctypes, resource, sys
from vlm_jax import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
for round in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_round_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_kept_memory_is_reused_without_page_faults():
    pages = (64 << 20) // 4096
    assert _second_round_faults("default") > pages // 2  # mmap'd and unmapped: faulted again
    assert _second_round_faults("keep") < pages // 100
