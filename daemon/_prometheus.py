"""Prometheus exposition: an optional HTTP listener (``[metrics.prometheus]``, off by default, 127.0.0.1).

Nothing is counted twice: the collector reads the status file at scrape time, through the same
``_status.read`` that ``audiod status`` uses, and turns it into metrics named by Prometheus's conventions
(base units, ``_total`` for counters). A scrape costs the daemon one mapping of the file in the listener's
own thread; the pipeline never notices it. While the status file is absent (being replaced at start, or
removed at exit) a scrape answers with ``audiod_build_info`` alone.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from . import __version__, _status
from ._config import PrometheusSettings
from ._histogram import BOUNDS_S, HISTOGRAMS, HistogramSnapshot
from ._status import STATE_NAMES, LiveStatus

# (metric name without _total, help, status field, divisor to base units)
COUNTERS = (
    ("audiod_audio_chunks", "Audio blocks the capture callback received.", "total_chunks", 1),
    ("audiod_xruns", "Input overflows PortAudio reported (audio lost before the callback).", "xruns", 1),
    ("audiod_callback_errors", "Exceptions caught in the audio callback.", "callback_errors", 1),
    ("audiod_stream_restarts", "Times the input stream was lost and reopened.", "stream_restarts", 1),
    ("audiod_nonfinite_blocks", "Blocks with NaN or infinite samples (zeroed).", "nonfinite_blocks", 1),
    ("audiod_transcripts", "Transcript lines written.", "transcripts", 1),
    ("audiod_transcript_write_errors", "Failed attempts to write the transcript file.", "sink_errors", 1),
    (
        "audiod_discarded_utterances",
        "Speech segments the model judged to hold no speech.",
        "discarded_utterances",
        1,
    ),
    (
        "audiod_drafts_voided",
        "Early decodes wasted because speech resumed in the pause that started them.",
        "drafts_voided",
        1,
    ),
    ("audiod_audio_processed_seconds", "Audio the worker has consumed.", "audio_processed_ms", 1000),
    ("audiod_poller_cpu_seconds", "CPU time of the metrics poller thread.", "poller_cpu_us", 1_000_000),
)
# reason label -> status field, for audiod_audio_chunks_dropped_total.
DROP_REASONS = (("ring_full", "dropped_chunks"), ("lag_skip", "skipped_chunks"))
GAUGES = (
    (
        "audiod_audio_lag_seconds",
        "Now minus the capture time of the newest audio consumed.",
        "audio_lag_ms",
        1000,
    ),
    ("audiod_ring_capacity_blocks", "Ring buffer size in audio blocks.", "ring_capacity", 1),
    (
        "audiod_transcripts_pending",
        "Transcripts held in memory until the file can be written.",
        "sink_pending",
        1,
    ),
    (
        "audiod_worker_heartbeat_timestamp_seconds",
        "When the inference worker last went round its loop (stops moving if it hangs).",
        "worker_heartbeat_us",
        1_000_000,
    ),
)
HISTOGRAM_METRICS = {
    "capture": ("audiod_capture_latency_seconds", "Age of each audio block when the worker consumes it."),
    "transcript": (
        "audiod_transcript_latency_seconds",
        "End of an utterance's audio to its transcript written.",
    ),
    "inference": ("audiod_inference_duration_seconds", "Compute time of each model run."),
}
# Status fields with no metric of their own, and where their information goes instead.
NOT_EXPORTED = {
    "consumed_until_us": "audiod_audio_lag_seconds",
    "inference_time_ms": "audiod_real_time_factor, audiod_inference_duration_seconds",
    "inference_audio_ms": "audiod_real_time_factor",
    "inference_runs": "audiod_inference_duration_seconds_count",
    "ring_written": "audiod_ring_fill_blocks",
    "ring_read": "audiod_ring_fill_blocks",
    "last_latency_ms": "audiod_transcript_latency_seconds",
    "updated_us": "every scrape reads live values",
    "state": "audiod_state",
}
# Derived from fields: audiod_real_time_factor, audiod_ring_fill_blocks, audiod_state.
# repr() is what prometheus_client itself prints for bounds in this range (0.000977 to 64.0).
BUCKET_LABELS = (*(repr(b) for b in BOUNDS_S), "+Inf")


def exported_fields() -> set[str]:
    return {f for _, _, f, _ in COUNTERS} | {f for _, f in DROP_REASONS} | {f for _, _, f, _ in GAUGES}


def build_info() -> GaugeMetricFamily:
    g = GaugeMetricFamily("audiod_build_info", "audiod version; always 1.", labels=["version", "python"])
    g.add_metric([__version__, platform.python_version()], 1)
    return g


def _histogram(name: str, doc: str, h: HistogramSnapshot) -> HistogramMetricFamily:
    cumulative = h.cumulative()
    return HistogramMetricFamily(
        name, doc, buckets=list(zip(BUCKET_LABELS, cumulative, strict=True)), sum_value=h.sum_us / 1e6
    )


def families(live: LiveStatus) -> Iterator[Metric]:
    """Every metric of one status reading."""
    snap = live.snapshot
    for name, doc, field, divisor in COUNTERS:
        yield CounterMetricFamily(name, doc, value=getattr(snap, field) / divisor)
    dropped = CounterMetricFamily(
        "audiod_audio_chunks_dropped", "Audio blocks lost before transcription, by reason.", labels=["reason"]
    )
    for reason, field in DROP_REASONS:
        dropped.add_metric([reason], getattr(snap, field))
    yield dropped
    for name, doc, field, divisor in GAUGES:
        yield GaugeMetricFamily(name, doc, value=getattr(snap, field) / divisor)
    yield GaugeMetricFamily(
        "audiod_real_time_factor",
        "Last model run's compute time over the duration of its audio; below 1 is faster than real time.",
        value=snap.real_time_factor(),
    )
    yield GaugeMetricFamily(
        "audiod_ring_fill_blocks", "Audio blocks waiting in the ring.", value=snap.ring_fill()
    )
    yield GaugeMetricFamily(
        "audiod_start_time_seconds", "When the daemon started, epoch s.", value=live.started_us / 1e6
    )
    state = GaugeMetricFamily("audiod_state", "1 for the daemon's current state.", labels=["state"])
    for name in STATE_NAMES:
        state.add_metric([name], float(snap.state_name() == name))
    yield state
    for key in HISTOGRAMS:
        name, doc = HISTOGRAM_METRICS[key]
        yield _histogram(name, doc, getattr(live.latency, key))


class StatusCollector:
    """Reads the status file at every scrape."""

    def __init__(self, status_path: Path) -> None:
        self._path = status_path

    def collect(self) -> Iterator[Metric]:
        yield build_info()
        try:
            live = _status.read(self._path)
        except _status.StatusFileError:
            return
        yield from families(live)


class ExporterError(Exception):
    """The listener cannot be opened; the message names the setting."""


class Exporter:
    """``with Exporter(settings, status_path):`` serves /metrics while the daemon runs, if enabled."""

    def __init__(self, settings: PrometheusSettings, status_path: Path) -> None:
        self._settings = settings
        self._path = status_path
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (differs from the setting's only for port 0, in tests)."""
        return int(self._server.server_port) if self._server is not None else 0

    def __enter__(self) -> Exporter:
        s = self._settings
        if not s.enabled:
            return self
        registry = CollectorRegistry()
        registry.register(StatusCollector(self._path))
        try:
            self._server, self._thread = start_http_server(s.port, addr=s.address, registry=registry)
        except OSError as e:
            raise ExporterError(
                f"metrics.prometheus: cannot listen on {s.address}:{s.port}: {e.strerror or e}"
            ) from None
        structlog.get_logger("audiod.prometheus").info(
            "prometheus_listening", url=f"http://{s.address}:{self.port}/metrics"
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
