"""glibc's mmap threshold, pinned: a large buffer's pages leave the process when it is freed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, sys
import numpy as np
from daemon._memory import pin_mmap_threshold

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else False
# A model run's pattern: big buffers of varied sizes, filled, then freed. Once the 8 MiB one is freed, an
# unpinned glibc serves the smaller ones from a heap, and keeps their pages when they are freed.
a = np.ones(8 << 20, np.uint8)
del a
before = rss_kb()
a = np.ones(4 << 20, np.uint8)
del a
print(json.dumps({"pinned": pinned, "kept_kb": rss_kb() - before}))
"""


def probe(mode: str, **env: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))} | env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


def test_a_freed_buffer_leaves_no_resident_pages_once_pinned() -> None:
    unpinned = probe("no")
    # The control: glibc's moving threshold keeps the 4 MiB resident after the first free. If this ever fails,
    # the C library no longer behaves this way and the pin may be moot.
    assert unpinned["kept_kb"] >= 3000, unpinned
    pinned = probe("pin")
    assert pinned["pinned"] and pinned["kept_kb"] < 500, pinned


def test_the_operators_setting_wins() -> None:
    assert probe("pin", MALLOC_MMAP_THRESHOLD_="65536")["pinned"] is False
    assert probe("pin", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")["pinned"] is False
