"""Fault drills, many times over: the microphone unplugged and plugged back (default 20 times, reporting the
time to resume), and kill -9 at random moments (default 100 times, checking the transcript after each).

    .venv/bin/python bench/faults.py [--unplug 20] [--kill 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon._vmic import SENTENCES, VirtualMic, speak


class Daemon:
    def __init__(self, tmp: Path, env: dict[str, str], transcript: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "XDG_RUNTIME_DIR": str(tmp / "run")}
        config = tmp / "audiod.toml"
        config.write_text(
            f'[capture]\ndevice = "pulse"\n[log]\nformat = "json"\n[transcript]\npath = "{transcript}"\n'
        )
        self.log = tmp / "audiod.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run", "--config", str(config)], env=self.env, stderr=log
            )

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"event": "{name}"' in line:
                found.append(json.loads(line))
        return found

    def wait_event(self, name: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events(name)) < count:
            if self.proc.poll() is not None:
                raise SystemExit(f"audiod exited {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise SystemExit(f"no {name} x{count} within {timeout}s; see {self.log}")
            time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "daemon", "status", "--json"], env=self.env, capture_output=True, text=True
        )
        return json.loads(out.stdout) if out.returncode == 0 else {}


def unplug(cycles: int, tmp: Path, wav: Path) -> dict[str, Any]:
    with VirtualMic() as mic:
        d = Daemon(tmp / "unplug", mic.client_env(), tmp / "unplug.jsonl")
        try:
            d.wait_event("started")
            resume = []
            for i in range(1, cycles + 1):
                mic.stop()
                d.wait_event("capture_lost", i, 10)
                time.sleep(1.0)
                mic.start()
                back = time.monotonic()
                d.wait_event("capture_restored", i, 30)
                before = d.status().get("total_chunks", 0)
                while d.status().get("total_chunks", 0) <= before:  # audio flows again
                    time.sleep(0.02)
                resume.append(time.monotonic() - back)
            mic.play(wav)
            d.wait_event("transcript", 1, 20)
            s = d.status()
        finally:
            d.proc.send_signal(signal.SIGTERM)
            d.proc.wait(60)
    return {
        "cycles": cycles,
        "resume_s_median": round(statistics.median(resume), 3),
        "resume_s_max": round(max(resume), 3),
        "stream_restarts": s.get("stream_restarts"),
        "transcribed_after": s.get("transcripts"),
        "exit_code": d.proc.returncode,
    }


def kill9(times: int, tmp: Path, speech: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    transcript = tmp / "kill.jsonl"
    broken = 0
    with VirtualMic() as mic:
        for i in range(times):
            d = Daemon(tmp / f"kill{i}", mic.client_env(), transcript)
            player = None
            try:
                d.wait_event("started")
                player = mic.play(speech, wait=False)
                time.sleep(rng.uniform(0.1, 6.0))
                os.kill(d.proc.pid, signal.SIGKILL)
                d.proc.wait()
            finally:
                if player is not None:
                    player.kill()
                    player.wait()
                if d.proc.poll() is None:
                    d.proc.kill()
                    d.proc.wait()
            # After every kill the file must parse line by line with consecutive seq.
            lines = transcript.read_text().splitlines() if transcript.exists() else []
            try:
                seqs = [json.loads(x)["seq"] for x in lines]
                broken += seqs != list(range(1, len(seqs) + 1))
            except ValueError:
                broken += 1
    return {"kills": times, "lines_written": len(lines), "broken_after_kill": broken}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unplug", type=int, default=20)
    p.add_argument("--kill", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="audiod-faults-"))
    wavs = [speak(s, tmp / f"s{i}.wav") for i, s in enumerate(SENTENCES)]
    # Sentences with a second of silence after each, so utterances end (and get written) between kills.
    padded = []
    for w in wavs:
        padded.append(w.with_suffix(".pad.wav"))
        subprocess.run(["sox", str(w), str(padded[-1]), "pad", "0", "1.0"], check=True)
    speech = tmp / "speech.wav"
    subprocess.run(["sox", *map(str, padded), str(speech)], check=True)
    result = {
        "unplug": unplug(args.unplug, tmp, wavs[2]) if args.unplug else None,
        "kill9": kill9(args.kill, tmp, speech, args.seed) if args.kill else None,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
