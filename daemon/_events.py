"""The events people search the journal for, each with a fixed ``MESSAGE_ID`` (journald's catalog key), so
``journalctl MESSAGE_ID=...`` finds them whatever their text. The ids are random 128-bit values chosen once;
they never change.

Drops and xruns are counted where they happen, in the audio callback, which must not log; ``CounterEvents``
(a poller subscriber) turns a rise of their counters into a ``drop`` or ``xrun`` event, at most one per
counter per second, carrying ``count`` (new since the previous event) and the counter's total, so the
counts of the events add up to the counter. The other events are logged where they happen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import structlog

from ._status import FIELDS, STOPPING, Snapshot

# Event name -> MESSAGE_ID.
MESSAGE_IDS = {
    "transcript": "823cd2c3ebef4866a806883ea38dbe86",  # a transcript line was written
    "drop": "eddd6916e12546638d7dd8384196c3dc",  # audio blocks were dropped or skipped (REASON=)
    "xrun": "aa2f86c9cf8949b8b676ce44ac070796",  # PortAudio reported an input overflow
    "gap": "3d1e6e4975ec4283a84e8ad57120264f",  # the worker met missing audio (START=, END=, SECONDS=)
    "capture_restored": "ccc8e1e2e35f41b99c9d13a29464e0b2",  # the input stream was reopened: a restart
    "capture_lost": "445c853576dc438f917279759e76fa57",  # the input stream died
    "started": "6f78e46031cd4f6da20d203bc1fd3bc2",  # the daemon runs: audio flows
}

# Counter -> the event its rise is logged as, with fixed extra fields. A new drop reason is one line here.
_WATCHED: tuple[tuple[str, str, dict[str, str]], ...] = tuple(
    w
    for w in (
        ("dropped_chunks", "drop", {"reason": "ring_full"}),
        ("skipped_chunks", "drop", {"reason": "lag_skip"}),
        ("xruns", "xrun", {}),
    )
    if w[0] in FIELDS
)

EVENT_EVERY_S = 1.0  # a stalled worker drops 20 blocks a second: one line a second says enough


class CounterEvents:
    """A poller subscriber: logs ``drop`` and ``xrun`` when their counters rise."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, every_s: float = EVENT_EVERY_S) -> None:
        self._clock = clock
        self._every_s = every_s
        self._logged = dict.fromkeys((field for field, _, _ in _WATCHED), 0)  # a new block starts at 0
        self._at = dict.fromkeys(self._logged, -math.inf)
        self._log = structlog.get_logger("audiod.events")

    def __call__(self, snap: Snapshot) -> None:
        now = self._clock()
        for field, event, extra in _WATCHED:
            value: int = getattr(snap, field)
            if value <= self._logged[field]:
                continue
            # While stopping, the last counts go out at once: there may be no later tick.
            if now - self._at[field] >= self._every_s or snap.state == STOPPING:
                self._log.warning(event, count=value - self._logged[field], **{field: value}, **extra)
                self._logged[field] = value
                self._at[field] = now
