"""Streaming speech segmentation with the Silero VAD that faster-whisper ships (an ONNX file, offline).

faster-whisper only offers the VAD over a whole recording. Its Silero v6 model is recurrent, though: feed it
512-sample windows (each with the 64 samples before it as context) and carry its ``h``/``c`` state, and it
runs on a live stream. ``Segmenter`` turns the per-window probabilities into utterances: speech starts when
a window crosses ``threshold``, and ends after ``min_silence_ms`` below ``threshold - 0.15`` (the same
hysteresis faster-whisper uses) or at ``max_utterance_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._config import VadSettings

RATE = 16000
WINDOW = 512
CONTEXT = 64
# While nobody speaks, Silero runs on this many windows (192 ms) at once: its per-call overhead dominates a
# single window, and a late start of speech costs nothing (the pre-roll keeps the audio before it). Once
# speech starts, every window is judged as soon as it is complete, since the end of speech is time-critical.
# The idle worker wakes at this period too: 6 windows cost it 0.9 % of a core, 3 windows 1.45 %.
IDLE_BATCH = 6

Audio = npt.NDArray[np.float32]
ProbFn = Callable[[Audio], npt.NDArray[np.float32]]


class SileroStream:
    """Speech probability per 512-sample window, state carried across calls."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self._session: Any = get_vad_model().session
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, windows: Audio) -> npt.NDArray[np.float32]:
        """``windows``: a multiple of 512 samples. Returns one probability per window."""
        frames = windows.reshape(-1, WINDOW)
        ctx = np.concatenate([self._context[None, :], frames[:-1, -CONTEXT:]])
        batch = np.concatenate([ctx, frames], axis=1)
        probs, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = frames[-1, -CONTEXT:].copy()
        return np.asarray(probs, dtype=np.float32).reshape(-1)


@dataclass(frozen=True, slots=True)
class Utterance:
    audio: Audio
    start_sample: int  # index in the 16 kHz stream since the segmenter was made or reset
    # A draft (from ``Segmenter.draft``): its serial number. A finished utterance: the serial of the draft it
    # confirms (the speech is the same, only trailing silence was added), or 0 when there was none.
    draft: int = 0

    @property
    def end_sample(self) -> int:
        return self.start_sample + len(self.audio)


