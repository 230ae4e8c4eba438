"""Journal events: MESSAGE_IDs on the events people search for, and drop/xrun events made from counters."""

from __future__ import annotations

import dataclasses
import re

import structlog

from daemon._events import MESSAGE_IDS, CounterEvents
from daemon._journal import JournalRenderer, parse_payload
from daemon._status import FIELDS, RUNNING, STOPPING, Snapshot


def test_message_ids_are_distinct_128_bit_ids() -> None:
    assert {"transcript", "drop", "xrun", "gap", "capture_restored"} <= set(MESSAGE_IDS)
    assert all(re.fullmatch(r"[0-9a-f]{32}", m) for m in MESSAGE_IDS.values())
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)


def test_the_renderer_sets_message_id_for_listed_events_only() -> None:
    render = JournalRenderer(message_ids=MESSAGE_IDS)
    entry = dict(parse_payload(render(None, "info", {"event": "transcript", "text": "hello", "seq": 3})))
    assert entry["MESSAGE_ID"] == MESSAGE_IDS["transcript"].encode()
    assert entry["EVENT"] == b"transcript" and entry["TEXT"] == b"hello"
    other = dict(parse_payload(render(None, "info", {"event": "metrics", "total_chunks": 5})))
    assert "MESSAGE_ID" not in other
    plain = dict(parse_payload(JournalRenderer()(None, "info", {"event": "transcript", "text": "x"})))
    assert "MESSAGE_ID" not in plain


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def snap(**values: int) -> Snapshot:
    return dataclasses.replace(Snapshot(*[0] * len(FIELDS)), **{"state": RUNNING, **values})


def test_counter_rises_become_events_at_most_once_a_second_and_add_up() -> None:
    clock = Clock()
    events = CounterEvents(clock)
    with structlog.testing.capture_logs() as logs:
        events(snap())  # nothing rose: nothing logged
        events(snap(dropped_chunks=3))  # first rise: at once
        clock.now += 0.1
        events(snap(dropped_chunks=5, xruns=1))  # drop is held back a second; the first xrun goes out
        clock.now += 0.5
        events(snap(dropped_chunks=9, xruns=1, skipped_chunks=4))
        clock.now += 0.5
        events(snap(dropped_chunks=9, xruns=1, skipped_chunks=4))  # a second after the first drop event
        clock.now += 0.1
        events(snap(dropped_chunks=10, xruns=2, skipped_chunks=4, state=STOPPING))  # stopping: no waiting
    drops = [e for e in logs if e["event"] == "drop"]
    assert [(e["reason"], e["count"]) for e in drops] == [
        ("ring_full", 3),
        ("lag_skip", 4),
        ("ring_full", 6),
        ("ring_full", 1),
    ]
    assert sum(e["count"] for e in drops if e["reason"] == "ring_full") == 10
    assert drops[-1]["dropped_chunks"] == 10 and drops[1]["skipped_chunks"] == 4
    xruns = [e for e in logs if e["event"] == "xrun"]
    assert [(e["count"], e["xruns"]) for e in xruns] == [(1, 1), (1, 2)]
    assert all(e["log_level"] == "warning" for e in logs)
