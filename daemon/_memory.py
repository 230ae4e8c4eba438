"""Keep the daemon's memory flat and its model runs fast: set glibc's malloc thresholds once, at start.

glibc serves an allocation at or above its mmap threshold with a mapping of its own and unmaps it on free,
and gives the top of a heap back to the kernel once more than its trim threshold is free there. Both move:
when a mapped block is freed, glibc raises the mmap threshold to its size (up to 32 MiB) and the trim
threshold to twice that, and later blocks of that size come from a heap that keeps them. Each model run
allocates and frees buffers of up to ~16 MB (faster-whisper's features, CTranslate2's encoder), so RSS
stepped up whenever a run first hit a new size, a minute or more into a run (bench/soak.py: 232 -> 259 MB
at 58 s). Fixed at the top of glibc's own range (32 MiB, with 128 MiB of trim), the buffers come from the
heap from the first run on, and stay: RSS reaches its plateau during the warm-up (268.6 MB, flat within
0.3 MB over 150 s). A low threshold (1 MiB) kept RSS at 216 MB but made every run 35 % slower, paying page
faults for buffers mapped anew each time.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where its own adjustment ends
TRIM_THRESHOLD = 128 << 20


def pin_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds; False when unavailable or chosen by the operator."""
    if any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return False  # the environment's choice wins, as it would without us
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # musl's mallopt is a stub that returns 0
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
