"""Latency histograms kept as atomic counters in the status block, so other processes see distributions.

Buckets are fixed and log-spaced: upper bounds ``2**(k/4)`` seconds for k = -40..24, i.e. 0.977 ms to 64 s,
four per octave (each bound 19% above the one before), plus an overflow bucket. These are the boundaries of
a Prometheus native histogram with schema 2, so a later switch to native histograms loses nothing. Four per
octave keeps a percentile within the width of one bucket (<= 19%) over five decades in 66 counters.

Bucket ``i`` counts observations ``v <= BOUNDS_US[i]`` above the previous bound (Prometheus's ``le``).
Values are whole microseconds; a negative one (a capture clock a little ahead of the wall clock) counts as 0.

Writing an observation is one ``inc()`` on its bucket and one ``add()`` to the sum: no lock, and no counter
that has to agree with another, since readers derive the count as the sum of the buckets. Readers load each
bucket once (a concurrent observation may be half-seen: in the buckets but not yet in the sum).

Percentiles use the algorithm of PromQL's ``histogram_quantile()`` (linear interpolation inside the bucket),
so ``audiod status``, ``audiod top`` and a query over the scraped buckets give the same number.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

BOUNDS_US: tuple[int, ...] = tuple(round(1e6 * 2 ** (k / 4)) for k in range(-40, 25))
BOUNDS_S: tuple[float, ...] = tuple(b / 1e6 for b in BOUNDS_US)
BUCKETS = len(BOUNDS_US) + 1  # the last one is the overflow bucket, le="+Inf"
SLOTS = BUCKETS + 1  # per histogram in the status block: the buckets, then the sum in microseconds
QUANTILES = (0.5, 0.95, 0.99)

# Status block order. Name -> what one observation is.
HISTOGRAMS = {
    "capture": "capture to consumed: age of each audio block when the worker takes it from the ring",
    "transcript": "utterance end to emitted: end of an utterance's audio to its transcript line written",
    "inference": "inference duration: compute time of each model run",
}

_BOUNDS_ARRAY = np.array(BOUNDS_US, dtype=np.int64)


class Counter(Protocol):
    """What a histogram needs of a 64-bit atomic (an ``atomics`` view satisfies it)."""

    def load(self) -> int: ...
    def inc(self) -> None: ...
    def add(self, delta: int) -> None: ...


def quantile(q: float, cumulative: Sequence[float], bounds: Sequence[float]) -> float | None:
    """PromQL's ``histogram_quantile(q, ...)`` over cumulative bucket counts (the last one is +Inf) with
    finite upper ``bounds``; None when there are no observations (PromQL says NaN)."""
    total = cumulative[-1]
    if total <= 0:
        return None
    rank = q * total
    # The first finite bucket whose cumulative count reaches the rank; none: the rank is in +Inf.
    b = next((i for i in range(len(bounds)) if cumulative[i] >= rank), len(bounds))
    if b == len(bounds):
        return bounds[-1]  # PromQL's answer for the overflow bucket: the highest finite bound
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, count = 0.0, cumulative[b]
    if b > 0:
        start = bounds[b - 1]
        count -= cumulative[b - 1]
        rank -= cumulative[b - 1]
    return start + (bounds[b] - start) * (rank / count)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """One histogram as read: per-bucket counts (not cumulative) and the sum of observations, us."""

    buckets: tuple[int, ...]
    sum_us: int

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def cumulative(self) -> list[int]:
        out, total = [], 0
        for n in self.buckets:
            total += n
            out.append(total)
        return out

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in seconds, or None before the first observation."""
        return quantile(q, self.cumulative(), BOUNDS_S)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"count": self.count, "sum_ms": round(self.sum_us / 1000, 3)}
        cumulative = self.cumulative()
        for q in QUANTILES:
            v = quantile(q, cumulative, BOUNDS_S)
            d[f"p{round(q * 100)}_ms"] = None if v is None else round(v * 1000, 3)
        d["buckets"] = list(self.buckets)
        return d


@dataclass(frozen=True, slots=True)
class Latencies:
    """Every histogram of the status block, read once."""

    capture: HistogramSnapshot
    transcript: HistogramSnapshot
    inference: HistogramSnapshot

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_dict() for name in HISTOGRAMS}


EMPTY = HistogramSnapshot((0,) * BUCKETS, 0)


class Histogram:
    """The writer side of one histogram."""

    def __init__(self, buckets: Sequence[Counter], sum_us: Counter) -> None:
        if len(buckets) != BUCKETS:
            raise ValueError(f"a histogram has {BUCKETS} buckets, got {len(buckets)}")
        self._buckets = tuple(buckets)
        self._sum = sum_us

    def observe_us(self, value: int) -> None:
        value = max(0, value)
        self._buckets[bisect.bisect_left(BOUNDS_US, value)].inc()
        self._sum.add(value)

    def observe_ms(self, value: int) -> None:
        self.observe_us(value * 1000)

    def observe_ages(self, ends_s: npt.NDArray[np.float64], now_s: float) -> None:
        """One observation per element: ``now_s`` minus each time (epoch seconds). Observations that fall
        into the same bucket cost one ``add()`` together."""
        ages = np.rint((now_s - ends_s) * 1e6).astype(np.int64)
        if len(ages) == 1:
            self.observe_us(int(ages[0]))
            return
        np.maximum(ages, 0, out=ages)
        counts = np.bincount(np.searchsorted(_BOUNDS_ARRAY, ages, side="left"), minlength=BUCKETS)
        for i in np.flatnonzero(counts).tolist():
            self._buckets[i].add(int(counts[i]))
        self._sum.add(int(ages.sum()))

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(tuple(b.load() for b in self._buckets), self._sum.load())


class HistogramSet:
    """The writer side of all histograms: ``status.latency.inference.observe_ms(...)``."""

    capture: Histogram
    transcript: Histogram
    inference: Histogram

    def __init__(self, slots: Sequence[Counter]) -> None:
        if len(slots) != SLOTS * len(HISTOGRAMS):
            raise ValueError(f"the histogram region has {SLOTS * len(HISTOGRAMS)} slots, got {len(slots)}")
        for i, name in enumerate(HISTOGRAMS):
            region = slots[i * SLOTS : (i + 1) * SLOTS]
            setattr(self, name, Histogram(region[:BUCKETS], region[BUCKETS]))

    def snapshot(self) -> Latencies:
        return Latencies(**{name: getattr(self, name).snapshot() for name in HISTOGRAMS})
