# SPDX-License-Identifier: GPL-3.0-or-later
"""audiod under a real systemd: the shipped ``systemd/audiod.service``, run by systemd 252 booted in a
throwaway nspawn container (``tests/_nspawn.py``), capturing from the private PulseAudio microphone.

Checked: ``Type=notify`` start (READY only once the model is loaded), the ``STATUS=`` line in
``systemctl status``, transcripts and metrics as journald fields, a clean SIGTERM stop, and the watchdog
killing a daemon whose worker hangs and systemd restarting it.

The unit runs with its full sandbox; the test drop-in changes only what a checkout-in-a-home-directory
install needs (see ``_dropin``), shortens the timers and adds an ``ExecStopPost=`` observer of each exit.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon._vmic import SENTENCES, VirtualMic

from ._nspawn import BootedSystemd, nspawn_unavailable_reason, wait_until
from .conftest import wer

_REASON = nspawn_unavailable_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

REPO = Path(__file__).resolve().parent.parent
SHIPPED_UNIT = REPO / "systemd" / "audiod.service"
SHIPPED_EXEC = "/usr/local/bin/audiod"
# The venv running these tests (the checkout's .venv under `make test`) and the interpreter it was made from
# (its pyvenv.cfg `home`); both are bound into the container at the same paths, so the venv's absolute
# symlinks and the editable install's paths stay valid.
VENV = Path(sys.prefix)
BASE_PYTHON = Path(sys.base_prefix)
AUDIOD = VENV / "bin" / "audiod"

UNIT = "audiod.service"
PULSE_SOCKET = "/run/vmic/native"  # the socket *file* is bound: its 0700 directory would lock us out
# Not below /tmp: PrivateTmp= gives the service its own. Created inside the container, no bind needed.
HANG_DIR = "/run/audiod-test"
HANG_FILE = f"{HANG_DIR}/hang"
# One line per exit of the daemon, written by ExecStopPost=:
# "INVOCATION_ID SERVICE_RESULT EXIT_CODE EXIT_STATUS".
# `systemctl show -p Result,ExecMainStatus` cannot tell: once stopped, the unit is garbage-collected and a
# fresh load reports the defaults (Result=success, ExecMainCode=0) whatever happened.
EXITS_FILE = f"{HANG_DIR}/exits"
WATCHDOG_S = 4
RESTART_S = 1
START_TIMEOUT_S = 100  # above the unit's TimeoutStartSec=90s: systemd, not we, decides a start failed
PULSE_ALSA_CONF = "/usr/share/alsa/alsa.conf.d/50-pulseaudio.conf"  # libasound2-plugins: pcm.pulse
STATUS_RE = re.compile(r"Latency: -?\d+ms \| RTF: \d+\.\d+ \| Drops: \d+\.\d+%")


def _bind_roots() -> list[Path]:
    """Host trees the daemon needs that the container's /usr does not have, outermost only."""
    roots: list[Path] = []
    for p in sorted({REPO, VENV.resolve(), BASE_PYTHON.resolve()}, key=lambda p: len(p.parts)):
        if p.is_relative_to("/usr") or any(p.is_relative_to(r) for r in roots):
            continue
        roots.append(p)
    return roots


def _unit() -> str:
    text = SHIPPED_UNIT.read_text()
    marker = f"ExecStart={SHIPPED_EXEC} "
    assert text.count(marker) == 1, "expected exactly one ExecStart= running the installed audiod"
    return text.replace(marker, f"ExecStart={AUDIOD} ")


