"""Microphone capture: pick a device and format, and run the PortAudio callback that feeds the ring.

The callback is the only code on PortAudio's real-time thread. It copies the block into the preallocated
ring, stamps it with its capture time and bumps counters: three ``atomics`` operations, no allocation of
its own, no lock, no logging. It never raises, because an exception would stop the stream silently; it
counts it instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ._atomic import fast_inc
from ._callback_timer import ENV as CALLBACK_TIMER_ENV
from ._callback_timer import CallbackTimer
from ._config import CaptureSettings
from ._ring import Ring
from ._status import Status

TARGET_RATE = 16000


class PortAudioMissing(Exception):
    pass


class DeviceError(Exception):
    """No usable input device. The message lists the devices there are."""


def portaudio() -> ModuleType:
    """Import sounddevice, turning a missing PortAudio into one line with the fix."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice raises OSError("PortAudio library not found") at import
        raise PortAudioMissing(f"{e}; install it with: sudo apt-get install libportaudio2") from None
    module: ModuleType = sounddevice
    return module


@dataclass(frozen=True, slots=True)
class InputFormat:
    device: int
    name: str
    samplerate: int
    channels: int
    block_frames: int


def input_devices(sd: ModuleType) -> list[dict[str, Any]]:
    return [d for d in sd.query_devices() if d["max_input_channels"] > 0]


def describe_devices(sd: ModuleType) -> str:
    devs = input_devices(sd)
    if not devs:
        return "no input devices found"
    return "input devices: " + "; ".join(f"{d['index']}: {d['name']}" for d in devs)


