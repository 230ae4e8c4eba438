# SPDX-License-Identifier: GPL-3.0-or-later
"""Journal encoder units, the sender against real sockets, and a round trip through a real journald."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon._journal import (
    DEFAULT_SOCKET,
    JournalLogger,
    JournalLoggerFactory,
    JournalRenderer,
    encode_field,
    field_name,
    parse_payload,
    stderr_is_journal,
)

# journald's own rule for a field a client may set (journal_field_valid() in systemd).
VALID_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def _next_line() -> int:
    return sys._getframe(1).f_lineno + 1


def _fields(payload: bytes) -> dict[str, str]:
    return {k: v.decode() for k, v in parse_payload(payload)}


# --- encoder ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("audio_lag_ms", "AUDIO_LAG_MS"),
        ("device-name", "DEVICE_NAME"),
        ("dotted.key", "DOTTED_KEY"),
        ("héllo", "H_LLO"),
        ("_private", "PRIVATE"),
        ("__dunder__", "DUNDER__"),
        ("1st_try", "FIELD_1ST_TRY"),
        ("_9", "FIELD_9"),
        ("", "FIELD_"),
        ("---", "FIELD_"),
        ("message", "FIELD_MESSAGE"),
        ("priority", "FIELD_PRIORITY"),
        ("syslog_identifier", "FIELD_SYSLOG_IDENTIFIER"),
        ("message_id", "MESSAGE_ID"),
        ("x" * 100, "X" * 64),
        ("9" * 100, "FIELD_" + "9" * 58),
    ],
)
def test_field_name_sanitising(key: str, name: str) -> None:
    assert field_name(key) == name
    assert VALID_NAME.fullmatch(name)


def test_single_line_field() -> None:
    assert encode_field("TEXT", b"a = b") == b"TEXT=a = b\n"
    assert encode_field("EMPTY", b"") == b"EMPTY=\n"


def test_multi_line_field_uses_binary_form() -> None:
    value = b"line one\nline two"
    assert encode_field("STACK", value) == b"STACK\n" + struct.pack("<Q", 17) + value + b"\n"
    assert encode_field("NL", b"\n") == b"NL\n\x01\x00\x00\x00\x00\x00\x00\x00\n\n"


def test_renderer_exact_payload() -> None:
    payload = JournalRenderer()(
        None, "info", {"event": "metrics", "level": "info", "audio_lag_ms": 12, "ratio": 0.25}
    )
    assert payload == (
        b"MESSAGE=metrics audio_lag_ms=12 ratio=0.25\n"
        b"PRIORITY=6\n"
        b"SYSLOG_IDENTIFIER=audiod\n"
        b"EVENT=metrics\n"
        b"AUDIO_LAG_MS=12\n"
        b"RATIO=0.25\n"
    )


@pytest.mark.parametrize(
    ("level", "method", "priority"),
    [
        ("debug", "debug", "7"),
        ("info", "info", "6"),
        ("warning", "warning", "4"),
        ("error", "error", "3"),
        ("critical", "critical", "2"),
        # add_log_level writes "error" for exception(); without it the method name decides.
        (None, "exception", "3"),
        (None, "warn", "4"),
        (None, "debug", "7"),
        (None, "msg", "6"),
        ("WARNING", "info", "4"),
    ],
)
def test_priority_mapping(level: str | None, method: str, priority: str) -> None:
    event: dict[str, Any] = {"event": "x"}
    if level is not None:
        event["level"] = level
    fields = _fields(JournalRenderer()(None, method, event))
    assert fields["PRIORITY"] == priority
    assert "LEVEL" not in fields  # PRIORITY is the level; a second copy would only drift


def test_renderer_multiline_value_round_trips_through_binary_form() -> None:
    payload = JournalRenderer(identifier="other")(None, "info", {"event": "cfg", "dump": "a=1\nb=2\n"})
    assert b"DUMP\n" + struct.pack("<Q", 8) + b"a=1\nb=2\n\n" in payload
    fields = _fields(payload)
    assert fields["DUMP"] == "a=1\nb=2\n"
    assert fields["SYSLOG_IDENTIFIER"] == "other"
    # MESSAGE stays on one line: the value is repr()-ed there.
    assert fields["MESSAGE"] == "cfg dump='a=1\\nb=2\\n'"


def test_transcript_message_is_the_text() -> None:
    fields = _fields(
        JournalRenderer()(None, "info", {"event": "transcript", "text": "hello\nworld", "start_s": 1.5})
    )
    assert fields["MESSAGE"] == "transcript: hello world"
    assert fields["TEXT"] == "hello\nworld"
    assert fields["START_S"] == "1.5"
    assert fields["EVENT"] == "transcript"


def test_callsite_keys_become_code_fields_once() -> None:
    event = {
        "event": "x",
        "pathname": "/opt/audiod/daemon/_capture.py",
        "filename": "_capture.py",
        "lineno": 42,
        "func_name": "_callback",
        "thread_name": "worker",
    }
    fields = _fields(JournalRenderer()(None, "info", event))
    assert fields["CODE_FILE"] == "/opt/audiod/daemon/_capture.py"
    assert fields["CODE_LINE"] == "42"
    assert fields["CODE_FUNC"] == "_callback"
    assert fields["THREAD_NAME"] == "worker"
    assert not {"PATHNAME", "FILENAME", "LINENO", "FUNC_NAME"} & fields.keys()
    assert fields["MESSAGE"] == "x"


def test_filename_is_code_file_without_pathname() -> None:
    fields = _fields(JournalRenderer()(None, "info", {"event": "x", "filename": "_vad.py"}))
    assert fields["CODE_FILE"] == "_vad.py"


def test_values_are_stringified() -> None:
    event = {"event": "x", "small": 1e-07, "third": 1 / 3, "whole": 12.0, "none": None, "flag": True}
    fields = _fields(JournalRenderer()(None, "info", event))
    assert (fields["SMALL"], fields["THIRD"], fields["WHOLE"]) == ("1e-07", "0.3333333333333333", "12.0")
    assert (fields["NONE"], fields["FLAG"]) == ("None", "True")


def test_unencodable_text_does_not_lose_the_entry() -> None:
    fields = _fields(JournalRenderer()(None, "info", {"event": "x", "device": "mic\udcff"}))
    assert fields["DEVICE"] == "mic\\udcff"


def test_long_values_are_cut_in_message_only() -> None:
    blob = "y" * 10_000
    fields = _fields(JournalRenderer()(None, "info", {"event": "x", "blob": blob}))
    assert fields["BLOB"] == blob
    assert fields["MESSAGE"] == "x blob=" + "y" * 200 + "…"


def test_exc_info_is_formatted_even_without_format_exc_info() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as e:
        expected = "".join(traceback.format_exception(e)).rstrip("\n")
        event = {"event": "failed", "exc_info": True}
        fields = _fields(JournalRenderer()(None, "error", event))
    assert fields["EXCEPTION"] == expected
    assert "EXC_INFO" not in fields
    assert fields["MESSAGE"] == "failed\n" + expected


# --- stderr detection ------------------------------------------------------------------------------


def test_stderr_is_journal_matches_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd=f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fd=f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, fd=f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "1:x"}, fd=f.fileno())
        assert not stderr_is_journal({}, fd=f.fileno())


def test_stderr_is_journal_defaults_to_fd_2(monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stderr_is_journal()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not stderr_is_journal()


def test_stderr_is_journal_with_closed_fd(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    st = os.fstat(fd)
    os.close(fd)
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd=fd)


# --- sender, against a plain datagram socket standing in for journald -----------------------------


@pytest.fixture
def make_logger() -> Iterator[Callable[..., JournalLogger]]:
    made: list[JournalLogger] = []

    def make(*args: Any, **kwargs: Any) -> JournalLogger:
        made.append(JournalLogger(*args, **kwargs))
        return made[-1]

    yield make
    for logger in made:
        logger.close()


@pytest.fixture
def fake_journal(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    yield path, sock
    sock.close()


def test_logger_sends_one_datagram_per_entry(
    fake_journal: tuple[str, socket.socket], make_logger: Callable[..., JournalLogger]
) -> None:
    path, sock = fake_journal
    logger = make_logger(path)
    logger.info(b"MESSAGE=one\n")
    logger.exception(b"MESSAGE=two\n")
    assert sock.recv(65536) == b"MESSAGE=one\n"
    assert sock.recv(65536) == b"MESSAGE=two\n"
    assert logger.errors == 0


def test_oversized_entry_goes_through_sealed_memfd(
    fake_journal: tuple[str, socket.socket], make_logger: Callable[..., JournalLogger]
) -> None:
    path, sock = fake_journal
    logger = make_logger(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        sndbuf = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    payload = encode_field("MESSAGE", b"big") + encode_field("BLOB", b"z\n" * max(150_000, sndbuf))
    # Precondition: the kernel really refuses this as a datagram, so the memfd path is what we test.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe, pytest.raises(OSError) as refused:
        probe.sendto(payload, path)
    assert refused.value.errno == errno.EMSGSIZE

    logger.msg(payload)

    data, fds, _flags, _addr = socket.recv_fds(sock, 16, 1)
    assert data == b""  # journald treats an empty datagram with one fd as "read the entry from it"
    assert len(fds) == 1
    fd = fds[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        expected = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        # Exactly these four, as journald's memfd_get_sealed() demands from non-root senders
        # (it lets root skip the check, so the round trip below as root cannot catch this).
        assert seals == expected
        assert os.pread(fd, len(payload) + 1, 0) == payload
    finally:
        os.close(fd)
    assert logger.errors == 0


def test_unreachable_journal_falls_back_to_stderr(
    tmp_path: Path, make_logger: Callable[..., JournalLogger]
) -> None:
    err = io.StringIO()
    logger = make_logger(str(tmp_path / "no-journald-here"), stderr=err)
    render = JournalRenderer()
    logger.info(render(None, "info", {"event": "capture_started", "device": "hw:1"}))
    logger.error(render(None, "error", {"event": "failed", "exception": "Traceback:\n  boom"}))
    assert err.getvalue() == "capture_started device=hw:1\nfailed\nTraceback:\n  boom\n"
    assert logger.errors == 2


def test_fallback_to_journal_stream_keeps_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_logger: Callable[..., JournalLogger]
) -> None:
    # When stderr itself is the journal stream, "<N>" prefixes carry the priority over.
    with open(tmp_path / "stderr", "w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        logger = make_logger(str(tmp_path / "absent"), stderr=stream)
        logger.warning(JournalRenderer()(None, "warning", {"event": "lagging", "exception": "a\nb"}))
        stream.seek(0)
        assert stream.read() == "<4>lagging\n<4>a\n<4>b\n"


def test_fallback_survives_foreign_payload_and_dead_stderr(
    tmp_path: Path, make_logger: Callable[..., JournalLogger]
) -> None:
    err = io.StringIO()
    logger = make_logger(str(tmp_path / "absent"), stderr=err)
    logger.msg(b"NOT\nA VALID PAYLOAD")
    assert err.getvalue() == "NOT\nA VALID PAYLOAD\n"
    err.close()
    logger.msg(b"MESSAGE=x\n")  # writing to a closed stream must not raise either
    assert logger.errors == 2


def test_logger_recovers_when_journald_appears(
    tmp_path: Path, make_logger: Callable[..., JournalLogger]
) -> None:
    path = str(tmp_path / "later.sock")
    logger = make_logger(path, stderr=io.StringIO())
    logger.msg(b"MESSAGE=lost\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as late:
        late.bind(path)
        logger.msg(b"MESSAGE=delivered\n")
        assert late.recv(100) == b"MESSAGE=delivered\n"
    assert logger.errors == 1


def test_two_threads_logging(fake_journal: tuple[str, socket.socket], request: pytest.FixtureRequest) -> None:
    path, sock = fake_journal
    logger = JournalLoggerFactory(path)()
    request.addfinalizer(logger.close)
    per_thread = 300
    received: list[bytes] = []

    def drain() -> None:
        while len(received) < 2 * per_thread:
            received.append(sock.recv(65536))

    reader = threading.Thread(target=drain)
    reader.start()

    def log(tag: str) -> None:
        for i in range(per_thread):
            logger.info(encode_field("MESSAGE", f"{tag} {i}".encode()))

    writers = [threading.Thread(target=log, args=(tag,)) for tag in "ab"]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    reader.join(timeout=10)
    assert logger.errors == 0
    expected = [f"MESSAGE={tag} {i}\n".encode() for tag in "ab" for i in range(per_thread)]
    assert sorted(received) == sorted(expected)


def test_factory_shares_one_logger() -> None:
    factory = JournalLoggerFactory("/nonexistent")
    assert factory() is factory("some.name") is factory.logger


# --- round trip through a real systemd-journald ----------------------------------------------------

JOURNALD = "/lib/systemd/systemd-journald"


def _journal_listening(path: str) -> bool:
    # connect() on a datagram socket sends nothing but fails with ECONNREFUSED on a stale
    # socket file left by a journald that died, which a mere existence check would miss.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _topmost_missing(path: Path) -> Path | None:
    """The highest ancestor of ``path`` (or itself) that does not exist yet: what to remove later."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


