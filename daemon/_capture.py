"""Microphone capture: pick a device and format, and run the PortAudio callback that feeds the ring.

The callback is the only code on PortAudio's real-time thread. It copies the block into the preallocated
ring, stamps it with its capture time and bumps counters: three ``atomics`` operations, no allocation of
its own, no lock, no logging. It never raises, because an exception would stop the stream silently; it
counts it instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

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
        self.format = fmt
        self._ring = ring
        self._block_s = fmt.block_frames / fmt.samplerate
        # Bound once: attribute lookups on the hot path cost more than the copy.
        self._push = ring.push
        self._total = status.total_chunks
        self._dropped = status.dropped_chunks
        self._xruns = status.xruns
        self._errors = status.callback_errors
        self._wall = time.time
        self.finished = False
        self._stream = sd.InputStream(
            device=fmt.device,
            samplerate=fmt.samplerate,
            channels=fmt.channels,
            dtype="float32",
            blocksize=fmt.block_frames,
            callback=self._callback,
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
            self._total.inc()  # first, so a block that fails below still counts as delivered
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
