"""Fixtures for end-to-end tests: a private PulseAudio virtual microphone, speech, and audiod processes."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon._vmic import SENTENCES, VirtualMic, speak


@pytest.fixture(scope="session")
def vmic() -> Iterator[VirtualMic]:
    with VirtualMic() as mic:
        yield mic


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Speech and noise clips, made once per run with flite and sox."""
    d = tmp_path_factory.mktemp("media")
    gap = d / "gap.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(gap), "trim", "0", "1.2"], check=True)
    parts = [speak(s, d / f"s{i}.wav") for i, s in enumerate(SENTENCES)]
    speech = d / "speech.wav"
    seq = [str(p) for part in parts for p in (part, gap)]
    subprocess.run(["sox", *seq, str(speech)], check=True)
    long = speak(
        "Please call Stella and ask her to bring these things with her from the store: six spoons of fresh "
        "snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
        d / "long.wav",
    )
    noise = d / "noise.wav"
    # Faint pink noise: the hiss of a quiet room through a cheap microphone.
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", str(noise), "synth", "30", "pinknoise", "vol", "0.03"],
        check=True,
    )
    return {
        "speech": speech,
        "long": long,
        "noise": noise,
        "sentence": parts[2],
    }  # transcribes cleanly: one-sentence checks


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


class Audiod:
    """An ``audiod run`` process with JSON logs collected as they come."""

    def __init__(
        self,
        tmp: Path,
        env: dict[str, str],
        config: str = "",
        extra_env: dict[str, str] | None = None,
        capture: str = "",
        log: str = "json",
    ) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.transcript = tmp / "transcripts.jsonl"
        self.runtime = tmp / "run"
        self.config = tmp / "audiod.toml"
        self.config.write_text(f'[capture]\ndevice = "pulse"\n{capture}[log]\nformat = "{log}"\n{config}')
        self.env = {**env, "XDG_RUNTIME_DIR": str(self.runtime), **(extra_env or {})}
        self.env.pop("RUNTIME_DIRECTORY", None)
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        # A transcript path in the test's config wins over the default one under tmp.
        flags = [] if "[transcript]" in config else ["--transcript", str(self.transcript)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(self.config), *flags],
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("event") == event]

    def wait_for(self, event: str, timeout: float = 60, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(found := self.named(event)) < count:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                raise AssertionError(f"audiod exited {self.proc.returncode}: {''.join(self.raw)[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event!r} within {timeout}s: {''.join(self.raw)[-3000:]}")
            time.sleep(0.05)
        return found

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon", "status", *args], env=self.env, capture_output=True, text=True
        )

    def status_json(self) -> dict[str, Any]:
        out = self.status("--json")
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def records(self) -> list[dict[str, Any]]:
        if not self.transcript.exists():
            return []
        return [json.loads(x) for x in self.transcript.read_text().splitlines()]

    def transcripts(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["type"] == "transcript"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def audiod(vmic: VirtualMic, tmp_path: Path) -> Iterator[Any]:
    """``audiod(config="...")`` starts a daemon on the virtual microphone and waits until it runs."""
    started: list[Audiod] = []

    def start(
        config: str = "", name: str = "a", capture: str = "", log: str = "json", **extra_env: str
    ) -> Audiod:
        # Extra [capture] keys join the section the fixture writes; TOML forbids a second [capture].
        d = Audiod(tmp_path / name, vmic.client_env(), config, extra_env, capture, log)
        started.append(d)
        if log == "json":
            d.wait_for("started")
        else:  # logs go elsewhere: wait on the status file instead
            deadline = time.monotonic() + 60
            while (out := d.status("--json")).returncode != 0 or json.loads(out.stdout)["state"] != "running":
                assert d.proc.poll() is None, f"audiod exited {d.proc.returncode}: {''.join(d.raw)[-2000:]}"
                assert time.monotonic() < deadline, "audiod did not start"
                time.sleep(0.1)
        return d

    yield start
    for d in started:
        d.kill()
