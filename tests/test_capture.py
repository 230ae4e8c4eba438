"""Capture on a real PortAudio stream from the virtual microphone, and the callback's bookkeeping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

from daemon._capture import Capture, DeviceError, InputFormat, choose_format, resolve_device
from daemon._config import CaptureSettings
from daemon._ring import UNCOUNTED, Ring
from daemon._status import Status
from daemon._vmic import VirtualMic


@pytest.fixture
def sd(vmic: VirtualMic, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    for k, v in vmic.env.items():
        monkeypatch.setenv(k, v)
    import sounddevice

    # PortAudio's device list is frozen at initialisation: rescan now that PULSE_SERVER points at our mic.
    sounddevice._terminate()
    sounddevice._initialize()
    yield sounddevice


def ring_for(fmt: InputFormat, status: Status, frames: int | None = None, capacity: int = 100) -> Ring:
    return Ring(capacity, frames or fmt.block_frames, fmt.channels, status.ring_written, status.ring_read)


def test_devices_resolve_by_name_index_and_report_unknown(sd: ModuleType) -> None:
    pulse = resolve_device(sd, "pulse")
    assert pulse["name"] == "pulse"
    assert resolve_device(sd, str(pulse["index"]))["name"] == "pulse"
    with pytest.raises(DeviceError, match=r"no input device matches 'usb mic'; input devices: \d+: pulse"):
        resolve_device(sd, "usb mic")
    with pytest.raises(DeviceError, match="no input device with index 999"):
        resolve_device(sd, "999")


def test_format_prefers_16k_mono_and_honours_forced_values(sd: ModuleType) -> None:
    fmt = choose_format(sd, CaptureSettings(device="pulse"))
    assert (fmt.samplerate, fmt.channels, fmt.block_frames) == (16000, 1, 800)
    fmt = choose_format(sd, CaptureSettings(device="pulse", samplerate=44100, channels=2, block_ms=20))
    assert (fmt.samplerate, fmt.channels, fmt.block_frames) == (44100, 2, 882)


def test_real_stream_fills_the_ring_at_real_time_pace(sd: ModuleType) -> None:
    status = Status.in_memory()
    fmt = choose_format(sd, CaptureSettings(device="pulse"))
    ring = ring_for(fmt, status)
    cap = Capture(sd, fmt, ring, status)
    cap.start()
    wait_for_audio(status)
    n0, t0 = status.total_chunks.load(), time.monotonic()
    time.sleep(2.0)
    n1, t1 = status.total_chunks.load(), time.monotonic()
    cap.stop()
    out = ring.drain()
    snap = status.snapshot()
    status.close()
    assert (n1 - n0) * 0.05 == pytest.approx(t1 - t0, rel=0.2)
    assert out is not None and len(out) == snap.total_chunks == snap.ring_written >= 40
    # Capture times advance by one block each, near wall-clock now.
    assert np.median(np.diff(out.times)) == pytest.approx(0.05, abs=0.005)
    assert abs(out.times[-1] - time.time()) < 2.0
    assert snap.callback_errors == 0 and snap.dropped_chunks == 0


def test_callback_exceptions_are_counted_and_the_stream_survives(sd: ModuleType) -> None:
    status = Status.in_memory()
    fmt = choose_format(sd, CaptureSettings(device="pulse"))
    ring = ring_for(fmt, status, frames=fmt.block_frames + 1)  # every copy raises: wrong shape
    cap = Capture(sd, fmt, ring, status)
    cap.start()
    wait_for_audio(status)
    time.sleep(1.0)
    alive = cap.active
    cap.stop()
    snap = status.snapshot()
    status.close()
    assert alive, "an exception in the callback must not stop the stream"
    assert snap.callback_errors >= 15 and snap.callback_errors == snap.total_chunks
    assert snap.ring_written == 0


def wait_for_audio(status: Status) -> None:
    """The pulse ALSA plugin takes a second or two to deliver its first block."""
    deadline = time.monotonic() + 10
    while status.total_chunks.load() == 0:
        assert time.monotonic() < deadline, "no audio from the virtual microphone"
        time.sleep(0.01)


class _Stream:
    def __init__(self, **kwargs: object) -> None:
        self.callback = kwargs["callback"]


def test_overflow_counts_an_xrun_and_marks_the_break() -> None:
    # PortAudio's overflow flag cannot be provoked through PulseAudio (it absorbs overruns), so the callback
    # is called directly here, with sounddevice's real flag type.
    import sounddevice

    status = Status.in_memory()
    fmt = InputFormat(0, "test", 16000, 1, 4)
    ring = Ring(4, 4, 1, status.ring_written, status.ring_read)
    cap = Capture(SimpleNamespace(InputStream=_Stream), fmt, ring, status)  # type: ignore[arg-type]
    block = np.ones((4, 1), np.float32)
    now = time.time()
    t = SimpleNamespace(inputBufferAdcTime=100.0, currentTime=100.25)
    cap._callback(block, 4, t, sounddevice.CallbackFlags())
    cap._callback(block, 4, t, sounddevice.CallbackFlags(sounddevice._lib.paInputOverflow))
    cap._callback(
        block, 4, SimpleNamespace(inputBufferAdcTime=0.0, currentTime=0.0), sounddevice.CallbackFlags()
    )
    out = ring.drain()
    snap = status.snapshot()
    status.close()
    assert snap.xruns == 1 and snap.total_chunks == 3 and snap.callback_errors == 0
    assert out is not None and out.lost.tolist() == [0, UNCOUNTED, 0], "an overflow: lost, uncounted"
    assert out.times[0] == pytest.approx(now - 0.25, abs=0.05)  # ADC time mapped to wall-clock
    assert out.times[2] == pytest.approx(now - 4 / 16000, abs=0.05)  # no ADC time: the block ended now
