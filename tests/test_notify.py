# SPDX-License-Identifier: GPL-3.0-or-later
"""sd_notify and watchdog behaviour against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon._notify import Watchdog, notify


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def _pending(sock: socket.socket) -> list[bytes]:
    """Everything queued on the receiver right now, without waiting for more."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(65536))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(2.0)


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = str(tmp_path / "notify.sock")
    sock = _receiver(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"audiod-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def test_notify_sends_one_datagram_to_path_socket(path_socket: socket.socket) -> None:
    assert notify("READY=1", "STATUS=capturing from hw:1") is True
    assert path_socket.recv(65536) == b"READY=1\nSTATUS=capturing from hw:1"
    assert _pending(path_socket) == []


def test_notify_sends_to_abstract_socket(abstract_socket: socket.socket) -> None:
    assert notify("STOPPING=1") is True
    assert abstract_socket.recv(65536) == b"STOPPING=1"


def test_notify_follows_environment_changes(
    tmp_path: Path, path_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lazily created socket is shared; the destination must still be re-read each call.
    assert notify("A=1")
    other = _receiver(str(tmp_path / "other.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "other.sock"))
    assert notify("B=2")
    assert other.recv(65536) == b"B=2"
    assert _pending(path_socket) == [b"A=1"]
    other.close()


def test_notify_unset_sends_nothing(path_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify("READY=1") is False
    assert _pending(path_socket) == []


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234", "@"])
def test_notify_unusable_address_returns_false(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify("READY=1") is False


def test_notify_send_error_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert notify("READY=1") is False
    # A socket file whose owner went away gives ECONNREFUSED rather than ENOENT.
    dead = _receiver(str(tmp_path / "dead.sock"))
    dead.close()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "dead.sock"))
    assert notify("READY=1") is False


def test_notify_from_two_threads(path_socket: socket.socket) -> None:
    # 8 datagrams in total stay below net.unix.max_dgram_qlen (10 on a kernel nobody tuned),
    # so no send blocks on the unread receiver.
    per_thread = 4
    results: list[bool] = []

    def send(tag: str) -> None:
        for i in range(per_thread):
            results.append(notify(f"STATUS={tag}{i}"))

    threads = [threading.Thread(target=send, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 2 * per_thread
    received = sorted(_pending(path_socket))
    assert received == sorted(f"STATUS={tag}{i}".encode() for tag in "ab" for i in range(per_thread))


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4242"}, 5.0),
        ({"WATCHDOG_USEC": "3"}, 1.5e-6),
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "ten"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "main"}, None),
    ],
)
def test_watchdog_from_env(environ: dict[str, str], expected: float | None) -> None:
    wd = Watchdog.from_env(environ, pid=4242)
    if expected is None:
        assert wd is None
    else:
        assert wd is not None
        assert wd.interval_s == pytest.approx(expected)


def test_watchdog_from_env_defaults_to_own_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    wd = Watchdog.from_env()
    assert wd is not None and wd.interval_s == 1.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Watchdog.from_env() is None


def test_watchdog_pings_once_per_interval(path_socket: socket.socket) -> None:
    wd = Watchdog.from_env({"WATCHDOG_USEC": "2000000"}, pid=1)
    assert wd is not None and wd.interval_s == 1.0
    # The poller calls tick every 100 ms; simulate 3.5 s of a healthy pipeline.
    pinged_at = [round(t / 10, 1) for t in range(36) if wd.tick(100.0 + t / 10, progressing=True)]
    assert pinged_at == [0.0, 1.0, 2.0, 3.0]
    assert _pending(path_socket) == [b"WATCHDOG=1"] * 4


def test_watchdog_stops_pinging_while_not_progressing(path_socket: socket.socket) -> None:
    wd = Watchdog(interval_s=1.0)
    assert wd.tick(0.0, progressing=True)
    # Worker hangs: no ping however long it lasts, so systemd's timer runs out.
    assert not any(wd.tick(t / 10, progressing=False) for t in range(1, 100))
    assert _pending(path_socket) == [b"WATCHDOG=1"]
    # Recovery pings immediately, since the last ping is long overdue.
    assert wd.tick(10.0, progressing=True)
    assert not wd.tick(10.5, progressing=True)
    assert _pending(path_socket) == [b"WATCHDOG=1"]


def test_watchdog_retries_after_failed_send(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "late.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    wd = Watchdog(interval_s=1.0)
    assert wd.tick(0.0, progressing=True) is False  # nobody listening yet
    receiver = _receiver(path)
    # A failed ping must not count as "last ping", or we would wait a full period more.
    assert wd.tick(0.1, progressing=True) is True
    assert receiver.recv(65536) == b"WATCHDOG=1"
    receiver.close()
