"""The segmenter's rules, driven by scripted speech probabilities (one per 512-sample window). The real Silero
model runs in test_inference and the end-to-end tests."""

from __future__ import annotations

import dataclasses

import numpy as np

from daemon._config import VadSettings
from daemon._vad import IDLE_BATCH, WINDOW, Audio, Segmenter, SileroStream, Utterance


class Script:
    """Speech probabilities by window index; records how many windows each call judged."""

    def __init__(self, speech: set[int]) -> None:
        self.speech = speech
        self.next = 0
        self.calls: list[int] = []

    def __call__(self, windows: Audio) -> np.ndarray:
        n = len(windows) // WINDOW
        self.calls.append(n)
        out = np.array([0.9 if i in self.speech else 0.05 for i in range(self.next, self.next + n)])
        self.next += n
        return out.astype(np.float32)


def windows(n: int, start: int = 0) -> Audio:
    """``n`` windows whose samples hold their window index, so cuts can be checked exactly."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32), WINDOW)


# 32 ms windows: 200 ms of silence ends an utterance after 7 silent windows, a draft comes after 3 (96 ms).
SETTINGS = VadSettings(min_silence_ms=200, early_decode_ms=96, speech_pad_ms=64, min_speech_ms=100)


def run(seg: Segmenter, script: Script, total: int, step: int = 1) -> list[tuple[int, Utterance | None]]:
    """Feed ``total`` windows ``step`` at a time; after each feed, note finished utterances and any draft."""
    events: list[tuple[int, Utterance | None]] = []
    for i in range(0, total, step):
        events += [(i, u) for u in seg.feed(windows(min(step, total - i), i))]
        if (d := seg.draft()) is not None:
            events.append((-i, d))
    return events


def test_an_utterance_ends_after_min_silence_with_its_pads() -> None:
    script = Script(speech=set(range(10, 30)))
    seg = Segmenter(SETTINGS, script)
    finals = [u for i, u in run(seg, script, 60) if i >= 0 and u is not None]
    assert len(finals) == 1
    # 64 ms of pad (2 windows) before the first speech window and after the last one.
    assert np.unique(finals[0].audio).astype(int).tolist() == list(range(8, 32))
    assert finals[0].start_sample == 8 * WINDOW


def test_a_draft_comes_early_in_a_pause_and_the_end_confirms_it() -> None:
    script = Script(speech=set(range(10, 30)))
    seg = Segmenter(SETTINGS, script)
    events = run(seg, script, 60)
    drafts = [(i, u) for i, u in events if i < 0 and u is not None]
    finals = [(i, u) for i, u in events if i >= 0 and u is not None]
    assert len(drafts) == 1 and len(finals) == 1
    (di, draft), (fi, final) = drafts[0], finals[0]
    assert -di == 32, "three silent windows (96 ms) after the last speech window at 29"
    assert fi == 36, "seven silent windows (200 ms): the end"
    assert final.draft == draft.draft > 0, "the end confirms the draft"
    assert final.start_sample == draft.start_sample
    # Same speech, same pad: the draft already held everything the final keeps.
    assert np.array_equal(final.audio, draft.audio[: len(final.audio)])


def test_speech_that_resumes_voids_the_draft() -> None:
    # A 128 ms pause (windows 30-33) inside speech: long enough for a draft, too short to end the utterance.
    script = Script(speech=set(range(10, 30)) | set(range(34, 50)))
    seg = Segmenter(SETTINGS, script)
    events = run(seg, script, 80)
    drafts = [u for i, u in events if i < 0 and u is not None]
    finals = [u for i, u in events if i >= 0 and u is not None]
    assert len(drafts) == 2, "one in the pause, one after the end"
    assert len(finals) == 1 and finals[0].draft == drafts[1].draft != drafts[0].draft
    assert np.unique(finals[0].audio).astype(int).tolist() == list(range(8, 52))


def test_no_draft_when_off_or_for_too_little_speech() -> None:
    script = Script(speech=set(range(10, 30)))
    seg = Segmenter(dataclasses.replace(SETTINGS, early_decode_ms=0), script)
    events = run(seg, script, 60)
    assert [i for i, _ in events if i < 0] == [] and len(events) == 1 and events[0][1] is not None
    assert events[0][1].draft == 0
    script = Script(speech={10})  # 32 ms: below min_speech_ms
    seg = Segmenter(SETTINGS, script)
    assert run(seg, script, 60) == []


def test_silero_runs_on_batches_while_idle_and_per_window_in_speech() -> None:
    script = Script(speech=set(range(10, 30)))
    seg = Segmenter(SETTINGS, script)
    run(seg, script, 60, step=1)
    # Idle: calls wait for IDLE_BATCH windows. Speaking (from window 10 on): every window at once.
    assert IDLE_BATCH == 6 and script.calls[:2] == [6, 6], "windows 0-11: idle until 10 is judged"
    assert script.calls.count(1) >= 20
    assert sum(script.calls) + len(seg._pending) // WINDOW == 60


def test_flush_ends_the_utterance_in_progress_and_judges_held_windows() -> None:
    script = Script(speech=set(range(3, 40)))
    seg = Segmenter(SETTINGS, script)
    events = run(seg, script, 20)
    assert events == []
    tail = np.full(100, 20.0, dtype=np.float32)  # part of a window: zero-padded, not lost
    seg.feed(tail)
    out = seg.flush()
    assert len(out) == 1
    assert np.unique(out[0].audio).astype(int).tolist() == [0, 1, *range(2, 21)]
    assert seg.flush() == []
    idle = Segmenter(SETTINGS, Script(speech=set()))
    idle.feed(windows(2))
    assert idle.flush() == [] and sum(idle._probs.calls) == 2  # type: ignore[attr-defined]


def test_the_real_model_hears_speech_in_the_batched_stream() -> None:
    """Silero with its state carried across calls gives the same probabilities batched or not."""
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(WINDOW * 12) * 0.1).astype(np.float32)
    one, batched = SileroStream(), SileroStream()
    a = np.concatenate([one(audio[i * WINDOW : (i + 1) * WINDOW]) for i in range(12)])
    b = np.concatenate([batched(audio[i * WINDOW * 3 : (i + 1) * WINDOW * 3]) for i in range(4)])
    assert np.allclose(a, b, atol=1e-4)
