"""`audiod run` under supervision, against the real things: a notify socket of our own standing in for
systemd, a real systemd-journald, and the CLI's start/stop lifecycle without systemd."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon._vmic import SENTENCES, VirtualMic

from .conftest import wer
from .test_journal import journald  # noqa: F401 - the fixture, shared

pytestmark = pytest.mark.e2e


SO_TIMESTAMPNS = 35  # Linux; not exported by the socket module. Its control message has the same type.


class NotifySocket:
    """Stands in for systemd's notify socket. Each message is stamped (wall clock) by the kernel when it
    arrives, so its time does not depend on when the test gets round to reading it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                data, ancillary, _, _ = self.sock.recvmsg(4096, 64)
                stamps = [struct.unpack("qq", d[:16]) for _, kind, d in ancillary if kind == SO_TIMESTAMPNS]
                assert stamps, "the kernel stamps every message"
                self.messages.append((stamps[0][0] + stamps[0][1] / 1e9, data.decode()))

    def until(self, text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, m in self.messages:
                if text in m:
                    return t
            self.collect(0.1)
        raise AssertionError(f"no {text!r} within {timeout}s: {self.messages[-5:]}")

    def times(self, text: str, since: float = 0.0) -> list[float]:
        return [t for t, m in self.messages if text in m.split("\n") and t >= since]


def test_ready_status_and_a_watchdog_that_stops_when_the_worker_hangs(
    audiod: Any, vmic: VirtualMic, tmp_path: Path
) -> None:
    ns = NotifySocket(tmp_path / "notify.sock")
    hang = tmp_path / "hang"
    d = audiod(
        name="notify",
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
        WATCHDOG_USEC="2000000",
        AUDIOD_TEST_HANG_WORKER=str(hang),
    )
    ready = ns.until("READY=1", 10)
    assert d.named("model_loaded"), "READY only after the model is loaded"
    ns.collect(4.2)
    pings = ns.times("WATCHDOG=1", since=ready)
    assert 3 <= len(pings) <= 5, pings  # every ~1 s: half of WATCHDOG_USEC
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.9 <= g <= 1.5 for g in gaps), gaps  # never early; late only by a slow poller tick
    statuses = [m for _, m in ns.messages if m.startswith("STATUS=")]
    assert len(statuses) >= 3 and all("Latency:" in s and "RTF:" in s and "Drops:" in s for s in statuses)

    hang.touch()
    t_hang = time.time()
    ns.collect(5)
    late = ns.times("WATCHDOG=1", since=t_hang + 2.2)
    assert late == [], "no pings once the worker is stuck for longer than the watchdog timeout"
    assert [m for t, m in ns.messages if t > t_hang + 2.2 and m.startswith("STATUS=")], "the poller lives on"

    hang.unlink()
    t_free = time.time()
    ns.collect(2.5)
    assert ns.times("WATCHDOG=1", since=t_free), "pings resume when the worker does"
    assert d.stop() == 0
    ns.collect(0.3)
    assert any("STOPPING=1" in m for _, m in ns.messages)


def journal(*args: str) -> list[dict[str, Any]]:
    subprocess.run(["journalctl", "--sync"], capture_output=True)
    out = subprocess.run(
        ["journalctl", "--no-pager", "--all", "-o", "json", *args], capture_output=True, text=True
    )
    return [json.loads(x) for x in out.stdout.splitlines()]


def test_journal_gets_structured_fields(
    journald: str,  # noqa: F811
    audiod: Any,
    vmic: VirtualMic,
    media: dict[str, Path],
    tmp_path: Path,
) -> None:
    transcript = tmp_path / "journal" / "t.jsonl"
    transcript.parent.mkdir()
    # A whole line, then a crash mid-line: the daemon cuts the partial one (with a warning), goes on at 8.
    transcript.write_text('{"seq": 7, "text": "before"}\n{"seq": 8, "text": "cut of')
    d = audiod(f'[transcript]\npath = "{transcript}"\n', name="journal", log="journal")
    vmic.play(media["sentence"])
    deadline = time.monotonic() + 20
    while not [r for r in journal(f"_PID={d.proc.pid}", "EVENT=transcript")]:
        assert time.monotonic() < deadline, "no transcript in the journal"
        time.sleep(0.3)
    assert d.stop() == 0
    entries = journal(f"_PID={d.proc.pid}")
    (tr,) = [e for e in entries if e.get("EVENT") == "transcript"]
    assert wer(SENTENCES[2], tr["TEXT"]) <= 0.3
    assert tr["PRIORITY"] == "6" and tr["SYSLOG_IDENTIFIER"] == "audiod" and tr["SEQ"] == "8"
    assert tr["MESSAGE"].startswith("transcript: ")
    assert tr["CODE_FILE"].endswith("_sinks.py") and tr["CODE_FUNC"] == "_flush" and int(tr["CODE_LINE"]) > 0
    metrics = [e for e in entries if e.get("EVENT") == "metrics"]
    assert len(metrics) > 10
    assert {"AUDIO_LAG_MS", "DROPPED_CHUNKS", "TOTAL_CHUNKS", "DROP_RATE", "REAL_TIME_FACTOR"} <= set(
        metrics[-1]
    )
    (warn,) = journal(f"_PID={d.proc.pid}", "-p", "warning")
    assert warn["EVENT"] == "transcript_repaired" and warn["PRIORITY"] == "4"


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_cli_start_status_stop_without_systemd(vmic: VirtualMic, tmp_path: Path) -> None:
    env = {
        **vmic.client_env(),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    config = tmp_path / "audiod.toml"
    config.write_text('[capture]\ndevice = "pulse"\n')
    stopped = cli(env, "stop")
    assert stopped.returncode == 3 and "not running" in stopped.stderr
    started = cli(env, "start", "--config", str(config))
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split("pid ")[1].split(")")[0])
    try:
        again = cli(env, "start", "--config", str(config))
        assert again.returncode == 75 and f"already running (pid {pid})" in again.stderr
        time.sleep(1)
        st = cli(env, "status")
        assert st.returncode == 0
        assert f"audiod running, pid {pid}" in st.stdout and "Latency:" in st.stdout
        live = json.loads(cli(env, "status", "--json").stdout)
        assert live["state"] == "running" and live["total_chunks"] > 0
        t0 = time.monotonic()
        stop = cli(env, "stop")
        print(f"\nstop took {time.monotonic() - t0:.2f}s")
        assert stop.returncode == 0 and f"stopped (pid {pid})" in stop.stdout
    finally:
        if cli(env, "status").returncode == 0:
            os.kill(pid, 9)
    after = cli(env, "status")
    assert after.returncode == 3 and "not running" in after.stderr
    log = (tmp_path / "state" / "audiod" / "audiod.log").read_text()
    assert '"event": "started"' in log and '"event": "stopped"' in log


def test_installed_unit_points_at_this_installation_and_verifies(tmp_path: Path) -> None:
    from daemon._service import render_unit

    unit = render_unit(user=False)
    exe = Path(sys.executable).parent / "audiod"
    assert f"ExecStart={exe} run" in unit
    if sys.base_prefix.startswith(("/home/", "/root/")):  # this venv's Python lives in a home directory
        assert "ProtectHome=tmpfs" in unit and f"BindReadOnlyPaths={sys.base_prefix}" in unit
    path = tmp_path / "audiod.service"
    path.write_text(unit)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True)
    assert out.stdout + out.stderr == ""
