"""Durable transcript output: a JSONL file, one whole object per line, fsync'ed per line."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from ._status import Status

_TAIL = 65536  # enough to find the last complete line of any transcript


class SinkError(Exception):
    pass


class JsonlSink:
    """Appends one JSON object per line. ``seq`` continues from the last line already in the file.

    Each line goes out in a single ``write`` on an ``O_APPEND`` descriptor and is fsync'ed before
    ``write`` returns, so a reader never sees half a line from a running daemon, and a line reported
    written survives a power cut. A partial last line left by a crash is cut off on open (``repaired``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # reopen() comes from the signal handler's thread
        self.repaired = 0
        self._fd = self._open()
        self.next_seq = self._last_seq() + 1

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise SinkError(f"{self.path}: cannot open transcript file: {e.strerror}") from None

    def _last_seq(self) -> int:
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            return 0  # a FIFO, a device, /dev/stdout: nothing to read back, numbering starts at 1
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - _TAIL))
                tail = f.read(_TAIL)
        except OSError:
            return 0  # write-only file
        if tail and not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n") + 1
            self.repaired = len(tail) - cut
            os.truncate(self.path, size - self.repaired)
            tail = tail[:cut]
        for line in reversed(tail.splitlines()):
            try:
                return int(json.loads(line)["seq"])
            except (ValueError, KeyError, TypeError):
                continue
        return 0

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record`` with the next ``seq``; returns the record as written. Raises ``SinkError``."""
        with self._lock:
            record = {"seq": self.next_seq, **record}
            data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
            self._follow_path()
            start = -1
            try:
                start = os.fstat(self._fd).st_size
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
                os.fsync(self._fd)
            except OSError as e:
                if start >= 0:  # take back a partial line (disk full midway), so the next one starts clean
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, start)
                raise SinkError(f"{self.path}: cannot write transcript: {e.strerror}") from None
            self.next_seq += 1
            return record

    def _follow_path(self) -> None:
        """If the file was removed or replaced under us, write to a new one at the path: lines written to
        an unlinked inode would be lost."""
        try:
            same = os.path.samestat(os.stat(self.path), os.fstat(self._fd))
        except OSError:
            same = False
        if not same:
            with contextlib.suppress(SinkError):  # if it cannot be reopened yet, the write below fails
                fd = self._open()
                os.close(self._fd)
                self._fd = fd

    def reopen(self) -> None:
        """For log rotation (SIGHUP): later lines go to a fresh file at the same path."""
        with self._lock:
            fd = self._open()
            os.close(self._fd)
            self._fd = fd

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


PENDING_LIMIT = 1000  # transcripts held while the disk is full: hours of speech, a few hundred KB
RETRY_S = 1.0


class Outbox:
    """Records on their way to the sink, written in order. While the sink fails (disk full, permissions,
    a missing directory) they wait in memory, bounded, and are retried every ``RETRY_S``; the words are in
    the log from the first failure, so even an overflow of the queue loses no text outright."""

    def __init__(self, sink: JsonlSink, status: Status, clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self._status = status
        self._clock = clock
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._retry_at = 0.0
        self._failing = False
        self._log = structlog.get_logger("audiod.sinks")

    def put(self, record: dict[str, Any]) -> None:
        if len(self._pending) >= PENDING_LIMIT:
            lost = self._pending.popleft()
            self._log.error("transcript_lost", reason="too many transcripts waiting for the disk", **lost)
        self._pending.append(record)
        self._flush(first_try=record)

    def retry(self, now: bool = False) -> None:
        """Called from the worker's loop: write what waits, at most every ``RETRY_S`` unless ``now``."""
        if self._pending and (now or self._clock() >= self._retry_at):
            self._flush()

    def _flush(self, first_try: dict[str, Any] | None = None) -> None:
        st = self._status
        while self._pending:
            try:
                written = self.sink.write(self._pending[0])
            except SinkError as e:
                st.sink_errors.inc()
                self._retry_at = self._clock() + RETRY_S
                if first_try is not None:  # each record's words reach the log once, not every retry
                    self._log.error(
                        "transcript_not_written", error=str(e), pending=len(self._pending), **first_try
                    )
                self._failing = True
                break
            self._pending.popleft()
            if self._failing:
                self._failing = False
                self._log.warning(
                    "transcript_file_recovered", path=str(self.sink.path), waiting=len(self._pending)
                )
            if written.get("type") == "transcript":
                st.transcripts.inc()
                st.last_latency_ms.store(written["latency_ms"])
                st.latency.transcript.observe_ms(written["latency_ms"])
                self._log.info("transcript", **written)
        st.sink_pending.store(len(self._pending))

    @property
    def pending(self) -> int:
        return len(self._pending)