def resolve_device(sd: ModuleType, spec: str) -> dict[str, Any]:
    """An index, a name (exact, case-insensitive) or a unique name substring; '' = the default input."""
    devs = input_devices(sd)
    if spec == "":
        default = sd.default.device[0]
        if default is None or default < 0:
            raise DeviceError(f"no default input device; {describe_devices(sd)}")
        spec = str(default)
    if spec.isdigit():
        for d in devs:
            if d["index"] == int(spec):
                return d
        raise DeviceError(f"no input device with index {spec}; {describe_devices(sd)}")
    exact = [d for d in devs if d["name"].lower() == spec.lower()]
    matches = exact or [d for d in devs if spec.lower() in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DeviceError(f"no input device matches {spec!r}; {describe_devices(sd)}")
    names = ", ".join(f"{d['index']}: {d['name']}" for d in matches)
    raise DeviceError(f"device {spec!r} is ambiguous ({names}); give an index or a longer name")


def choose_format(sd: ModuleType, settings: CaptureSettings) -> InputFormat:
    """16 kHz mono when the device takes it (no resampling); else the device's own rate and channels."""
    dev = resolve_device(sd, settings.device)
    rates = [settings.samplerate] if settings.samplerate else [TARGET_RATE, int(dev["default_samplerate"])]
    channels = [settings.channels] if settings.channels else sorted({1, min(2, dev["max_input_channels"])})
    for rate in rates:
        for ch in channels:
            try:
                sd.check_input_settings(device=dev["index"], samplerate=rate, channels=ch, dtype="float32")
            except Exception:  # PortAudio's errors are plain Exceptions/ValueErrors: try the next format
                continue
            return InputFormat(dev["index"], dev["name"], rate, ch, max(1, rate * settings.block_ms // 1000))
    raise DeviceError(
        f"input device {dev['index']}: {dev['name']} takes none of rates {rates} x channels {channels}"
    )


class Capture:
    """An open PortAudio input stream feeding ``ring``."""

    def __init__(self, sd: ModuleType, fmt: InputFormat, ring: Ring, status: Status) -> None:
        self._block_s = fmt.block_frames / fmt.samplerate
        # Bound once: attribute lookups on the hot path cost more than the copy.
        self._push = ring.push
        self._count = fast_inc(status.total_chunks)  # one C call per block (see _atomic)
        self._dropped = status.dropped_chunks
        self._xruns = status.xruns
        self._errors = status.callback_errors
        self._wall = time.time
        self.finished = False
        # bench/ only: time the callback body. Unset in production, where PortAudio gets the plain method.
        timer_path = os.environ.get(CALLBACK_TIMER_ENV)
        self._timer = CallbackTimer(self._callback, timer_path) if timer_path else None
        self._stream = sd.InputStream(
            device=fmt.device,
            samplerate=fmt.samplerate,
            channels=fmt.channels,
            dtype="float32",
            blocksize=fmt.block_frames,
            callback=self._callback if self._timer is None else self._timer,
            finished_callback=self._on_finished,
        )

    def _callback(self, indata: Any, frames: int, time_info: Any, flags: Any) -> None:
        try:
            overflow = bool(flags) and flags.input_overflow
            if overflow:
                self._xruns.inc()
            # PortAudio stamps the first frame on its own clock; map it to wall-clock through "now" on the
            # same clock. Some host APIs report 0: then the block ended about now.
            adc = time_info.inputBufferAdcTime
            now = time_info.currentTime
            captured = self._wall() - (now - adc) if adc > 0 and now > 0 else self._wall() - self._block_s
            self._count()  # first, so a block that fails below still counts as delivered
            if not self._push(indata, captured, overflow):
                self._dropped.inc()
        except Exception:
            self._errors.inc()

    def _on_finished(self) -> None:
        self.finished = True

    def start(self) -> None:
        self._stream.start()

    @property
    def active(self) -> bool:
        return bool(self._stream.active)

    def stop(self) -> None:
        """Stop and close; PortAudio waits for a running callback to return, so the ring is final after."""
        try:
            self._stream.stop()
        finally:
            self._stream.close()
            if self._timer is not None:
                self._timer.save()

    def abort(self) -> None:
        """Close a stream whose device is gone: drop its buffers and ignore its errors."""
        with contextlib.suppress(Exception):
            self._stream.abort()
        with contextlib.suppress(Exception):
            self._stream.close()


STALL_S = 1.0  # no callback for this long while the stream claims to be active: the device is gone
BACKOFF_S = (0.5, 5.0)  # first and longest wait between attempts to reopen the device


class StreamKeeper:
    """Keeps capture alive across device loss: notices a dead stream (finished, inactive, or no callback for
    ``STALL_S``), closes it, rescans PortAudio's devices and reopens the same device in the same format with
    exponential backoff. The ring and the worker carry on; the first block after the outage is marked as
    following a loss, so the worker ends the utterance and records the gap. Driven by ``check()`` from the
    main thread."""

    def __init__(
        self,
        sd: ModuleType,
        settings: CaptureSettings,
        fmt: InputFormat,
        ring: Ring,
        status: Status,
        log: Any,
        first_audio_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sd = sd
        # Reopen in exactly the format the ring was built for.
        self._settings = dataclasses.replace(settings, samplerate=fmt.samplerate, channels=fmt.channels)
        self._fmt = fmt
        self._ring = ring
        self._status = status
        self._log = log
        self._first_audio_s = first_audio_s
        self._clock = clock
        self.capture: Capture | None = Capture(sd, fmt, ring, status)
        self._seen = -1
        self._last_progress = clock()
        self._lost_at = 0.0
        self._attempts = 0
        self._next_attempt = 0.0

    def start(self) -> None:
        assert self.capture is not None
        self.capture.start()
        self._last_progress = self._clock() + self._first_audio_s - STALL_S  # first blocks can be slow

    def check(self) -> None:
        now = self._clock()
        if self.capture is not None:
            total = self._status.total_chunks.load()
            if total != self._seen:
                self._seen, self._last_progress = total, now
            if self.capture.finished:
                reason = "the stream ended"
            elif not self.capture.active:
                reason = "the stream is inactive"
            elif now - self._last_progress > STALL_S:
                reason = f"no audio for {now - self._last_progress:.1f}s"
            else:
                return
            self._log.warning("capture_lost", device=self._fmt.name, reason=reason)
            self.capture.abort()
            self.capture = None
            self._lost_at, self._attempts, self._next_attempt = now, 0, now
        if now >= self._next_attempt:
            self._reopen(now)

    def _reopen(self, now: float) -> None:
        self._attempts += 1
        try:
            # PortAudio freezes its device list at initialisation: a device that came back is only
            # visible after a re-initialisation.
            self._sd._terminate()
            self._sd._initialize()
            fmt = choose_format(self._sd, self._settings)
            if fmt.block_frames != self._fmt.block_frames:
                raise DeviceError(f"device now runs at {fmt.samplerate} Hz, not {self._fmt.samplerate}")
            self._ring.mark_loss()
            capture = Capture(self._sd, fmt, self._ring, self._status)
            capture.start()
        except Exception as e:  # PortAudio and our DeviceError alike: try again later
            delay = min(BACKOFF_S[0] * 2 ** (self._attempts - 1), BACKOFF_S[1])
            self._next_attempt = now + delay
            self._log.warning(
                "capture_reopen_failed",
                device=self._fmt.name,
                attempt=self._attempts,
                retry_in_s=delay,
                error=str(e),
            )
            return
        self.capture = capture
        self._status.stream_restarts.inc()
        self._last_progress = now + self._first_audio_s - STALL_S
        self._log.warning(
            "capture_restored",
            device=fmt.name,
            attempts=self._attempts,
            after_s=round(now - self._lost_at, 3),
        )

    def stop(self) -> None:
        """Stop capture. PortAudio's stop waits for the stream's buffers, which never come from a device that
        delivers nothing: such a stream is aborted instead, so shutting down can never hang."""
        if self.capture is None:
            return
        total = self._status.total_chunks.load()
        flowing = total > 0 and (total != self._seen or self._clock() - self._last_progress < STALL_S)
        if flowing:
            self.capture.stop()
        else:
            self.capture.abort()
        self.capture = None
