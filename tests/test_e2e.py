"""End to end: flite speech played into a private PulseAudio microphone, `audiod run` transcribing it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from daemon._status import FIELDS
from daemon._vmic import SENTENCES, VirtualMic

from .conftest import wer

pytestmark = pytest.mark.e2e

BLOCK_S = 0.05  # the default block_ms


def test_speech_is_transcribed_live_with_metrics(
    audiod: Any, vmic: VirtualMic, media: dict[str, Path]
) -> None:
    d = audiod()
    s0 = d.status_json()
    t0 = time.time()
    vmic.play(media["speech"])
    played_at = (t0, time.time())
    d.wait_for("transcript", timeout=30, count=len(SENTENCES))
    s1 = d.status_json()  # from another process, while the daemon runs
    t1 = time.time()
    assert d.stop() == 0

    lines = d.transcripts()
    text = " ".join(r["text"] for r in lines)
    error = wer(" ".join(SENTENCES), text)
    print(f"\nWER {error:.3f}: {text}\nfirst start - play: {lines[0]['start'] - t0:.3f}s")
    assert error <= 0.25
    for r in lines:
        assert {"seq", "text", "start", "end", "emitted_at", "latency_ms"} <= set(r)
        assert played_at[0] - 0.5 < r["start"] < r["end"] < played_at[1] + 0.5
        assert r["latency_ms"] == pytest.approx((r["emitted_at"] - r["end"]) * 1000, abs=2)
        assert 0 < r["latency_ms"] < 5000
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    # Sentences end in 1 s pauses: their drafts, decoded while the segmenter waited, are the finals.
    assert sum(r["early"] for r in lines) >= len(lines) - 1, [r["early"] for r in lines]
    assert len(d.named("transcript")) == len(lines)

    # Live counters, read by `audiod status --json` in another process.
    assert s1["state"] == "running" and s1["pid"] == d.proc.pid
    paced = (s1["total_chunks"] - s0["total_chunks"]) * BLOCK_S
    assert paced == pytest.approx(t1 - t0, rel=0.2), "capture runs at real-time pace"
    assert s1["dropped_chunks"] == 0 and s1["drop_rate"] == 0
    assert s1["xruns"] == 0 and s1["callback_errors"] == 0
    assert s1["inference_time_ms"] > 0 and s1["inference_runs"] >= len(SENTENCES)
    assert 0 < s1["real_time_factor"] < 1
    assert s1["real_time_factor"] == pytest.approx(s1["inference_time_ms"] / s1["inference_audio_ms"])
    assert -200 < s1["audio_lag_ms"] < 1000
    assert s1["transcripts"] == len(lines) and s1["last_latency_ms"] == lines[-1]["latency_ms"]
    # A live snapshot: blocks in flight make these inequalities; nothing may be ahead of what it counts.
    assert 0 <= s1["total_chunks"] - s1["ring_written"] - s1["dropped_chunks"] <= 2
    assert 0 <= s1["ring_read"] * BLOCK_S * 1000 - s1["audio_processed_ms"] <= 1000
    assert s1["updated_age_s"] < 1 and s1["poller_cpu_us"] > 0
    assert s1["poller_cpu_us"] / 1e6 < 0.05 * s1["uptime_s"], "the poller costs under 5% of a core"

    # The poller logs every field ten times a second.
    metrics = d.named("metrics")
    assert set(FIELDS) | {"drop_rate", "real_time_factor"} <= set(metrics[-1])
    span = metrics[-1]["updated_us"] / 1e6 - metrics[0]["updated_us"] / 1e6
    assert len(metrics) == pytest.approx(span / 0.1, rel=0.3)

    # A clean stop leaves no status behind.
    gone = d.status()
    assert gone.returncode == 3 and "not running" in gone.stderr


def test_resampled_stereo_input_is_transcribed(audiod: Any, vmic: VirtualMic, media: dict[str, Path]) -> None:
    d = audiod(capture="samplerate = 48000\nchannels = 2\n")
    started = d.named("started")[0]
    assert (started["samplerate"], started["channels"]) == (48000, 2)
    vmic.play(media["sentence"])
    d.wait_for("transcript", timeout=20)
    assert d.stop() == 0
    assert wer(SENTENCES[2], d.transcripts()[0]["text"]) <= 0.3


def test_sigterm_mid_utterance_transcribes_it_before_exit(
    audiod: Any, vmic: VirtualMic, media: dict[str, Path]
) -> None:
    d = audiod()
    player = vmic.play(media["long"], wait=False)
    time.sleep(4)  # mid-sentence
    t = time.monotonic()
    assert d.stop() == 0
    stop_s = time.monotonic() - t
    player.wait()
    lines = d.transcripts()
    assert len(lines) == 1
    assert "stella" in lines[0]["text"].lower()
    assert stop_s < 10
    print(f"\nstop took {stop_s:.2f}s; got: {lines[0]['text']}")


def test_noise_yields_no_transcripts(audiod: Any, vmic: VirtualMic, media: dict[str, Path]) -> None:
    # Two daemons on the same microphone: one as shipped, one whose VAD lets everything through, so that
    # Whisper's own no-speech check is what must reject the noise.
    default = audiod(name="default")
    permissive = audiod("[vad]\nthreshold = 0.01\n", name="permissive")
    vmic.play(media["noise"])
    time.sleep(1.5)
    s_default, s_permissive = default.status_json(), permissive.status_json()
    assert default.stop() == 0 and permissive.stop() == 0
    assert default.transcripts() == [] and permissive.transcripts() == []
    assert s_default["total_chunks"] * BLOCK_S > 30
    assert s_default["inference_runs"] == 0, "the VAD alone rejects faint noise"
    assert (
        s_permissive["inference_runs"] > 0
        # Every run is accounted for: a final judged empty, or a draft voided when the "speech" went on.
        and s_permissive["discarded_utterances"] + s_permissive["drafts_voided"]
        == s_permissive["inference_runs"]
    )


def test_stalled_worker_drops_chunks_and_recovers(
    audiod: Any, vmic: VirtualMic, media: dict[str, Path], tmp_path: Path
) -> None:
    hang = tmp_path / "hang"
    # 1.5 s of ring: longer than a model run (~0.7 s), shorter than the stall.
    d = audiod("[ring]\ncapacity_s = 1.5\n", AUDIOD_TEST_HANG_WORKER=str(hang))
    time.sleep(0.5)
    hang.touch()
    time.sleep(0.3)
    beat = d.status_json()["worker_heartbeat_us"]
    time.sleep(2.5)
    stalled = d.status_json()
    assert stalled["ring_capacity"] == 30
    assert stalled["worker_heartbeat_us"] == beat, "a hung worker stops its heartbeat"
    assert stalled["ring_fill"] == 30
    assert stalled["dropped_chunks"] > 15
    assert stalled["drop_rate"] == pytest.approx(stalled["dropped_chunks"] / stalled["total_chunks"])
    hang.unlink()
    deadline = time.monotonic() + 5
    while (resumed := d.status_json())["worker_heartbeat_us"] == beat or resumed["ring_fill"] > 2:
        assert time.monotonic() < deadline, "the worker did not resume"
    t0 = time.time()
    vmic.play(media["sentence"])
    t1 = time.time()
    d.wait_for("transcript", timeout=20)
    after = d.status_json()
    assert d.stop() == 0
    assert after["dropped_chunks"] == resumed["dropped_chunks"], "no more drops once the worker runs"
    # The lag grew while the worker was stuck and fell back once it ran again.
    assert stalled["audio_lag_ms"] > 2500 and after["audio_lag_ms"] < 1000
    assert stalled["audio_lag_ms"] == (stalled["updated_us"] - stalled["consumed_until_us"]) // 1000
    # The lost audio is a gap in the transcript, as long as the drops: the ring counted them, so exactly,
    # unless PortAudio also reported an overflow (lost audio nobody counted).
    (gap,) = [r for r in d.records() if r["type"] == "gap"]
    if after["xruns"] == 0:
        assert gap["seconds"] == pytest.approx(after["dropped_chunks"] * BLOCK_S, abs=0.002)
    else:
        assert gap["seconds"] > after["dropped_chunks"] * BLOCK_S
    assert gap["end"] - gap["start"] == pytest.approx(gap["seconds"], abs=0.002)
    # Capture times stayed exact through the drops: the words sit where they were played.
    (line,) = d.transcripts()
    assert wer(SENTENCES[2], line["text"]) <= 0.3
    assert t0 - 0.5 < line["start"] < line["end"] < t1 + 0.5


def test_unwritable_transcript_keeps_the_words_in_the_log(
    audiod: Any, vmic: VirtualMic, media: dict[str, Path]
) -> None:
    d = audiod('[transcript]\npath = "/dev/full"\n')
    d.transcript = Path("/dev/full")
    vmic.play(media["sentence"])
    (err,) = d.wait_for("transcript_not_written", timeout=20)
    s = d.status_json()
    assert d.stop() == 0
    assert "No space left on device" in err["error"] and wer(SENTENCES[2], err["text"]) <= 0.3
    assert s["sink_errors"] >= 1 and s["transcripts"] == 0 and s["sink_pending"] == 1
