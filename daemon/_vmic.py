"""A private virtual microphone: a PulseAudio server of our own whose null sink's monitor is the input.

Used by ``audiod demo`` (so audiod can be tried on a machine with no microphone) and by the end-to-end tests.
Unlike ALSA's ``null`` or ``file`` devices, PulseAudio paces the audio in real time, so lag, drops and
xruns behave as they do on a real microphone. Clients reach it through ALSA's ``pulse`` device
(libasound2-plugins) with ``PULSE_SERVER`` pointing at our socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

SINK = "vmic"

# Harvard sentences (IEEE 1969), the usual test material for speech intelligibility.
SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
)


class ToolMissing(Exception):
    pass


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise ToolMissing(
            f"{', '.join(missing)} not found; install with: sudo apt-get install pulseaudio pulseaudio-utils "
            "libasound2-plugins flite sox"
        )


def speak(text: str, path: Path, voice: str = "slt") -> Path:
    """Synthesise ``text`` with flite into a WAV file."""
    need("flite")
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, capture_output=True)
    return path


class VirtualMic:
    """``with VirtualMic() as mic:`` -> ``mic.env`` for clients, ``mic.play(wav)`` to speak into it."""

    def __init__(self, rate: int = 16000, channels: int = 1) -> None:
        self.rate = rate
        self.channels = channels
        self._dir = Path(tempfile.mkdtemp(prefix="audiod-vmic-"))
        self.socket = self._dir / "native"
        self.env = {"PULSE_SERVER": f"unix:{self.socket}"}
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> VirtualMic:
        try:
            self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start(self) -> None:
        """Start the server (again, after ``stop``: the same socket, like a device coming back)."""
        need("pulseaudio", "pactl", "paplay")
        env = {**os.environ, "HOME": str(self._dir), "XDG_RUNTIME_DIR": str(self._dir)}
        env.pop("PULSE_SERVER", None)
        with open(self._dir / "pulseaudio.log", "ab") as log:  # the server keeps its own copy
            self._proc = subprocess.Popen(
                [
                    "pulseaudio",
                    "--daemonize=no",
                    "--system=false",
                    "--exit-idle-time=-1",
                    "--use-pid-file=no",
                    "--disallow-module-loading=no",
                    "--log-target=stderr",
                    "-n",  # no default.pa: only the modules below
                    f"--load=module-native-protocol-unix socket={self.socket} auth-anonymous=1",
                    f"--load=module-null-sink sink_name={SINK} rate={self.rate} channels={self.channels}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 15
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = (self._dir / "pulseaudio.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"private PulseAudio did not start: {tail}")
            time.sleep(0.1)
        self.pactl("set-default-source", f"{SINK}.monitor")
        self.pactl("set-default-sink", SINK)

    def stop(self) -> None:
        """Stop the server: to its clients, the microphone is gone."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def _ready(self) -> bool:
        if not self.socket.exists():
            return False
        return subprocess.run(["pactl", "info"], env=self.client_env(), capture_output=True).returncode == 0

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def pactl(self, *args: str) -> str:
        out = subprocess.run(
            ["pactl", *args], env=self.client_env(), capture_output=True, text=True, check=True
        )
        return out.stdout

    def play(self, wav: Path, wait: bool = True) -> subprocess.Popen[bytes]:
        """Play ``wav`` into the microphone in real time."""
        proc = subprocess.Popen(["paplay", f"--device={SINK}", str(wav)], env=self.client_env())
        if wait:
            proc.wait()
        return proc

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)