class Segmenter:
    """Feed 16 kHz audio in any block size; get finished utterances back."""

    def __init__(self, settings: VadSettings, probs: ProbFn) -> None:
        self._probs = probs
        self._threshold = settings.threshold
        self._neg_threshold = max(settings.threshold - 0.15, 0.01)
        self._min_silence = settings.min_silence_ms * RATE // 1000
        self._pad = settings.speech_pad_ms * RATE // 1000
        self._min_speech = settings.min_speech_ms * RATE // 1000
        self._max_len = int(settings.max_utterance_s * RATE)
        self._early = settings.early_decode_ms * RATE // 1000 if settings.early_decode_ms else 0
        self._drafts = 0  # serial of the last draft made
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet a whole window
        self._pos = 0  # stream index of the first pending sample
        self._reset_state()

    def _reset_state(self) -> None:
        self._chunks: list[Audio] = []  # current utterance, or the pre-roll while idle
        self._length = 0
        self._start = self._pos
        self._speaking = False
        self._speech = 0  # samples judged speech in the current utterance
        self._silence = 0  # trailing samples below the negative threshold
        self._draft: Utterance | None = None  # the utterance as it stands, if silence since made it a draft
        self._draft_taken = False

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def position(self) -> int:
        """Samples consumed since the start (the stream index of the next sample)."""
        return self._pos + len(self._pending)

    def feed(self, audio: Audio) -> list[Utterance]:
        pending = np.concatenate([self._pending, audio]) if len(self._pending) else audio
        whole = len(pending) // WINDOW * WINDOW
        if whole == 0 or (not self._speaking and whole < IDLE_BATCH * WINDOW):
            self._pending = pending.copy() if pending is audio else pending
            return []
        self._pending = pending[whole:].copy()
        return self._run(pending[:whole])

    def _run(self, windows: Audio) -> list[Utterance]:
        if not len(windows):
            return []
        windows = windows.astype(np.float32, copy=False)
        out: list[Utterance] = []
        for i, p in enumerate(self._probs(windows)):
            u = self._step(windows[i * WINDOW : (i + 1) * WINDOW], float(p))
            if u is not None:
                out.append(u)
        return out

    def _append(self, window: Audio) -> None:
        self._chunks.append(window)
        self._length += len(window)
        self._pos += len(window)

    def _step(self, window: Audio, p: float) -> Utterance | None:
        if not self._speaking:
            self._append(window)
            # Keep only the pre-roll while idle, so the utterance starts a little before the first word.
            while self._chunks and self._length - len(self._chunks[0]) >= self._pad + len(window):
                self._length -= len(self._chunks.pop(0))
            self._start = self._pos - self._length
            if p >= self._threshold:
                self._speaking, self._speech, self._silence = True, WINDOW, 0
            return None
        self._append(window)
        if p >= self._threshold:
            self._speech += WINDOW
            self._silence = 0
        elif p < self._neg_threshold:
            self._silence += WINDOW
        else:
            self._silence = 0
        if not self._silence:
            self._draft = None  # speech goes on: a draft made in the pause no longer covers it
        elif self._draft is None and self._draft_due():
            self._drafts += 1
            self._draft = self._cut(trim=max(0, self._silence - self._pad), draft=self._drafts)
            self._draft_taken = False
        if self._silence >= self._min_silence:
            return self._finish(trim=max(0, self._silence - self._pad))
        if self._length >= self._max_len:
            return self._finish(trim=0, forced=True)
        return None

    def _draft_due(self) -> bool:
        early = self._early
        return bool(early) and early <= self._silence < self._min_silence and self._speech >= self._min_speech

    def draft(self) -> Utterance | None:
        """The utterance in progress as it would end if the current silence lasts to ``min_silence_ms``, once
        per pause of ``early_decode_ms``: transcribing it now, while the segmenter waits to be sure, takes
        the model's time out of the latency. The finished utterance names the draft it confirms."""
        if self._draft is None or self._draft_taken:
            return None
        self._draft_taken = True
        return self._draft

    def _cut(self, trim: int, draft: int) -> Utterance:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        if trim:
            audio = audio[: len(audio) - trim]
        return Utterance(audio=audio, start_sample=self._start, draft=draft)

    def _finish(self, trim: int, forced: bool = False) -> Utterance | None:
        confirms = self._draft.draft if self._draft is not None and not forced else 0
        u = self._cut(trim, confirms)
        speech = self._speech
        tail = self._chunks[-1:] if not forced else []
        self._reset_state()
        if forced:
            # Speech goes on past the cut: the next utterance starts right here, already speaking.
            self._speaking, self._speech, self._start = True, 0, self._pos
        else:
            for w in tail:  # the last silent window seeds the next pre-roll
                self._chunks.append(w)
                self._length += len(w)
            self._start = self._pos - self._length
        if speech < self._min_speech:
            return None
        return u

    def flush(self) -> list[Utterance]:
        """End the stream (shutdown, or a gap in the audio): the utterance in progress, if any.

        Samples short of a whole window are zero-padded so the last word is not lost."""
        whole = len(self._pending) // WINDOW * WINDOW
        out = self._run(self._pending[:whole])
        tail = self._pending[whole:]
        self._pending = np.zeros(0, dtype=np.float32)
        if len(tail):
            tail = np.concatenate([tail, np.zeros(WINDOW - len(tail), dtype=np.float32)])
            out += self._run(tail)
        if self._speaking:
            u = self._finish(trim=max(0, self._silence - self._pad))
            if u is not None:
                out.append(u)
        self._reset_state()
        return out
