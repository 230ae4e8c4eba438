"""Where audiod keeps its runtime state (status block, pid file) and its transcripts."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def runtime_dir(environ: os._Environ[str] | dict[str, str] = os.environ) -> Path:
    """``$RUNTIME_DIRECTORY`` (systemd's RuntimeDirectory=), else ``$XDG_RUNTIME_DIR/audiod``.

    Without either (a root shell, a cron job) fall back to ``/tmp/audiod-UID``; ``ensure_private_dir``
    refuses it if somebody else created it first.
    """
    if rd := environ.get("RUNTIME_DIRECTORY"):
        return Path(rd.split(":")[0])  # systemd lists several when the unit names several
    if xdg := environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "audiod"
    return Path(f"/tmp/audiod-{os.getuid()}")


def find_runtime_dir() -> Path:
    """For readers (``audiod status`` from any shell): our own runtime directory if a daemon uses it, else
    the system service's ``/run/audiod``."""
    own = runtime_dir()
    for candidate in (own, Path("/run/audiod")):
        if (candidate / STATUS_FILE).exists():
            return candidate
    return own


def state_dir(environ: os._Environ[str] | dict[str, str] = os.environ) -> Path:
    """``$STATE_DIRECTORY`` (systemd's StateDirectory=), else ``$XDG_STATE_HOME/audiod``."""
    if sd := environ.get("STATE_DIRECTORY"):
        return Path(sd.split(":")[0])
    xdg = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "audiod"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` mode 0700 if needed; refuse one owned by another user (shared /tmp)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} is owned by uid {st.st_uid}, not by us")
    return path


STATUS_FILE = "status"
PID_FILE = "audiod.pid"


class AlreadyRunning(Exception):
    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"already running (pid {pid if pid else 'unknown'}, lock {path})")
        self.pid = pid


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


class PidFile:
    """An flock'ed pid file: held for the daemon's lifetime, released by the kernel even on SIGKILL, so a
    stale file never blocks a restart and two daemons never share a runtime directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> PidFile:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(self.path, read_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
