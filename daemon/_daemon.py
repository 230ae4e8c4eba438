"""``audiod run``: wire capture -> ring -> inference -> sinks, with the status block and poller beside them.

Start-up order matters: resolve the device (fail fast on a typo), open the stream, then load the model while
the ring holds the first audio. Devices can take a second or more to deliver their first block (ALSA's pulse
plugin does), and loading the model takes about half a second: overlapping the two is most of what makes
start-up fast. READY waits for the model to be loaded and warmed (one run, on the worker's thread, which
overlaps the device's start too) and for audio to flow. Nothing captured is lost: the ring holds
``ring.capacity_s`` of audio. Shut-down runs the other way: stop capture, let the worker drain the ring and
transcribe the utterance in progress, then close.
"""

from __future__ import annotations

import faulthandler
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, ModuleType

import structlog

from . import _exits
from ._capture import DeviceError, InputFormat, StreamKeeper, choose_format, portaudio
from ._config import Settings
from ._events import CounterEvents
from ._inference import ModelError, StreamFormat, Transcriber, Worker
from ._memory import pin_malloc
from ._notify import Supervisor, Watchdog, notify, status_line
from ._paths import PID_FILE, STATUS_FILE, PidFile, ensure_private_dir, runtime_dir, state_dir
from ._poller import Poller, Subscriber
from ._prometheus import Exporter
from ._ring import Ring
from ._sinks import JsonlSink, Outbox
from ._status import LOADING, RUNNING, STOPPING, Status
from ._vad import Segmenter, SileroStream

FIRST_AUDIO_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 15.0  # inside the unit's TimeoutStopSec=20s, so we exit before systemd's SIGKILL


def transcript_path(settings: Settings) -> Path:
    return Path(settings.transcript.path) if settings.transcript.path else state_dir() / "transcripts.jsonl"


