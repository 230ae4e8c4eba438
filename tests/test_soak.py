"""The soak script's short version: memory must not grow while audiod listens and transcribes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


def test_short_soak_holds_memory_flat() -> None:
    out = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "75", "--sample", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    print(f"\nRSS {r['rss_kb']}")
    assert r["exit_code"] == 0
    assert r["transcripts"] >= r["utterances_played"] - 1
    assert r["dropped_chunks"] == 0 and r["skipped_chunks"] == 0 and r["xruns"] == 0
    assert r["rss_growth_after_warm_up_kb"] < 4096, "the 30-minute bench holds this to 1 MB"
