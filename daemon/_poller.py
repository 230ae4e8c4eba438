"""The poller: every ``interval`` it takes one snapshot of the status block and logs it as ``metrics``.

Subscribers (``on_snapshot``) get the same snapshot, so systemd's STATUS= line and the watchdog see exactly
what was logged. The poller also measures its own CPU time (``poller_cpu_us``), because a 10 Hz loop on a
Raspberry Pi must prove it is cheap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from ._atomic import fast_add, fast_load, fast_store
from ._status import Snapshot, Status

Subscriber = Callable[[Snapshot], None]


class Poller(threading.Thread):
    def __init__(self, status: Status, interval_s: float, subscribers: tuple[Subscriber, ...] = ()) -> None:
        super().__init__(name="audiod-poller", daemon=True)
        self._status = status
        self._interval = interval_s
        self._subscribers = subscribers
        self._done = threading.Event()
        self._log = structlog.get_logger("audiod.poller")
        self.ticks = 0
        # Bound once (see _atomic): this thread wakes ten times a second with cold caches, where each call
        # through the ``atomics`` wrappers costs 30-160 us. stop() joins the thread before the block closes.
        self._store_updated = fast_store(status.updated_us)
        self._store_lag = fast_store(status.audio_lag_ms)
        self._load_until = fast_load(status.consumed_until_us)
        self._load_written = fast_load(status.ring_written)
        self._load_read = fast_load(status.ring_read)
        self._add_cpu = fast_add(status.poller_cpu_us)

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join()

    def tick(self) -> Snapshot:
        cpu0 = time.thread_time_ns()
        now_us = time.time_ns() // 1000
        self._store_updated(now_us)
        # The worker sets the lag when it consumes audio. While audio waits in the ring, refreshing it here
        # makes a stalled worker show as a growing lag instead of a frozen one; with the ring empty the
        # worker is caught up (or the device is gone, which is not lag) and its value stands.
        if (until := self._load_until()) and self._load_written() > self._load_read():
            self._store_lag((now_us - until) // 1000)
        snap = self._status.snapshot()
        self._log.info("metrics", **snap.to_dict())
        for sub in self._subscribers:
            sub(snap)
        self.ticks += 1
        self._add_cpu((time.thread_time_ns() - cpu0) // 1000)
        return snap

    def run(self) -> None:
        # Sleep to absolute deadlines so the period does not stretch by the tick's own cost.
        deadline = time.monotonic()
        while not self._done.is_set():
            self.tick()
            deadline += self._interval
            delay = deadline - time.monotonic()
            if delay < 0:  # we fell behind (suspend, overload): skip missed ticks rather than burst
                deadline = time.monotonic()
                delay = 0
            self._done.wait(delay)
