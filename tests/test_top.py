"""``audiod top`` against a status block this test writes (so every value is known and can be changed at
will): on a terminal (tmux, read as a person sees it) and through a pipe."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon import _status
from daemon._histogram import QUANTILES
from daemon._status import RUNNING, Status
from daemon._top import LATENCY_ROWS, percentiles

from ._tmux import Tmux

TEXTS = [f"sentence number {i}" for i in range(1, 8)]


class FakeDaemon:
    """The status block and files of a daemon, kept by the test process."""

    def __init__(self, tmp: Path) -> None:
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp / "run")}
        self.env.pop("RUNTIME_DIRECTORY", None)
        self.dir = tmp / "run" / "audiod"
        self.dir.mkdir(parents=True, mode=0o700)
        self.transcript = tmp / "transcripts.jsonl"
        lines = [
            {"seq": i, "type": "transcript", "text": t, "end": 1e9 + i, "latency_ms": 700 + i}
            for i, t in enumerate(TEXTS, 1)
        ]
        lines.insert(3, {"seq": 99, "type": "gap", "start": 1.0, "end": 2.0, "seconds": 1.0})
        self.transcript.write_text("".join(json.dumps(x) + "\n" for x in lines))
        self.status = self.create()

    def create(self) -> Status:
        st = Status.create(self.dir / "status")
        st.write_info(device="3: USB mic", samplerate=48000, transcript=str(self.transcript))
        st.state.store(RUNNING)
        for name, v in [
            ("audio_lag_ms", 42),
            ("total_chunks", 4000),
            ("dropped_chunks", 30),
            ("skipped_chunks", 10),
            ("xruns", 2),
            ("stream_restarts", 1),
            ("transcripts", 12),
            ("inference_time_ms", 250),
            ("inference_audio_ms", 1000),
            ("ring_capacity", 600),
        ]:
            getattr(st, name).store(v)
        for ms in (20, 25, 30, 60):
            st.latency.capture.observe_ms(ms)
        for ms in (700, 800, 1500):
            st.latency.transcript.observe_ms(ms)
        return st

    def close(self) -> None:
        if self.status.path is not None and self.status.path.exists():
            self.status.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon(tmp_path)
    yield d
    d.close()


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path / "tmux")
    yield t
    t.kill()


def top_command() -> str:
    return f"{sys.executable} -m daemon top"


def test_top_on_a_terminal_shows_the_daemon_live(fake: FakeDaemon, tmux: Tmux) -> None:
    tmux.start(top_command(), fake.env)
    screen = tmux.wait_for(r"transcripts 12")
    print("\n" + screen)
    assert f"pid {os.getpid()}, up 0m" in screen and "state running" in screen
    assert "device   3: USB mic (48000 Hz)" in screen
    assert "lag 42ms | RTF 0.25 | drops 1.00% (ring_full 30, lag_skip 10) | xruns 2 | restarts 1" in screen
    assert "chunks 4000 | transcripts 12 (pending 0, write errors 0)" in screen
    lat = _status.read(fake.dir / "status").latency
    for label, key in LATENCY_ROWS:
        h = getattr(lat, key)
        row = f"  {label:<24}{h.count:>8}" + "".join(f"{p:>9}" for p in percentiles(h))
        assert row in screen.splitlines(), row
    # By hand: 20, 25, 30 and 60 ms fall in buckets (18.6, 22.1], (22.1, 26.3], (26.3, 31.3], (52.6, 62.5].
    assert "  capture -> consumed            4     26ms     61ms     62ms" in screen
    # The last five transcripts, oldest first; the gap record is not one.
    shown = [line.split("ms  ", 1)[1] for line in screen.splitlines() if "ms  sentence" in line]
    assert shown == TEXTS[-5:]

    # Live: a change shows within a few refreshes (every 100 ms).
    delays = []
    for n in range(13, 18):
        fake.status.transcripts.store(n)
        t0 = time.monotonic()
        tmux.wait_for(rf"transcripts {n} ", timeout=2)
        delays.append(time.monotonic() - t0)
    print(f"update shown after {statistics.median(delays) * 1000:.0f} ms (median)")
    assert statistics.median(delays) < 0.5, "redrawn every 100 ms, not once a second"

    # The daemon goes away, then a new one starts: top says so and follows it.
    fake.close()
    tmux.wait_for(r"audiod is not running \(no status file")
    fake.status = fake.create()
    fake.status.transcripts.store(3)
    tmux.wait_for(r"transcripts 3 ")

    tmux.keys("q")
    assert tmux.exit_status() == 0
    assert "q quits" not in tmux.screen(), "the terminal's own screen is back"


def test_top_without_a_terminal_prints_a_line_a_second(fake: FakeDaemon) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "top"], env=fake.env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        t0 = time.monotonic()
        fake.status.transcripts.store(20)
        lines = [proc.stdout.readline() for _ in range(2)]
        span = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    assert code == 0
    assert 1.5 < span < 3.0, "one line a second"
    fields: dict[str, Any] = dict(kv.split("=", 1) for kv in first.split()[1:])
    expected = {
        "state": "running",
        "pid": str(os.getpid()),
        "lag_ms": "42",
        "rtf": "0.25",
        "chunks": "4000",
        "dropped": "30",
        "skipped": "10",
        "drop_rate": "0.01",
        "xruns": "2",
        "restarts": "1",
        "transcripts": "12",
    }
    assert {k: fields[k] for k in expected} == expected
    lat = _status.read(fake.dir / "status").latency.to_dict()
    for key, h in lat.items():
        assert fields[f"{key}_count"] == str(h["count"])
        for q in QUANTILES:
            name = f"p{round(q * 100)}_ms"
            assert fields[f"{key}_{name}"] == ("-" if h[name] is None else str(h[name]))
    assert "transcripts=20" in lines[-1]


def test_top_with_no_daemon_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    env.pop("RUNTIME_DIRECTORY", None)
    out = subprocess.run([sys.executable, "-m", "daemon", "top"], env=env, capture_output=True, text=True)
    assert out.returncode == 3
    assert out.stderr == f"audiod: audiod is not running (no status file at {tmp_path}/audiod/status)\n"
