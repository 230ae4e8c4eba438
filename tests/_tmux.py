"""A private tmux server for tests of terminal programs: start a command in a pane of known size, read the
screen as a person would see it, press keys."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

SESSION = "t"


class Tmux:
    def __init__(self, tmp: Path, width: int = 120, height: int = 40) -> None:
        if shutil.which("tmux") is None:
            raise AssertionError("tmux missing: apt-get install tmux (make setup-test installs it)")
        tmp.mkdir(parents=True, exist_ok=True)
        self.socket = tmp / "tmux.sock"
        self.conf = tmp / "tmux.conf"
        # The pane stays after its program exits, so the test can read how it ended; no status bar.
        self.conf.write_text("set -g remain-on-exit on\nset -g status off\n")
        self.width, self.height = width, height
        self.status_file = tmp / "exit-status"

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", str(self.conf), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
        )
        assert out.returncode == 0, f"tmux {args[0]}: {out.stderr}"
        return out.stdout

    def start(self, command: str, env: dict[str, str]) -> None:
        """Run ``command`` (a shell line) in a new server whose environment is ``env``."""
        size = ["-x", str(self.width), "-y", str(self.height)]
        line = f"{command}; echo $? > {shlex.quote(str(self.status_file))}"
        self._tmux("new-session", "-d", "-s", SESSION, *size, line, env=env)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", SESSION)

    def wait_for(self, pattern: str, timeout: float = 10) -> str:
        """The screen once ``pattern`` (a regex) shows on it."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, screen := self.screen()):
            assert time.monotonic() < deadline, f"no {pattern!r} on the screen within {timeout}s:\n{screen}"
            time.sleep(0.05)
        return screen

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", SESSION, *keys)

    def exit_status(self, timeout: float = 5) -> int:
        """Wait for the command to end; its exit status. (tmux's own #{pane_dead_status} is set only some
        seconds after the pane died, and not reliably: the shell line records it instead.)"""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status_file.read_text() if self.status_file.exists() else ""
            if status.endswith("\n"):
                return int(status)
            assert time.monotonic() < deadline, f"still running after {timeout}s:\n{self.screen()}"
            time.sleep(0.05)

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=10)
