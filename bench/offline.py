"""The offline baseline: faster-whisper ``transcribe`` on each whole file, in a process of its own.

Same model, compute type, beam size, language and thread setting as audiod; otherwise faster-whisper's
defaults (no VAD filter, 30 s windows, conditioning on previous text), which is what "offline Whisper" means
here. The model is loaded and warmed on one second of silence, as audiod does, before anything is timed.
CPU time is ``time.process_time()`` around ``transcribe`` and the consumption of its segments: user +
system time of every thread of this process, the same quantity the live runs read from /proc/PID/stat.

    python -m bench.offline --model bundled --compute-type int8 --beam-size 1 --language en FILE...

prints one JSON object: the results per file and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import RATE, read_wav


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.offline")
    p.add_argument("--model", default="bundled")
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--language", default="en")
    p.add_argument("--cpu-threads", type=int, default=0)
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)

    from faster_whisper import WhisperModel

    from daemon._inference import model_path

    t0 = time.perf_counter()
    model: Any = WhisperModel(
        model_path(args.model), device="cpu", compute_type=args.compute_type, cpu_threads=args.cpu_threads
    )

    def transcribe(audio: np.ndarray[Any, np.dtype[np.float32]]) -> str:
        segments, _info = model.transcribe(audio, language=args.language or None, beam_size=args.beam_size)
        return " ".join(t for seg in segments if (t := seg.text.strip()))

    transcribe(np.zeros(RATE, dtype=np.float32))
    load_s = time.perf_counter() - t0
    results = []
    for f in args.files:
        audio = read_wav(f)
        c0, w0 = time.process_time(), time.perf_counter()
        text = transcribe(audio)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        results.append(
            {"file": str(f), "audio_s": len(audio) / RATE, "text": text, "cpu_s": cpu, "wall_s": wall}
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump({"load_s": load_s, "peak_rss_mb": peak_mb, "files": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
