"""Benchmark-only timing of the audio callback body (``bench/`` sets ``AUDIOD_BENCH_CALLBACK_NS=PATH``).

When the variable is unset ``Capture`` hands PortAudio its plain callback, so production pays nothing. When
set, this wrapper stores each call's start and duration (``perf_counter_ns``) in an array allocated and
touched up front, so the timed path itself allocates nothing and takes no page faults; ``save`` writes the
rows used, shape (calls, 2), with ``numpy.save`` once the stream is closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

ENV = "AUDIOD_BENCH_CALLBACK_NS"
CAPACITY = 1 << 16  # calls: 55 minutes at 50 ms blocks; later calls run untimed


class CallbackTimer:
    def __init__(self, body: Callable[[Any, int, Any, Any], None], path: str) -> None:
        self._body = body
        self._path = path
        self._clock = time.perf_counter_ns
        self._rows = np.full((CAPACITY, 2), -1, dtype=np.int64)  # full(), not zeros(): pages touched now
        self._n = 0

    def __call__(self, indata: Any, frames: int, time_info: Any, flags: Any) -> None:
        t0 = self._clock()
        self._body(indata, frames, time_info, flags)
        t1 = self._clock()
        n = self._n
        if n < CAPACITY:
            self._rows[n, 0] = t0
            self._rows[n, 1] = t1 - t0
            self._n = n + 1

    def save(self) -> None:
        np.save(self._path, self._rows[: self._n])
