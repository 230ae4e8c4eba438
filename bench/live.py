"""One live run: ``audiod run`` as its own process on the private virtual microphone, one case played into it.

What is observed, and how:

- transcript lines: the JSONL file is polled every ``POLL_S``; each new line is stamped when it is seen;
- when each file sample entered the microphone: ``parec`` records the null sink's monitor with 10 ms
  latency next to audiod; the earliest arrival of its samples (a lower envelope, so scheduling delays drop
  out) maps its stream to wall-clock, and cross-correlation finds the played file in it;
- CPU: utime + stime of the audiod process (all threads, /proc/PID/stat) at the window's edges;
- memory: VmRSS and VmHWM from /proc/PID/status;
- counters: the status block, read in this process with ``daemon._status.read`` (no subprocess);
- the callback body's durations: ``AUDIOD_BENCH_CALLBACK_NS`` (see ``daemon/_callback_timer.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.corpus import RATE, Case, read_wav
from daemon._callback_timer import ENV as CALLBACK_ENV
from daemon._paths import STATUS_FILE, runtime_dir
from daemon._status import StatusFileError
from daemon._status import read as read_status
from daemon._vmic import SINK, VirtualMic

POLL_S = 0.005
READY_TIMEOUT_S = 60.0
SETTLE_S = 1.0  # after playback: no new model run or transcript for this long ends the case
SETTLE_MAX_S = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Variables that would make the child talk to a real systemd or journald instead of our pipes.
FOREIGN_ENV = ("RUNTIME_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


def process_cpu_s(pid: int) -> float:
    """User + system CPU of every thread of ``pid`` (exited threads included), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat(5)


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds all processes used since boot (busy, excluding idle and iowait), and time stolen by the
    hypervisor: the background against which a run's own figures are read."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def own_cpu_s(exclude: int) -> float:
    """CPU of this benchmark: this process, its reaped children (paplay) and its live children (PulseAudio,
    parec) except ``exclude`` (audiod, counted on its own)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


@dataclass
class Line:
    record: dict[str, Any]
    seen_at: float  # wall-clock, when the poller saw the complete line


class TranscriptWatcher(threading.Thread):
    """Polls the JSONL file and stamps each complete line when it appears."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="bench-transcripts", daemon=True)
        self.path = path
        self.lines: list[Line] = []
        self._done = threading.Event()
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        now = time.time()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            with contextlib.suppress(ValueError):
                self.lines.append(Line(json.loads(raw), now))

    def run(self) -> None:
        while not self._done.wait(POLL_S):
            self.poll()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.poll()


class LogReader(threading.Thread):
    """audiod's JSON log lines (stderr), each stamped on arrival."""

    def __init__(self, stream: Any) -> None:
        super().__init__(name="bench-log", daemon=True)
        self._stream = stream
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.raw: list[str] = []

    def run(self) -> None:
        for line in self._stream:
            now = time.time()
            self.raw.append(line)
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") != "metrics":  # ten a second; nothing here needs them
                    self.events.append((now, event))

    def first(self, name: str) -> tuple[float, dict[str, Any]] | None:
        return next(((t, e) for t, e in list(self.events) if e.get("event") == name), None)

    def tail(self) -> str:
        return "".join(self.raw[-30:])


