# SPDX-License-Identifier: GPL-3.0-or-later
"""structlog → systemd-journald over journald's native protocol.

Why our own module instead of a library: structlog ships no journald renderer, and
systemd-python (``systemd.journal``) is a C extension that needs a compiler plus
libsystemd-dev at install time, for what is a documented, stable wire format of
``NAME=value`` lines in one AF_UNIX datagram (see systemd's JOURNAL_NATIVE_PROTOCOL
doc). Writing it ourselves also lets every structlog key become its own journal field,
so ``journalctl AUDIO_LAG_MS=12`` or ``-o json`` work without parsing message text.

Usage: ``JournalRenderer`` is the final structlog processor and produces the payload
as bytes; ``JournalLoggerFactory`` hands structlog a ``JournalLogger`` that sends it.
"""

from __future__ import annotations

import array
import errno
import fcntl
import functools
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from structlog.processors import format_exc_info
from structlog.typing import EventDict, WrappedLogger

DEFAULT_SOCKET = "/run/systemd/journal/socket"

# syslog(3) levels; "exception" is structlog's error-with-traceback method.
_PRIORITIES = {
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warn": 4,
    "warning": 4,
    "err": 3,
    "error": 3,
    "exception": 3,
    "failure": 3,
    "critical": 2,
    "fatal": 2,
}
_DEFAULT_PRIORITY = 6

# Keys filled in by CallsiteParameterAdder. Those journald has well-known fields for are
# renamed; all of them stay out of MESSAGE, which should read like a sentence.
_CALLSITE_KEYS = frozenset(
    {
        "pathname",
        "filename",
        "module",
        "qual_module",
        "func_name",
        "qual_name",
        "lineno",
        "thread",
        "thread_name",
        "process",
        "process_name",
    }
)
_MULTILINE_KEYS = ("exception", "stack")
_NOT_IN_MESSAGE = _CALLSITE_KEYS | {"event", "level", "timestamp", *_MULTILINE_KEYS}

# Fields this renderer sets itself; a structlog key that maps onto one gets a prefix so
# the journal never holds two competing values (e.g. a ``priority=`` keyword argument).
_OWN_FIELDS = frozenset(
    {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "EVENT", "CODE_FILE", "CODE_LINE", "CODE_FUNC"}
)
_NAME_PREFIX = "FIELD_"
_MESSAGE_VALUE_MAX = 200
_NAME_MAX = 64  # journald drops fields with longer names
_NOT_NAME_CHAR = re.compile(r"[^A-Z0-9_]")


@functools.lru_cache(maxsize=512)
def field_name(key: str) -> str:
    """Map a structlog key onto a name journald accepts from an unprivileged client."""
    name = _NOT_NAME_CHAR.sub("_", key.upper())
    # A leading "_" marks trusted fields journald adds itself and would drop from us.
    name = name.lstrip("_")
    if not name or name[0].isdigit() or name in _OWN_FIELDS:
        name = _NAME_PREFIX + name
    return name[:_NAME_MAX]


def _to_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    # backslashreplace: a lone surrogate from a badly decoded device name must not cost us
    # the whole entry.
    return str(value).encode("utf-8", "backslashreplace")


def encode_field(name: str, value: bytes) -> bytes:
    """One field in the native protocol: binary form when the value holds a newline."""
    if b"\n" in value:
        return b"%s\n%s%s\n" % (name.encode("ascii"), struct.pack("<Q", len(value)), value)
    return b"%s=%s\n" % (name.encode("ascii"), value)


def parse_payload(payload: bytes) -> Iterator[tuple[str, bytes]]:
    """Inverse of ``encode_field`` over a whole entry (used for the stderr fallback)."""
    pos = 0
    while pos < len(payload):
        end = payload.index(b"\n", pos)
        line = payload[pos:end]
        name, eq, value = line.partition(b"=")
        if eq:
            yield name.decode("ascii"), value
            pos = end + 1
        else:
            (size,) = struct.unpack_from("<Q", payload, end + 1)
            start = end + 1 + 8
            yield line.decode("ascii"), payload[start : start + size]
            pos = start + size + 1


def _kv(value: object) -> str:
    text = str(value)
    if len(text) > _MESSAGE_VALUE_MAX:
        # MESSAGE is for reading; the key's own field still carries the full value.
        text = text[:_MESSAGE_VALUE_MAX] + "…"
    if not text or any(c in text for c in " \t\r\n\"'="):
        return repr(text)
    return text


