"""Keep the daemon's memory flat: large buffers go back to the kernel when they are freed.

glibc serves an allocation of at least its mmap threshold with a mapping of its own, and unmaps it on free.
The threshold moves: when such a block is freed, glibc raises the threshold to the block's size (up to
32 MiB), and later blocks of that size come from a heap arena, which keeps the freed pages resident. Each
model run allocates and frees buffers of ~10-16 MB (faster-whisper's features, CTranslate2's encoder), so
after a minute the daemon's RSS swung by ~30 MB from one sample to the next (bench/soak.py: 232-259 MB). With
the threshold fixed at 1 MiB it stays at 215.7 MB within 0.4 MB, and a run costs the page faults of mapping
its buffers anew: well under 1 % of its time.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD = 1 << 20


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold, which stops its adjustment; False if unavailable or set by the operator."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the environment's choice wins, as it would without us
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))  # musl's mallopt is a stub that returns 0
