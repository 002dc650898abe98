"""Keep freed host memory in the process, so XLA CPU steps stop paying for fresh pages.

XLA's CPU runtime allocates each step's temporaries (hundreds of MB for a tiny CLIP at batch
256) with malloc and frees them at the end of the step. glibc serves such large blocks with
mmap and gives them back with munmap, so every step touches ~500 MB of new pages: ~130k page
faults and a quarter of both cores' time in the kernel (measured on a 2-core Xeon, SigLIP tiny:
590 -> 750 samples/s with this on, docs/performance.md). Serving every block from the one
main heap and never trimming it makes the second step reuse the first step's pages.

It must run before the XLA CPU client starts its threads (threads keep the arena they
started with), i.e. before the first jax computation. The price: the process keeps its peak
host memory until it exits, which a training process does anyway.
"""

from __future__ import annotations

import ctypes
import sys

# (glibc <malloc.h> mallopt parameter, value, the same setting as an environment variable).
_SETTINGS = ((-8, 1, "MALLOC_ARENA_MAX"),  # M_ARENA_MAX: every thread on the main heap
             (-4, 0, "MALLOC_MMAP_MAX_"),  # M_MMAP_MAX: no block is mmap'd
             (-1, 2**31 - 1, "MALLOC_TRIM_THRESHOLD_"))  # M_TRIM_THRESHOLD: never trim


def environment() -> dict[str, str]:
    """The same settings for a process started from here (glibc reads them at its start)."""
    return {name: str(value) for _, value, name in _SETTINGS}


def keep_freed_memory() -> bool:
    """Set glibc malloc to keep freed memory (one arena, no mmap, no trim); False off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    return all(mallopt(param, value) == 1 for param, value, _ in _SETTINGS)
