# SPDX-License-Identifier: GPL-3.0-or-later
"""sd_notify(3) and the service watchdog, without a systemd-python dependency.

The protocol is one AF_UNIX datagram of newline-separated ``KEY=VALUE`` lines sent to
``$NOTIFY_SOCKET``; that is small enough that a C extension (and the compiler plus
libsystemd-dev it needs at install time) would cost more than it saves.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ._status import Snapshot

# A stuck service manager must not freeze the thread that pings the watchdog forever;
# one second is far below any sane WatchdogSec and far above a healthy PID 1's latency.
_SEND_TIMEOUT_S = 1.0

_lock = threading.Lock()
_sock: socket.socket | None = None


def _address(value: str) -> str | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Abstract namespace: Python takes a leading NUL for it, systemd spells it "@".
        return "\0" + value[1:]
    # systemd >= 253 may also hand out "vsock:" addresses; we never run inside a VM guest
    # that is supervised through vsock, so those are treated as "no manager".
    return None


def _socket() -> socket.socket:
    global _sock
    with _lock:
        if _sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(_SEND_TIMEOUT_S)
            _sock = sock
        return _sock


def notify(*lines: str) -> bool:
    """Send ``lines`` as one notification datagram; False if not supervised or it failed."""
    target = os.environ.get("NOTIFY_SOCKET", "")
    address = _address(target) if target else None
    if address is None or not lines:
        return False
    payload = "\n".join(lines).encode()
    try:
        # sendto() on one shared unbound socket is atomic per datagram, so two threads
        # may call this concurrently without further locking.
        _socket().sendto(payload, address)
    except OSError:
        return False
    return True


@dataclass
class Watchdog:
    """Pings ``WATCHDOG=1`` at half of ``WatchdogSec``, but only while the caller says
    the pipeline is making progress: a hung worker must let the manager kill us."""

    interval_s: float
    _last_ping: float | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, pid: int | None = None) -> Watchdog | None:
        # pid is resolved at call time, not as a default value, so a forked child
        # compares against its own pid rather than the importer's.
        own_pid = os.getpid() if pid is None else pid
        try:
            usec = int(environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        target_pid = environ.get("WATCHDOG_PID")
        if target_pid is not None:
            # The variable is meant for one process only; a child that inherited the
            # environment must not keep its parent alive by pinging on its behalf.
            try:
                if int(target_pid) != own_pid:
                    return None
            except ValueError:
                return None
        # Half the timeout is what sd_watchdog_enabled(3) recommends: one lost or late
        # ping must not be fatal.
        return cls(interval_s=usec / 2 / 1_000_000)

    def tick(self, now: float, progressing: bool) -> bool:
        """Ping if due and ``progressing``; ``now`` is a monotonic clock reading."""
        if not progressing:
            return False
        if self._last_ping is not None and now - self._last_ping < self.interval_s:
            return False
        if not notify("WATCHDOG=1"):
            # Leave _last_ping alone so the next tick retries instead of waiting a period.
            return False
        self._last_ping = now
        return True


STATUS_EVERY_S = 1.0  # systemctl status is read by people: once a second is live enough and cheap for PID 1


def status_line(snap: Snapshot) -> str:
    return f"{snap.display_line()} | transcripts {snap.transcripts}"


class Supervisor:
    """A poller subscriber: keeps systemd's ``STATUS=`` current and feeds the watchdog only while the
    pipeline makes progress, i.e. capture delivered blocks since the last ping and the worker's heartbeat is
    younger than the watchdog timeout. A dead stream or a hung worker stops the pings, so systemd kills and
    restarts us."""

    def __init__(self, watchdog: Watchdog | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._watchdog = watchdog
        self._clock = clock
        self._stuck_us = round(watchdog.interval_s * 2e6) if watchdog else 0
        self._total_at_ping = -1
        self._last_status = -math.inf

    def progressing(self, snap: Snapshot) -> bool:
        captured = snap.total_chunks > self._total_at_ping
        worker_alive = snap.updated_us - snap.worker_heartbeat_us < self._stuck_us
        return captured and worker_alive

    def __call__(self, snap: Snapshot) -> None:
        now = self._clock()
        if now - self._last_status >= STATUS_EVERY_S:
            notify(f"STATUS={status_line(snap)}")
            self._last_status = now
        if self._watchdog is not None and self._watchdog.tick(now, self.progressing(snap)):
            self._total_at_ping = snap.total_chunks
