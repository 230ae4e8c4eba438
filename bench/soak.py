"""Soak: audiod on a private virtual microphone for a long time, speech and silence in turns; reports RSS over
time, drops, xruns, stream restarts and transcripts.

    .venv/bin/python bench/soak.py                 # 30 minutes
    .venv/bin/python bench/soak.py --seconds 60 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon._vmic import SENTENCES, VirtualMic, speak

WARM_UP_S = 20.0  # model, VAD and allocator pools settle in the first utterances


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def status(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def soak(seconds: float, sample_s: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="audiod-soak-"))
    wavs = [speak(s, tmp / f"{i}.wav") for i, s in enumerate(SENTENCES)]
    with VirtualMic() as mic:
        env = {**mic.client_env(), "XDG_RUNTIME_DIR": str(tmp / "run")}
        config = tmp / "audiod.toml"
        config.write_text('[capture]\ndevice = "pulse"\n[log]\nformat = "json"\nlevel = "warning"\n')
        with open(tmp / "audiod.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daemon",
                    "run",
                    "--config",
                    str(config),
                    "--transcript",
                    str(tmp / "t.jsonl"),
                ],
                env=env,
                stderr=log,
            )
        try:
            while True:
                try:
                    if status(env)["state"] == "running":
                        break
                except subprocess.CalledProcessError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit(f"audiod exited {proc.returncode}: see {tmp / 'audiod.log'}")
                time.sleep(0.2)
            t0 = time.monotonic()
            samples: list[tuple[float, int]] = []
            next_sample = 0.0
            i = 0
            while (elapsed := time.monotonic() - t0) < seconds:
                mic.play(wavs[i % len(wavs)])  # speech, then as long again of silence
                i += 1
                time.sleep(2.0)
                if elapsed >= next_sample:
                    samples.append((round(elapsed, 1), rss_kb(proc.pid)))
                    next_sample += sample_s
            samples.append((round(time.monotonic() - t0, 1), rss_kb(proc.pid)))
            final = status(env)
        finally:
            proc.terminate()
            proc.wait(60)
    warm = [kb for t, kb in samples if t >= WARM_UP_S] or [samples[-1][1]]
    return {
        "seconds": round(samples[-1][0], 1),
        "utterances_played": i,
        "transcripts": final["transcripts"],
        "dropped_chunks": final["dropped_chunks"],
        "skipped_chunks": final["skipped_chunks"],
        "xruns": final["xruns"],
        "stream_restarts": final["stream_restarts"],
        "rss_kb": samples,
        "rss_after_warm_up_kb": warm[0],
        "rss_end_kb": warm[-1],
        "rss_growth_after_warm_up_kb": warm[-1] - warm[0],
        "exit_code": proc.returncode,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=1800)
    p.add_argument("--sample", type=float, default=30, help="RSS sampling period, s")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    r = soak(args.seconds, args.sample)
    if args.json:
        print(json.dumps(r))
        return
    print(f"soak {r['seconds']} s: {r['utterances_played']} utterances, {r['transcripts']} transcripts")
    counts = ("dropped_chunks", "skipped_chunks", "xruns", "stream_restarts")
    print(" ".join(f"{k} {r[k]}" for k in counts))
    print(
        f"RSS after warm-up {r['rss_after_warm_up_kb']} kB, end {r['rss_end_kb']} kB, growth "
        f"{r['rss_growth_after_warm_up_kb']} kB"
    )
    for t, kb in r["rss_kb"]:
        print(f"  {t:8.1f} s  {kb:8d} kB")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