def _dropin(roots: list[Path]) -> str:
    # ProtectHome=tmpfs instead of the shipped =yes, plus BindReadOnlyPaths=: the interpreter lives in
    # /root/.pyenv here (and CI checkouts may live in /home). With =yes, systemd drops binds below the
    # inaccessible /root (203/EXEC: executable not found); =read-only leaves /root at 0700 (203/EXEC:
    # permission denied). =tmpfs still hides every home directory: only the listed trees show, read-only.
    binds = " ".join(str(r) for r in roots)
    return (
        "[Service]\n"
        f"Environment=PULSE_SERVER=unix:{PULSE_SOCKET}\n"
        f"Environment=AUDIOD_TEST_HANG_WORKER={HANG_FILE}\n"
        f"WatchdogSec={WATCHDOG_S}s\n"
        f"RestartSec={RESTART_S}s\n"
        "ProtectHome=tmpfs\n"
        f"BindReadOnlyPaths={binds}\n"
        # An observer only: "+" runs it outside the sandbox, so it can write to /run.
        "ExecStopPost=+/bin/sh -c "
        f"'echo \"$$INVOCATION_ID $$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS\" >> {EXITS_FILE}'\n"
    )


def _prepare(sd: BootedSystemd, roots: list[Path]) -> None:
    """Give the container's nearly empty /etc what a Debian install has and audiod's unit relies on."""
    # DynamicUser= services resolve their own uid through nss-systemd.
    sd.write_file("/etc/nsswitch.conf", "passwd: files systemd\ngroup: files systemd\nshadow: files\n")
    # SupplementaryGroups=audio: first-boot sysusers usually creates it; make sure.
    if sd.run("getent", "group", "audio", check=False).returncode != 0:
        sd.write_file("/etc/sysusers.d/audiod-test.conf", "g audio 29\n")
        sd.run("systemd-sysusers")
    # ctypes.util.find_library("portaudio") (sounddevice) reads `ldconfig -p`, i.e. /etc/ld.so.cache.
    sd.run("ldconfig")
    # alsa.conf reads /etc/alsa/conf.d, where Debian links the pulse device definition.
    assert Path(PULSE_ALSA_CONF).exists(), (
        "ALSA's pulse plugin is missing: apt-get install libasound2-plugins"
    )
    sd.run("mkdir", "-p", "/etc/alsa/conf.d", HANG_DIR)
    sd.run("ln", "-sf", PULSE_ALSA_CONF, "/etc/alsa/conf.d/50-pulseaudio.conf")
    # No [log] section: format "auto" must pick journald's native protocol by itself ($JOURNAL_STREAM).
    sd.write_file("/etc/audiod/audiod.toml", '[capture]\ndevice = "pulse"\n')
    sd.write_file(f"/etc/systemd/system/{UNIT}", _unit())
    sd.write_file(f"/etc/systemd/system/{UNIT}.d/test.conf", _dropin(roots))
    sd.systemctl("daemon-reload")


@pytest.fixture(scope="module")
def booted(vmic: VirtualMic) -> Iterator[BootedSystemd]:
    if not AUDIOD.exists():
        pytest.fail(f"{AUDIOD} missing: run the tests from the venv audiod is installed in (make test)")
    roots = _bind_roots()
    binds = [(str(r), str(r)) for r in roots] + [(str(vmic.socket), PULSE_SOCKET)]
    with BootedSystemd(binds_ro=binds) as sd:
        print(f"\ncontainer booted in {sd.boot_seconds:.2f}s")
        _prepare(sd, roots)
        yield sd


# ----------------------------------------------------------------------------------------------- helpers


def show(sd: BootedSystemd, *props: str) -> dict[str, str]:
    return sd.show(UNIT, *props)


def journal_text(sd: BootedSystemd, *args: str) -> str:
    return sd.journal(UNIT, *args)