class JournalRenderer:
    """Final structlog processor: event dict → native-protocol journal entry (bytes).

    ``message_ids`` maps event names to journald ``MESSAGE_ID``s (32 hex digits), so the events people
    search for are found by ``journalctl MESSAGE_ID=...`` whatever their text."""

    def __init__(self, identifier: str = "audiod", message_ids: Mapping[str, str] | None = None) -> None:
        self.identifier = identifier
        self.message_ids = dict(message_ids or {})

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> bytes:
        if event_dict.get("exc_info") and "exception" not in event_dict:
            # Without format_exc_info earlier in the chain the traceback would be lost
            # as "exc_info=True"; format it here rather than drop it.
            event_dict = format_exc_info(logger, method_name, event_dict)
        event_dict.pop("exc_info", None)

        level = event_dict.get("level", method_name)
        priority = _PRIORITIES.get(str(level).lower(), _DEFAULT_PRIORITY)
        event = str(event_dict.get("event", ""))

        fields = [
            encode_field("MESSAGE", _to_bytes(self._message(event, event_dict))),
            encode_field("PRIORITY", b"%d" % priority),
            encode_field("SYSLOG_IDENTIFIER", _to_bytes(self.identifier)),
            encode_field("EVENT", _to_bytes(event)),
        ]
        if message_id := self.message_ids.get(event):
            fields.append(encode_field("MESSAGE_ID", message_id.encode("ascii")))
        code_file = event_dict.get("pathname", event_dict.get("filename"))
        for name, value in (
            ("CODE_FILE", code_file),
            ("CODE_LINE", event_dict.get("lineno")),
            ("CODE_FUNC", event_dict.get("func_name")),
        ):
            if value is not None:
                fields.append(encode_field(name, _to_bytes(value)))
        for key, value in event_dict.items():
            # level is PRIORITY; the code location keys were just written as CODE_*.
            if key in ("event", "level", "pathname", "filename", "lineno", "func_name"):
                continue
            fields.append(encode_field(field_name(key), _to_bytes(value)))
        return b"".join(fields)

    @staticmethod
    def _message(event: str, event_dict: EventDict) -> str:
        if event == "transcript" and "text" in event_dict:
            # The transcript is what an operator scrolling `journalctl -u audiod` wants
            # to read, so it is the message, kept on one line; TEXT keeps it verbatim.
            summary = "transcript: " + " ".join(str(event_dict["text"]).splitlines())
        else:
            pairs = [f"{k}={_kv(v)}" for k, v in event_dict.items() if k not in _NOT_IN_MESSAGE]
            summary = " ".join([event, *pairs])
        # A traceback is appended although EXCEPTION holds it too: journalctl's default
        # output shows only MESSAGE, and a crash report nobody sees is no report.
        extra = [str(event_dict[k]) for k in _MULTILINE_KEYS if event_dict.get(k)]
        return "\n".join([summary, *extra])


def stderr_is_journal(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """Whether ``fd`` is the journal stream systemd connected us to (see systemd.exec(5))."""
    dev, sep, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        expected = (int(dev), int(ino))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == expected


# Sending blocks while journald's receive queue is full; a wedged journald must not wedge
# the worker or the watchdog poller, so give up after a while and use stderr.
_SEND_TIMEOUT_S = 1.0
_ALL_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


class JournalLogger:
    """Sends each rendered entry to journald as one datagram; mirrors structlog's BytesLogger.

    Entries too large for a datagram go through a sealed memfd, as sd_journal_sendv()
    does. When journald cannot be reached the message goes to stderr and ``errors``
    counts it, so logging never takes the daemon down.
    """

    def __init__(self, socket_path: str = DEFAULT_SOCKET, stderr: TextIO | None = None) -> None:
        self.socket_path = socket_path
        self.errors = 0
        # None means "sys.stderr at the time of writing", which may be replaced at runtime.
        self._stderr = stderr
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<JournalLogger(socket_path={self.socket_path!r})>"

    def msg(self, message: bytes) -> None:
        with self._lock:
            try:
                self._send(message)
            except OSError:
                self.errors += 1
                self._fallback(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, message: bytes) -> None:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(_SEND_TIMEOUT_S)
            self._sock = sock
        # Unconnected sendto, like libsystemd: a restarted journald has a new socket
        # inode, and a connected socket would keep pointing at the dead one.
        try:
            self._sock.sendto(message, self.socket_path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(self._sock, message)

    def _send_memfd(self, sock: socket.socket, message: bytes) -> None:
        fd = os.memfd_create("audiod-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(message)
            while view:
                view = view[os.write(fd, view) :]
            # journald only accepts a memfd it can trust not to change under it.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _ALL_SEALS)
            # Not socket.send_fds(): it ignores its address argument (CPython gh-107898),
            # which an unconnected socket needs.
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            sock.sendmsg([], rights, 0, self.socket_path)
        finally:
            os.close(fd)

    def _fallback(self, message: bytes) -> None:
        stream = self._stderr if self._stderr is not None else sys.stderr
        try:
            fields = dict(parse_payload(message))
        except (ValueError, struct.error):
            fields = {}  # not from our renderer; print it as it came
        text = fields.get("MESSAGE", message).decode("utf-8", "replace")
        try:
            if stderr_is_journal(fd=stream.fileno()):
                # journald's stream transport reads a "<N>" prefix as the priority, so a
                # failing native socket still leaves correctly levelled lines.
                prefix = f"<{fields.get('PRIORITY', b'6').decode()}>"
                text = "\n".join(prefix + line for line in text.splitlines())
        except (OSError, ValueError):
            pass  # no usable fileno (e.g. a StringIO): plain text is right then
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr is gone as well; nothing left to tell


class JournalLoggerFactory:
    """``structlog.configure(logger_factory=...)``: every logger shares one socket."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, stderr: TextIO | None = None) -> None:
        self.logger = JournalLogger(socket_path, stderr)

    def __call__(self, *args: Any) -> JournalLogger:
        return self.logger