@pytest.fixture(scope="module")
def journald(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A journald listening on the standard socket: the machine's own, or one started here.

    A standalone journald (systemd is not PID 1 in containers and CI VMs) works fine as root:
    it creates /run/systemd/journal/{socket,stdout,...} and, as long as nobody asks it to
    flush, keeps its files in the volatile /run/log/journal even if /var/log/journal exists.
    """
    if _journal_listening(DEFAULT_SOCKET):
        yield DEFAULT_SOCKET
        return
    if not os.access(JOURNALD, os.X_OK) or shutil.which("journalctl") is None:
        pytest.skip(f"no journald running and {JOURNALD}/journalctl missing (Debian package: systemd)")
    if os.geteuid() != 0:
        pytest.skip("no journald running, and starting one needs root to create /run/systemd/journal")

    leftovers = [
        p
        for p in (_topmost_missing(Path("/run/systemd/journal")), _topmost_missing(Path("/run/log/journal")))
        if p is not None
    ]
    out_path = tmp_path_factory.mktemp("journald") / "journald.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [JOURNALD], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 15
        while not _journal_listening(DEFAULT_SOCKET):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"systemd-journald did not come up (exit {proc.poll()}): {out_path.read_text()}")
            time.sleep(0.02)
        yield DEFAULT_SOCKET
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for p in leftovers:
            shutil.rmtree(p, ignore_errors=True)


def _read_journal(identifier: str, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    # journald stores asynchronously after our send returns, so poll; --all because
    # journalctl prints fields over 4 KiB as null otherwise.
    cmd = ["journalctl", "-t", identifier, "-o", "json", "--all", "--no-pager", "-q"]
    deadline = time.monotonic() + timeout_s
    while True:
        run = subprocess.run(cmd, capture_output=True, text=True)
        entries = [json.loads(line) for line in run.stdout.splitlines()]
        if len(entries) >= count or time.monotonic() > deadline:
            assert len(entries) == count, f"journalctl rc={run.returncode} stderr={run.stderr!r}"
            return entries
        time.sleep(0.05)


@pytest.fixture
def journal_log(journald: str) -> Iterator[tuple[Any, str, JournalLogger]]:
    identifier = f"audiod-test-{uuid.uuid4().hex[:12]}"
    factory = JournalLoggerFactory(journald)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.CallsiteParameterAdder(
                [
                    structlog.processors.CallsiteParameter.PATHNAME,
                    structlog.processors.CallsiteParameter.LINENO,
                    structlog.processors.CallsiteParameter.FUNC_NAME,
                    structlog.processors.CallsiteParameter.THREAD_NAME,
                ]
            ),
            structlog.processors.format_exc_info,
            JournalRenderer(identifier),
        ],
        logger_factory=factory,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    yield structlog.get_logger(), identifier, factory.logger
    structlog.reset_defaults()
    factory.logger.close()


def test_journald_round_trip(journal_log: tuple[Any, str, JournalLogger]) -> None:
    log, identifier, logger = journal_log
    metrics_line = _next_line()
    log.info("metrics", audio_lag_ms=12, dropped_chunks=0, rtf=0.25)
    log.info("transcript", text="hello world", start_s=1.5)
    log.warning("ring_overflow", dropped=3)
    log.debug("poll", depth=0)

    metrics, transcript, warning, debug = _read_journal(identifier, 4)
    assert logger.errors == 0

    assert metrics["EVENT"] == "metrics"
    assert metrics["AUDIO_LAG_MS"] == "12"
    assert metrics["DROPPED_CHUNKS"] == "0"
    assert metrics["RTF"] == "0.25"
    assert metrics["PRIORITY"] == "6"
    assert metrics["SYSLOG_IDENTIFIER"] == identifier
    assert metrics["MESSAGE"] == "metrics audio_lag_ms=12 dropped_chunks=0 rtf=0.25"
    assert metrics["CODE_FILE"] == __file__
    assert metrics["CODE_LINE"] == str(metrics_line)
    assert metrics["CODE_FUNC"] == "test_journald_round_trip"
    assert metrics["THREAD_NAME"] == "MainThread"
    assert metrics["_TRANSPORT"] == "journal"
    assert metrics["_PID"] == str(os.getpid())
    assert not {"PATHNAME", "LINENO", "FUNC_NAME", "LEVEL"} & metrics.keys()

    assert transcript["EVENT"] == "transcript"
    assert transcript["TEXT"] == "hello world"
    assert transcript["MESSAGE"] == "transcript: hello world"
    assert transcript["PRIORITY"] == "6"

    assert (warning["EVENT"], warning["PRIORITY"], warning["DROPPED"]) == ("ring_overflow", "4", "3")
    assert (debug["EVENT"], debug["PRIORITY"]) == ("poll", "7")


def _fail_deep() -> None:
    raise ValueError("decoder exploded\nsecond line of the error")


def test_journald_keeps_traceback_intact(journal_log: tuple[Any, str, JournalLogger]) -> None:
    log, identifier, logger = journal_log
    try:
        _fail_deep()
    except ValueError as e:
        expected = "".join(traceback.format_exception(e)).rstrip("\n")
        log.exception("transcribe_failed", utterance=7)

    (entry,) = _read_journal(identifier, 1)
    assert logger.errors == 0
    assert entry["PRIORITY"] == "3"
    assert entry["EVENT"] == "transcribe_failed"
    assert entry["EXCEPTION"] == expected
    assert "in _fail_deep" in entry["EXCEPTION"]
    assert entry["MESSAGE"] == "transcribe_failed utterance=7\n" + expected


def test_journald_accepts_oversized_entry(journal_log: tuple[Any, str, JournalLogger]) -> None:
    log, identifier, logger = journal_log
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        sndbuf = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    # Larger than any datagram this socket may send, so only the memfd path can deliver it.
    blob = "0123456789abcdef\n" * (max(300_000, 2 * sndbuf) // 17)
    log.info("model_dump", blob=blob)
    log.info("after_dump")

    big, after = _read_journal(identifier, 2)
    assert logger.errors == 0
    assert big["EVENT"] == "model_dump"
    assert big["BLOB"] == blob
    assert after["EVENT"] == "after_dump"
