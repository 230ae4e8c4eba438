"""``audiod start/stop/restart``: through systemctl when a unit is installed and systemd runs, else by
running the daemon detached (own session, pid file lock in the runtime directory, log to a file)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import _exits, _status
from ._paths import PID_FILE, STATUS_FILE, ensure_private_dir, read_pid, runtime_dir, state_dir

UNIT = "audiod.service"
START_TIMEOUT_S = 120.0  # model load on a Raspberry Pi
STOP_TIMEOUT_S = 30.0


def systemctl_prefix() -> list[str] | None:
    """``systemctl`` (or ``systemctl --user``) when systemd is PID 1 and an audiod unit is installed."""
    if not os.path.isdir("/run/systemd/system") or shutil.which("systemctl") is None:
        return None
    scopes = [["systemctl"], ["systemctl", "--user"]]
    if os.getuid() != 0:
        scopes.reverse()  # a desktop user's own unit first
    for prefix in scopes:
        found = subprocess.run([*prefix, "cat", UNIT], capture_output=True)
        if found.returncode == 0:
            return prefix
    return None


def running_pid(rundir: Path) -> int | None:
    """The pid holding the daemon's lock in ``rundir``, or None. The lock, not the file, is the truth: it
    dies with the process even on SIGKILL."""
    try:
        fd = os.open(rundir / PID_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(rundir / PID_FILE) or -1
    finally:
        os.close(fd)
    return None


def _say(message: str) -> None:
    print(f"audiod: {message}", file=sys.stderr)


def start(run_args: Sequence[str]) -> int:
    if (prefix := systemctl_prefix()) is not None:
        return subprocess.run([*prefix, "start", UNIT]).returncode
    rundir = ensure_private_dir(runtime_dir())
    if pid := running_pid(rundir):
        _say(f"already running (pid {pid})")
        return _exits.ALREADY_RUNNING
    log_path = ensure_private_dir(state_dir()) / "audiod.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", *run_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # survives the shell that started it, and its Ctrl-C
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if (code := proc.poll()) is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            _say(f"failed to start (exit {code}): {tail[0]}")
            return code or _exits.FAILURE
        try:
            if _status.read(rundir / STATUS_FILE).snapshot.state_name() == "running":
                print(f"audiod started (pid {proc.pid}); log: {log_path}")
                return _exits.OK
        except _status.StatusFileError:
            pass  # not created yet
        time.sleep(0.1)
    _say(f"pid {proc.pid} did not become ready within {START_TIMEOUT_S:.0f}s; log: {log_path}")
    return _exits.FAILURE


def stop(timeout: float = STOP_TIMEOUT_S) -> int:
    if (prefix := systemctl_prefix()) is not None:
        return subprocess.run([*prefix, "stop", UNIT]).returncode
    rundir = runtime_dir()
    pid = running_pid(rundir)
    if not pid:
        _say("not running")
        return _exits.NOT_RUNNING
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while running_pid(rundir):
        if time.monotonic() - t0 > timeout:
            _say(f"pid {pid} did not stop within {timeout:.0f}s (still transcribing? try again, or kill it)")
            return _exits.FAILURE
        time.sleep(0.05)
    print(f"audiod stopped (pid {pid}) in {time.monotonic() - t0:.1f}s")
    return _exits.OK


def restart(run_args: Sequence[str]) -> int:
    if (prefix := systemctl_prefix()) is not None:
        return subprocess.run([*prefix, "restart", UNIT]).returncode
    if running_pid(runtime_dir()) and (code := stop()) != _exits.OK:
        return code
    return start(run_args)


def render_unit(user: bool) -> str:
    """The shipped unit, ExecStart pointing at this installation's ``audiod``. Raises FileNotFoundError."""
    name = "audiod-user.service" if user else "audiod.service"
    source = Path(__file__).resolve().parent.parent / "systemd" / name
    beside = Path(sys.executable).parent / "audiod"  # the console script of this interpreter's environment
    exe = str(beside) if beside.exists() else shutil.which("audiod") or str(Path(sys.argv[0]).resolve())
    unit = re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", source.read_text(), count=1, flags=re.M)
    homes = ("/home/", "/root/", "/run/user/")
    needed = sorted(
        {p for p in (exe, sys.prefix, sys.base_prefix, str(source.parent.parent)) if p.startswith(homes)}
    )
    if not user and needed:
        # ProtectHome=yes hides a virtualenv or checkout under a home directory (the unit would fail with
        # 203/EXEC); an empty tmpfs over /home with just these paths bound read-only keeps the rest hidden.
        unit = re.sub(r"^ProtectHome=yes$", "ProtectHome=tmpfs", unit, count=1, flags=re.M)
        unit = unit.replace("[Install]", f"BindReadOnlyPaths={' '.join(needed)}\n\n[Install]", 1)
    return unit


def install_unit(user: bool) -> int:
    """Install the unit for this installation and reload systemd."""
    try:
        unit = render_unit(user)
    except FileNotFoundError as e:
        _say(f"unit file {e.filename} not found (install from a source checkout, or copy it from systemd/)")
        return _exits.FAILURE
    if user:
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        target = Path(xdg) / "systemd" / "user" / UNIT
    else:
        target = Path("/etc/systemd/system") / UNIT
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(unit)
    except OSError as e:
        _say(f"cannot write {target}: {e.strerror}" + ("" if user else " (run as root, or use --user)"))
        return _exits.CANT_CREATE
    scope = ["--user"] if user else []
    if os.path.isdir("/run/systemd/system"):
        subprocess.run(["systemctl", *scope, "daemon-reload"], check=False)
    print(f"installed {target}; enable with: systemctl {' '.join(scope)} enable --now audiod")
    return _exits.OK