class Probe(threading.Thread):
    """Records the microphone with ``parec`` and maps its samples to wall-clock."""

    CHUNK = 640  # bytes: 10 ms of float32 mono

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(name="bench-probe", daemon=True)
        self._proc = subprocess.Popen(
            [
                "parec",
                f"--device={SINK}.monitor",
                "--format=float32le",
                f"--rate={RATE}",
                "--channels=1",
                "--latency-msec=10",
                "--raw",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._chunks: list[bytes] = []
        self._received = 0  # samples
        self._start_estimate = float("inf")  # wall-clock of stream sample 0: min over reads of (t - n/RATE)
        self.started = threading.Event()

    def run(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        pending = b""
        while data := os.read(fd, self.CHUNK):
            now = time.time()
            data = pending + data
            whole = len(data) // 4 * 4
            pending = data[whole:]
            self._chunks.append(data[:whole])
            self._received += whole // 4
            self._start_estimate = min(self._start_estimate, now - self._received / RATE)
            self.started.set()

    def stop(self) -> tuple[npt.NDArray[np.float32], float]:
        """The recording and the wall-clock time its first sample entered the microphone."""
        self._proc.terminate()
        self._proc.wait()
        self.join()
        return np.frombuffer(b"".join(self._chunks), dtype=np.float32), self._start_estimate


def locate(recording: npt.NDArray[np.float32], played: npt.NDArray[np.float32]) -> tuple[int, float]:
    """Offset of ``played`` in ``recording`` (samples), by FFT cross-correlation, and the peak's normalised
    height (1.0 = the recording holds the file exactly)."""
    n = 1 << int(np.ceil(np.log2(len(recording) + len(played))))
    xc = np.fft.irfft(np.fft.rfft(recording, n) * np.conj(np.fft.rfft(played, n)), n)
    lag = int(np.argmax(xc[: len(recording)]))
    seg = recording[lag : lag + len(played)]
    denom = float(np.sqrt(np.sum(seg**2) * np.sum(played[: len(seg)] ** 2))) or 1.0
    return lag, float(np.dot(seg, played[: len(seg)]) / denom)


@dataclass
class Run:
    """Raw observations of one live run; ``bench.metrics`` turns them into figures."""

    case: str
    exit_code: int | None = None
    error: str = ""
    spawn_at: float = 0.0
    events: dict[str, float] = field(default_factory=dict)  # log event -> arrival, s after spawn
    model_load_s: float = 0.0  # audiod's own figure: model and VAD load (the stream is open meanwhile)
    memory_ready: dict[str, float] = field(default_factory=dict)
    memory_end: dict[str, float] = field(default_factory=dict)
    play_at: float = 0.0  # paplay started (wall-clock)
    played_at: float = 0.0  # paplay exited
    file_start: float = 0.0  # wall-clock when the file's first sample entered the microphone
    file_match: float = 0.0  # cross-correlation peak, normalised
    window: tuple[float, float] = (0.0, 0.0)  # wall-clock of the CPU window
    cpu_s: float = 0.0  # audiod process CPU within the window
    idle_cpu_s: float = 0.0  # within the playback only (used for the noise case)
    others_cpu_s: float = 0.0  # every other process in the window (pulseaudio, parec, this bench, strangers)
    bench_cpu_s: float = 0.0  # of which this benchmark's own (this process, pulseaudio, parec, paplay)
    steal_s: float = 0.0
    lines: list[Line] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    callback_ns: list[list[int]] = field(default_factory=list)  # [start, duration] per call


def run_case(mic: VirtualMic, case: Case, directory: Path, model: str | None, config: str) -> Run:
    """Play ``case`` into a fresh ``audiod run`` with ``config`` (TOML text) and observe it."""
    directory.mkdir(parents=True)
    config_file = directory / "audiod.toml"
    config_file.write_text(config)
    run = Run(case.name)
    transcript = directory / "transcripts.jsonl"
    callback_file = directory / "callback_ns.npy"
    env = {**mic.client_env(), "XDG_RUNTIME_DIR": str(directory / "run"), CALLBACK_ENV: str(callback_file)}
    for name in FOREIGN_ENV:
        env.pop(name, None)
    status_path = runtime_dir(env) / STATUS_FILE
    cmd = [sys.executable, "-m", "daemon", "run", "--config", str(config_file)]
    cmd += ["--transcript", str(transcript), *(["--model", model] if model else [])]

    watcher = TranscriptWatcher(transcript)
    watcher.start()
    run.spawn_at = time.time()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    log = LogReader(proc.stderr)
    log.start()
    probe: Probe | None = None
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while log.first("started") is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"audiod did not start (exit {proc.poll()}): {log.tail()}")
            time.sleep(0.01)
        run.memory_ready = memory_mb(proc.pid)
        loaded = log.first("model_loaded")
        run.model_load_s = float(loaded[1].get("seconds", 0.0)) if loaded else 0.0

        if case.is_speech:  # only speech needs the timing; the idle figure comes without a second client
            probe = Probe(mic.client_env())
            probe.start()
            if not probe.started.wait(10):
                raise RuntimeError("parec delivered nothing")
            time.sleep(0.3)  # the recording holds some silence before the file: the correlation needs no wrap

        own0, (busy0, steal0), cpu0 = own_cpu_s(proc.pid), machine_busy_s(), process_cpu_s(proc.pid)
        run.play_at = time.time()
        player = mic.play(case.wav, wait=False)
        player.wait()
        run.played_at = time.time()
        idle_cpu = process_cpu_s(proc.pid)
        _settle(status_path, watcher, run.played_at)
        run.window = (run.play_at, time.time())
        cpu1, (busy1, steal1), own1 = process_cpu_s(proc.pid), machine_busy_s(), own_cpu_s(proc.pid)
        run.cpu_s, run.idle_cpu_s = cpu1 - cpu0, idle_cpu - cpu0
        run.others_cpu_s, run.steal_s = busy1 - busy0 - run.cpu_s, steal1 - steal0
        run.bench_cpu_s = own1 - own0
        run.memory_end = memory_mb(proc.pid)
        run.status = _snapshot(status_path)
        if probe is not None:
            recording, stream_start = probe.stop()
            probe = None
            lag, run.file_match = locate(recording, read_wav(case.wav))
            run.file_start = stream_start + lag / RATE

        proc.send_signal(signal.SIGTERM)
        run.exit_code = proc.wait(60)
    except Exception as e:  # one failed run is reported, not fatal to the benchmark
        run.error = f"{type(e).__name__}: {e}"
    finally:
        if probe is not None:
            probe.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.join(5)
        watcher.stop()
    run.lines = watcher.lines
    run.events = {e["event"]: round(t - run.spawn_at, 4) for t, e in reversed(log.events)}
    if callback_file.exists():
        run.callback_ns = np.load(callback_file).tolist()
    return run


def _snapshot(path: Path) -> dict[str, Any]:
    try:
        return read_status(path).snapshot.to_dict()
    except StatusFileError as e:
        return {"error": str(e)}


def _settle(status_path: Path, watcher: TranscriptWatcher, played_at: float) -> None:
    """Wait until the worker has consumed past the end of playback and then ``SETTLE_S`` passes with no new
    model run and no new transcript line."""
    deadline = time.monotonic() + SETTLE_MAX_S
    last_change, last = time.monotonic(), (-1, -1)
    while time.monotonic() < deadline:
        snap = _snapshot(status_path)
        now = (int(snap.get("inference_runs", -1)), len(watcher.lines))
        if now != last:
            last, last_change = now, time.monotonic()
        caught_up = int(snap.get("consumed_until_us", 0)) / 1e6 >= played_at
        if caught_up and time.monotonic() - last_change >= SETTLE_S:
            return
        time.sleep(0.05)