def journal_json(sd: BootedSystemd, *matches: str, fields: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = ["-o", "json", *matches]
    if fields:
        args.append("--output-fields=" + ",".join(fields))
    return [json.loads(line) for line in journal_text(sd, *args).splitlines() if line.strip()]


def diagnostics(sd: BootedSystemd) -> str:
    status = sd.systemctl("status", UNIT, check=False).stdout
    return f"{status}\n--- journal ---\n{journal_text(sd, '-n', '60', '-o', 'short-monotonic')}"


@dataclass
class Started:
    pid: int
    invocation: str
    ready_s: float  # `systemctl start` returning, i.e. READY=1
    exec_to_ready_s: float  # systemd's own view: main process exec'd -> unit active
    active_at_us: int  # CLOCK_MONOTONIC, as journald's __MONOTONIC_TIMESTAMP (no time namespace)

    def own(self) -> str:
        """journalctl match for entries logged by this run of the daemon."""
        return f"_SYSTEMD_INVOCATION_ID={self.invocation}"


def start(sd: BootedSystemd) -> Started:
    t0 = time.monotonic()
    r = sd.systemctl("start", UNIT, check=False, timeout=START_TIMEOUT_S)
    ready_s = time.monotonic() - t0
    assert r.returncode == 0, f"systemctl start failed: {r.stderr}\n{diagnostics(sd)}"
    p = show(
        sd,
        "ActiveState",
        "SubState",
        "MainPID",
        "InvocationID",
        "ExecMainStartTimestampMonotonic",
        "ActiveEnterTimestampMonotonic",
    )
    assert (p["ActiveState"], p["SubState"]) == ("active", "running"), diagnostics(sd)
    active_at = int(p["ActiveEnterTimestampMonotonic"])
    exec_to_ready = (active_at - int(p["ExecMainStartTimestampMonotonic"])) / 1e6
    return Started(int(p["MainPID"]), p["InvocationID"], ready_s, exec_to_ready, active_at)


def exits(sd: BootedSystemd, invocation: str) -> list[tuple[str, str, str]]:
    """(SERVICE_RESULT, EXIT_CODE, EXIT_STATUS) of each exit of the daemon run ``invocation``."""
    out = sd.run("cat", EXITS_FILE, check=False).stdout
    return [(r, c, st) for inv, r, c, st in (x.split() for x in out.splitlines()) if inv == invocation]


def stop(sd: BootedSystemd) -> float:
    t0 = time.monotonic()
    sd.systemctl("stop", UNIT, timeout=40)
    return time.monotonic() - t0


@pytest.fixture
def service(booted: BootedSystemd) -> Iterator[Started]:
    """audiod.service started (READY reached); stopped and reset afterwards, whatever the test did."""
    booted.run("rm", "-f", HANG_FILE)
    booted.systemctl("reset-failed", UNIT, check=False)  # also resets the StartLimitBurst= count
    started = start(booted)
    print(
        f"\nstart -> READY: {started.ready_s:.2f}s (`systemctl start`), "
        f"{started.exec_to_ready_s:.2f}s (exec -> active, systemd's timestamps)"
    )
    yield started
    booted.run("rm", "-f", HANG_FILE)
    print(diagnostics(booted))  # shown by pytest only when the test failed
    booted.systemctl("stop", UNIT, check=False, timeout=40)
    booted.systemctl("reset-failed", UNIT, check=False)


# ------------------------------------------------------------------------------------------------- tests


def test_notify_status_journal_and_clean_stop(
    booted: BootedSystemd, service: Started, vmic: VirtualMic, media: dict[str, Path]
) -> None:
    sd = service
    p = show(booted, "Type", "NotifyAccess", "WatchdogUSec", "StatusText")
    assert (p["Type"], p["NotifyAccess"], p["WatchdogUSec"]) == ("notify", "main", f"{WATCHDOG_S}s")
    # READY=1 carries the first STATUS= line, so it is there the moment `systemctl start` returns.
    assert STATUS_RE.search(p["StatusText"]), p
    assert "Latency:" in booted.systemctl("status", UNIT).stdout

    # Logging went to journald's native protocol by itself (no [log] in the config): EVENT= fields.
    # READY=1 came only after the model was loaded.
    def model_loaded() -> list[dict[str, Any]] | None:
        return journal_json(booted, sd.own(), "EVENT=model_loaded") or None

    (loaded,) = wait_until(model_loaded, 5, what="EVENT=model_loaded in the journal")
    assert int(loaded["__MONOTONIC_TIMESTAMP"]) < sd.active_at_us

    t0 = time.monotonic()
    vmic.play(media["speech"])  # on the host; the sandboxed daemon hears it through the bound socket

    def transcripts() -> list[dict[str, Any]] | None:
        found = journal_json(booted, sd.own(), "EVENT=transcript", fields=("TEXT", "LATENCY_MS", "SEQ"))
        return found if len(found) >= len(SENTENCES) else None

    try:
        entries = wait_until(transcripts, 30, 0.25, f"{len(SENTENCES)} transcripts in the journal")
    except TimeoutError:
        pytest.fail(f"too few transcripts in the journal:\n{diagnostics(booted)}")
    heard_s = time.monotonic() - t0
    texts = [e["TEXT"] for e in entries]
    error = wer(" ".join(SENTENCES), " ".join(texts))
    print(f"WER {error:.3f} after {heard_s:.1f}s: {texts}")
    assert error <= 0.35

    # What an operator reads: the words in the message line...
    lines = journal_text(booted, sd.own(), "EVENT=transcript", "-o", "cat").splitlines()
    assert len(lines) >= len(texts) and all(t in x for t, x in zip(texts, lines, strict=False)), lines
    # ...and the same words, under the same seq, in the durable JSONL file in StateDirectory=.
    jsonl = booted.run("cat", "/var/lib/audiod/transcripts.jsonl").stdout.splitlines()
    by_seq = {r["seq"]: r["text"] for r in map(json.loads, jsonl)}
    assert [by_seq.get(int(e["SEQ"])) for e in entries] == texts, (entries, jsonl)

    # Metrics as journal fields, 10 a second, no drops.
    metrics = journal_json(
        booted, sd.own(), "EVENT=metrics", fields=("AUDIO_LAG_MS", "DROPPED_CHUNKS", "TOTAL_CHUNKS")
    )
    assert len(metrics) > 5 * heard_s, f"{len(metrics)} metrics entries in {heard_s:.1f}s"
    assert all({"AUDIO_LAG_MS", "DROPPED_CHUNKS"} <= set(m) for m in metrics), metrics[-3:]
    assert {m["DROPPED_CHUNKS"] for m in metrics} == {"0"}, metrics[-3:]
    lags = [int(m["AUDIO_LAG_MS"]) for m in metrics]
    print(f"audio lag over {len(lags)} metrics: min {min(lags)}, max {max(lags)}, last {lags[-1]} ms")
    # It grows while Whisper runs (the worker consumes nothing meanwhile) and falls back once it is done.
    assert max(lags) < 5000 and any(-500 < x < 1000 for x in lags[-20:]), lags[-30:]

    # STATUS= keeps being refreshed: it now counts the transcripts. The watchdog (4 s) was fed
    # all along: same process, no restart.
    def refreshed() -> dict[str, str] | None:
        q = show(booted, "StatusText", "MainPID", "NRestarts", "ActiveState")
        count = re.search(r"transcripts (\d+)", q["StatusText"])
        return q if count and int(count.group(1)) >= len(texts) else None

    q = wait_until(refreshed, 3, what="STATUS= with the transcript count")
    assert STATUS_RE.search(q["StatusText"]) and "Drops: 0.0%" in q["StatusText"], q
    assert (q["ActiveState"], int(q["MainPID"]), q["NRestarts"]) == ("active", sd.pid, "0")

    # `audiod status` from a root shell finds the service's status file in /run/audiod.
    st = booted.run(str(AUDIOD), "status", "--json", check=False)
    assert st.returncode == 0, st.stderr
    snap = json.loads(st.stdout)
    assert (snap["state"], snap["pid"]) == ("running", sd.pid) and snap["transcripts"] >= len(texts)

    stop_s = stop(booted)
    print(f"stop took {stop_s:.2f}s")
    assert show(booted, "ActiveState")["ActiveState"] == "inactive"
    assert exits(booted, sd.invocation) == [("success", "exited", "0")], diagnostics(booted)
    assert stop_s < 10

    def stopped() -> list[dict[str, Any]] | None:
        return journal_json(booted, sd.own(), "EVENT=stopped", fields=("DRAIN_SECONDS",)) or None

    assert len(wait_until(stopped, 3, what="EVENT=stopped")) == 1, "the daemon logged its drain"


def test_watchdog_kills_and_restarts_a_hung_daemon(booted: BootedSystemd, service: Started) -> None:
    first = service
    booted.run("touch", HANG_FILE)  # the worker blocks: no progress -> no WATCHDOG=1
    t_hang = time.monotonic()

    # Result=watchdog is only visible until the restart (RestartSec=1s), so watch closely.
    def killed() -> dict[str, str] | None:
        p = show(booted, "Result", "ActiveState", "SubState", "NRestarts", "MainPID")
        return p if p["Result"] == "watchdog" else None

    # Worst case: pings go on until the heartbeat is WatchdogSec old, then WatchdogSec after the last one.
    try:
        p = wait_until(killed, 2 * WATCHDOG_S + 6, 0.05, "Result=watchdog")
    except TimeoutError:
        pytest.fail(f"no watchdog kill:\n{diagnostics(booted)}")
    t_killed = time.monotonic()
    booted.run("rm", "-f", HANG_FILE)  # so the restarted daemon's worker runs
    print(f"hang -> Result=watchdog: {t_killed - t_hang:.2f}s ({p['ActiveState']}/{p['SubState']})")

    def restarted() -> dict[str, str] | None:
        q = show(booted, "ActiveState", "SubState", "NRestarts", "MainPID", "Result", "InvocationID")
        healthy = (q["ActiveState"], q["SubState"]) == ("active", "running") and int(q["NRestarts"]) >= 1
        return q if healthy and int(q["MainPID"]) != first.pid else None

    q = wait_until(restarted, START_TIMEOUT_S, 0.1, "the restarted daemon to be READY")
    t_back = time.monotonic()
    print(f"Result=watchdog -> restarted and READY: {t_back - t_killed:.2f}s")
    assert q["Result"] == "success" and q["NRestarts"] == "1", q
    # Killed by the watchdog's SIGABRT (a core dump, if the core limit and pattern allow one).
    ((result, code, status),) = exits(booted, first.invocation)
    assert (result, status) == ("watchdog", "ABRT") and code in ("killed", "dumped"), (result, code, status)

    # systemd's side, from its own journal entries about the unit.
    manager = journal_json(booted, "_PID=1", f"INVOCATION_ID={first.invocation}", fields=("MESSAGE",))
    fired = [int(e["__MONOTONIC_TIMESTAMP"]) for e in manager if "Watchdog timeout" in str(e["MESSAGE"])]
    assert len(fired) == 1, manager
    assert any("Failed with result 'watchdog'" in str(e["MESSAGE"]) for e in manager), manager
    active_at = int(show(booted, "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
    # time.monotonic() is CLOCK_MONOTONIC, journald's and systemd's clock too (nspawn adds no time namespace).
    print(
        f"systemd: hang -> watchdog timeout {fired[0] / 1e6 - t_hang:.2f}s, "
        f"watchdog timeout -> active again {(active_at - fired[0]) / 1e6:.2f}s"
    )
    # faulthandler: the SIGABRT leaves every thread's stack in the journal, the hung worker's included.
    dump = journal_text(booted, first.own(), "-o", "cat")
    assert "Fatal Python error: Aborted" in dump, dump[-3000:]
    assert "daemon/_inference.py" in dump.partition("Fatal Python error: Aborted")[2], dump[-3000:]

    stop_s = stop(booted)
    print(f"stop of the restarted daemon took {stop_s:.2f}s")
    assert exits(booted, q["InvocationID"]) == [("success", "exited", "0")]
