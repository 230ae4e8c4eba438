"""glibc's malloc thresholds, pinned: a model run's big buffers come from the heap and stay for the next."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import ctypes, json, sys
import numpy as np
from daemon._memory import pin_malloc

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
pinned = pin_malloc() if sys.argv[1] == "pin" else False
a = np.ones(16 << 20, np.uint8)  # an encoder-sized buffer
mapped_mb = libc.mallinfo2().hblkhd / 2**20  # bytes in blocks mapped on their own
del a
kept_mb = libc.mallinfo2().fordblks / 2**20  # free bytes the heap keeps for the next run
print(json.dumps({"pinned": pinned, "mapped_mb": mapped_mb, "kept_mb": kept_mb}))
"""


def probe(mode: str, **env: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))} | env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def test_a_big_buffer_comes_from_the_heap_and_stays_there_once_pinned() -> None:
    # The control: glibc's defaults map a 16 MiB buffer on its own and unmap it on free. (Later, its moving
    # thresholds would switch to the heap at some point of their own: the RSS step the soak once saw.)
    default = probe("no")
    assert default["mapped_mb"] >= 16 and default["kept_mb"] < 16, default
    pinned = probe("pin")
    assert pinned["pinned"] and pinned["mapped_mb"] < 1 and pinned["kept_mb"] >= 16, pinned


def test_the_operators_setting_wins() -> None:
    assert probe("pin", MALLOC_MMAP_THRESHOLD_="65536")["pinned"] is False
    assert probe("pin", MALLOC_ARENA_MAX="2")["pinned"] is False
    assert probe("pin", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")["pinned"] is False