def run(
    settings: Settings,
    subscribers: tuple[Subscriber, ...] = (),
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code. Start-up errors propagate as exceptions."""
    log = structlog.get_logger("audiod")
    # systemd's watchdog kills with SIGABRT: leave every thread's stack in the journal, to show what hung.
    faulthandler.enable()
    pin_malloc()  # before the model allocates anything
    sd = portaudio()
    fmt = choose_format(sd, settings.capture)
    rundir = ensure_private_dir(runtime_dir())
    with PidFile(rundir / PID_FILE), Exporter(settings.metrics.prometheus, rundir / STATUS_FILE):
        return _run_locked(settings, log, sd, fmt, rundir, subscribers, on_ready)


def _run_locked(
    settings: Settings,
    log: structlog.typing.FilteringBoundLogger,
    sd: ModuleType,
    fmt: InputFormat,
    rundir: Path,
    subscribers: tuple[Subscriber, ...],
    on_ready: Callable[[], None] | None,
) -> int:
    status = Status.create(rundir / STATUS_FILE)
    try:
        status.state.store(LOADING)
        sink = JsonlSink(transcript_path(settings))  # before the model: a bad path should fail fast
        if sink.repaired:
            log.warning("transcript_repaired", path=str(sink.path), bytes_cut=sink.repaired)
        capacity = max(2, math.ceil(settings.ring.capacity_s * fmt.samplerate / fmt.block_frames))
        ring = Ring(capacity, fmt.block_frames, fmt.channels, status.ring_written, status.ring_read)
        status.ring_capacity.store(capacity)
        keeper = StreamKeeper(sd, settings.capture, fmt, ring, status, log, FIRST_AUDIO_TIMEOUT_S)
        # Capture must stop before the status block is unmapped, on every path: the callback's counters are
        # bound to raw addresses in it (``_atomic.fast_inc``). ``keeper.stop()`` is a no-op the second time.
        try:
            keeper.start()
            t0 = time.monotonic()
            transcriber = Transcriber(settings.inference)
            segmenter = Segmenter(settings.vad, SileroStream())
            log.info("model_loaded", model=settings.inference.model, seconds=round(time.monotonic() - t0, 3))
            worker = Worker(
                ring,
                StreamFormat(fmt.samplerate, fmt.channels, fmt.block_frames),
                status,
                segmenter,
                transcriber.transcribe,
                Outbox(sink, status),
                settings.ring.max_lag_s,
                warm=transcriber.warm,
            )
            supervisor = Supervisor(Watchdog.from_env())
            poller = Poller(
                status, settings.poller.interval_ms / 1000, (supervisor, CounterEvents(), *subscribers)
            )
            return _serve(log, status, keeper, fmt, worker, poller, sink, on_ready)
        finally:
            keeper.stop()
    finally:
        status.close()


def _serve(
    log: structlog.typing.FilteringBoundLogger,
    status: Status,
    keeper: StreamKeeper,
    fmt: InputFormat,
    worker: Worker,
    poller: Poller,
    sink: JsonlSink,
    on_ready: Callable[[], None] | None,
) -> int:
    stop = threading.Event()
    reopen = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        (reopen if signum == signal.SIGHUP else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def shutdown() -> bool:
        """Stop capture, let the worker drain the ring and the utterance in progress; False if it hung."""
        keeper.stop()
        worker.stop()
        worker.join(DRAIN_TIMEOUT_S)
        poller.stop()
        poller.tick()  # the final counters, after the drain
        sink.close()
        return not worker.is_alive()

    worker.start()
    poller.start()
    # "Running" means the model is warm and audio is flowing, not merely that the stream opened: some
    # devices (the ALSA pulse plugin) take a second or two to deliver the first block; a dead one never does.
    deadline = time.monotonic() + FIRST_AUDIO_TIMEOUT_S
    while status.total_chunks.load() == 0 or not worker.warmed.is_set():
        if not worker.is_alive():  # the model failed its first run (a ModelError), or a bug (logged)
            shutdown()
            if isinstance(worker.error, ModelError):
                raise worker.error
            log.error("worker_died", error=repr(worker.error))
            return _exits.FAILURE
        silent = status.total_chunks.load() == 0 and time.monotonic() > deadline  # a warm-up has no deadline
        if silent or (keeper.capture and keeper.capture.finished) or stop.is_set():
            shutdown()
            if stop.is_set():
                return _exits.OK
            raise DeviceError(f"no audio from input device {fmt.name!r} within {FIRST_AUDIO_TIMEOUT_S:.0f}s")
        time.sleep(0.01)
    status.state.store(RUNNING)
    notify("READY=1", f"STATUS={status_line(status.snapshot())}")
    log.info(
        "started",
        pid=os.getpid(),
        device=f"{fmt.device}: {fmt.name}",
        samplerate=fmt.samplerate,
        channels=fmt.channels,
        block_frames=fmt.block_frames,
        ring_blocks=status.ring_capacity.load(),
        transcript=str(sink.path),
    )
    status.write_info(
        device=f"{fmt.device}: {fmt.name}", samplerate=fmt.samplerate, transcript=str(sink.path)
    )
    if on_ready is not None:
        on_ready()
    code = _exits.OK
    while not stop.wait(0.2):
        if reopen.is_set():
            reopen.clear()
            sink.reopen()
            log.info("transcript_reopened", path=str(sink.path))
        if not worker.is_alive():
            log.error("worker_died", error=repr(worker.error))
            code = _exits.FAILURE
            break
        keeper.check()
    status.state.store(STOPPING)
    notify("STOPPING=1", "STATUS=stopping: transcribing what is buffered")
    log.info("stopping")
    t0 = time.monotonic()
    if not shutdown():
        log.error(
            "drain_timeout", seconds=DRAIN_TIMEOUT_S, lost="the buffered audio and utterance in progress"
        )
        code = _exits.FAILURE
    log.info("stopped", drain_seconds=round(time.monotonic() - t0, 3), poller_ticks=poller.ticks)
    return code
