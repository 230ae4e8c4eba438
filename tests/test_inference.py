"""The inference worker on its own (no audio device): real VAD, real model, a ring fed by the test."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon._config import InferenceSettings, VadSettings
from daemon._inference import StreamFormat, Transcriber, Worker
from daemon._ring import Ring
from daemon._sinks import JsonlSink, Outbox
from daemon._status import Status
from daemon._vad import Segmenter, SileroStream

BLOCK = 800  # 50 ms at 16 kHz


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber(InferenceSettings())


def run_worker(
    transcriber: Transcriber, blocks: list[np.ndarray], tmp_path: Path
) -> tuple[Status, list[dict]]:
    status = Status.in_memory()
    ring = Ring(len(blocks) + 1, BLOCK, 1, status.ring_written, status.ring_read)
    t0 = time.time() - len(blocks) * 0.05
    for i, b in enumerate(blocks):
        assert ring.push(b.reshape(BLOCK, 1), t0 + i * 0.05)
    sink = JsonlSink(tmp_path / "t.jsonl")
    worker = Worker(
        ring,
        StreamFormat(16000, 1, BLOCK),
        status,
        Segmenter(VadSettings(), SileroStream()),
        transcriber.transcribe,
        Outbox(sink, status),
    )
    worker.start()
    worker.stop()
    worker.join(60)
    assert not worker.is_alive() and worker.error is None
    sink.close()
    return status, [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]


def scripted_worker(
    tmp_path: Path, speech: set[int], transcribe: Callable[[np.ndarray], str], capacity: int = 8, **kw: Any
) -> tuple[Worker, Ring, Status, JsonlSink]:
    """A worker whose VAD follows a script (speech in the listed 32 ms windows), fed one window per block."""
    from .test_vad import SETTINGS, Script

    status = Status.in_memory()
    ring = Ring(capacity, 512, 1, status.ring_written, status.ring_read)
    sink = JsonlSink(tmp_path / "t.jsonl")
    segmenter = Segmenter(SETTINGS, Script(speech=speech))
    worker = Worker(
        ring, StreamFormat(16000, 1, 512), status, segmenter, transcribe, Outbox(sink, status), **kw
    )
    return worker, ring, status, sink


def test_garbage_from_a_driver_is_counted_and_yields_no_text(
    transcriber: Transcriber, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    blocks = (
        [np.full(BLOCK, np.nan, np.float32)] * 20  # NaN
        + [np.where(rng.random(BLOCK) < 0.5, np.inf, -np.inf).astype(np.float32)] * 20  # inf
        + [np.full(BLOCK, 0.7, np.float32)] * 40  # DC offset
        + [np.zeros(BLOCK, np.float32)] * 40  # digital silence
        + [np.sign(rng.standard_normal(BLOCK)).astype(np.float32) * 0.001] * 20  # clipped hiss
    )
    status, lines = run_worker(transcriber, blocks, tmp_path)
    snap = status.snapshot()
    status.close()
    assert lines == []
    assert snap.nonfinite_blocks == 40
    assert snap.transcripts == 0 and snap.audio_processed_ms == len(blocks) * 50


def test_speech_after_garbage_is_still_transcribed(transcriber: Transcriber, tmp_path: Path) -> None:
    import subprocess
    import wave

    wav = tmp_path / "s.wav"
    subprocess.run(
        ["flite", "-voice", "slt", "-t", "Rice is often served in round bowls.", "-o", str(wav)], check=True
    )
    with wave.open(str(wav)) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    audio = np.concatenate([np.full(BLOCK * 10, np.nan, np.float32), speech, np.zeros(16000, np.float32)])
    audio = audio[: len(audio) // BLOCK * BLOCK]
    status, lines = run_worker(transcriber, list(audio.reshape(-1, BLOCK)), tmp_path)
    status.close()
    assert len(lines) == 1 and "served in round" in lines[0]["text"].lower()


def test_a_draft_decoded_in_a_pause_becomes_the_final_or_is_counted_as_voided(tmp_path: Path) -> None:
    # Speech in windows 10-29 and 34-49: the 4-window pause makes a draft that speech voids; the silence
    # after 49 makes a draft that its end confirms.
    runs: list[int] = []

    def transcribe(audio: np.ndarray) -> str:
        runs.append(len(audio))
        return f"run {len(runs)}"

    worker, ring, status, sink = scripted_worker(
        tmp_path, set(range(10, 30)) | set(range(34, 50)), transcribe
    )
    worker.start()
    t0 = time.time()
    for i in range(70):  # one window per batch, as a live stream delivers them
        assert ring.push(np.zeros((512, 1), np.float32), t0 + i * 0.032)
        deadline = time.monotonic() + 5
        while status.ring_read.load() <= i and time.monotonic() < deadline:
            time.sleep(0.001)
    worker.stop()
    worker.join(10)
    sink.close()
    snap = status.snapshot()
    status.close()
    lines = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(runs) == 2, "two drafts, and the final reused the second"
    assert [(r["text"], r["early"]) for r in lines] == [("run 2", True)]
    assert snap.drafts_voided == 1 and snap.inference_runs == 2 and snap.transcripts == 1


@pytest.mark.parametrize("loss", [False, True], ids=["skip only", "skip after a loss"])
def test_a_skip_gap_is_as_long_as_the_audio_skipped_whatever_the_stamps_say(
    tmp_path: Path, loss: bool
) -> None:
    now = [1000.0]
    worker, ring, status, sink = scripted_worker(
        tmp_path, set(), lambda audio: "", capacity=128, max_lag_s=1.0, clock=lambda: now[0]
    )
    block = np.zeros((512, 1), np.float32)
    # The first second of a PulseAudio stream: stamps 0.465 s early (the ALSA plugin over-reports its delay).
    for i in range(30):
        assert ring.push(block, 1000 + i * 0.032 - 0.465)
    worker.start()
    deadline = time.monotonic() + 5
    while status.consumed_until_us.load() == 0 and time.monotonic() < deadline:  # consumed, not only drained
        time.sleep(0.001)
    # The worker stalls for 3 s; 100 blocks wait, correctly stamped, and those older than 1 s are skipped.
    # With a loss, PortAudio reported an overflow before the 10th of them: only the stamps can tell how much.
    # The worker may drain them in several batches: skips add up across batches.
    now[0] = 1000 + 130 * 0.032
    for i in range(30, 130):
        assert ring.push(block, 1000 + i * 0.032, after_loss=loss and i == 40)
    worker.stop()
    worker.join(10)
    sink.close()
    snap = status.snapshot()
    status.close()
    (gap,) = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert snap.skipped_chunks == 68  # the blocks that end more than 1 s before now
    if loss:
        # Newest stamp minus the skewed one before the skip
        assert gap["seconds"] == pytest.approx(68 * 0.032 + 0.465, abs=0.002)
    else:
        assert gap["seconds"] == pytest.approx(68 * 0.032, abs=0.002)
        assert gap["end"] == pytest.approx(1000 + 98 * 0.032, abs=0.002), "anchored on the newer stamp"


@pytest.mark.parametrize("model_error", [True, False], ids=["model error", "bug"])
def test_a_model_that_fails_its_first_run_stops_the_worker_before_ready_without_a_traceback(
    tmp_path: Path, model_error: bool
) -> None:
    import structlog

    from daemon._inference import ModelError

    def broken() -> None:
        if model_error:
            raise ModelError("model 'x' failed its first run: unsupported compute type")
        raise ZeroDivisionError

    worker, _ring, status, sink = scripted_worker(tmp_path, set(), lambda audio: "", warm=broken)
    with structlog.testing.capture_logs() as logs:
        worker.start()
        worker.join(10)
    sink.close()
    status.close()
    assert not worker.is_alive() and not worker.warmed.is_set()
    if model_error:
        assert isinstance(worker.error, ModelError), "the main thread says it in one line, exit code 66"
        assert logs == [], "no worker_failed traceback"
    else:  # a bug is logged with its traceback
        assert isinstance(worker.error, ZeroDivisionError)
        assert [e["event"] for e in logs] == ["worker_failed"]
