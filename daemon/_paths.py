"""Where audiod keeps its runtime state (status block, pid file) and its transcripts."""

from __future__ import annotations

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
