"""From raw observations of one run (``bench.live.Run``) to figures. Plain dicts, so they go into JSON."""

from __future__ import annotations

import re
from typing import Any

import jiwer
import numpy as np

from bench.corpus import Case, Sentence
from bench.live import Line, Run

MATCH_SLACK_S = 0.3  # a sentence belongs to the transcript line whose audio span holds its midpoint, +-this


def normalise(text: str) -> str:
    """The one normalisation for every system: lower case, punctuation (hyphens too) to spaces."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not hyp:
        return 1.0 if ref else 0.0
    return float(jiwer.wer(ref, hyp))


def word_count(text: str) -> int:
    return len(normalise(text).split())


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "n": len(values),
    }


def transcript_lines(run: Run) -> list[Line]:
    # Newer daemons also write {"type": "gap"} records for lost audio: those hold no words.
    return [ln for ln in run.lines if ln.record.get("type", "transcript") == "transcript"]


def _owner(lines: list[Line], mid: float) -> int | None:
    best, best_d = None, float("inf")
    for i, ln in enumerate(lines):
        a, b = float(ln.record["start"]), float(ln.record["end"])
        d = max(a - mid, mid - b, 0.0)
        if d <= MATCH_SLACK_S and d < best_d:
            best, best_d = i, d
    return best


def latency(run: Run, case: Case) -> dict[str, Any]:
    """Final-transcript latency: from the end of each sentence as it entered the microphone to the moment
    its transcript line was seen in the file. Also per line (from the end of its last sentence), split into
    the wait for the segmenter to end the utterance, the model run, and writing."""
    lines = transcript_lines(run)
    owners: dict[int, list[Sentence]] = {}
    missed = 0
    for s in case.sentences:
        mid = run.file_start + (s.start_s + s.end_s) / 2
        i = _owner(lines, mid)
        if i is None:
            missed += 1
        else:
            owners.setdefault(i, []).append(s)
    per_sentence = [
        lines[i].seen_at - (run.file_start + s.end_s) for i, sents in owners.items() for s in sents
    ]
    per_line, segment_wait, model, write, end_offset, start_offset = [], [], [], [], [], []
    for i, sents in owners.items():
        rec, seen = lines[i].record, lines[i].seen_at
        last_end = run.file_start + max(s.end_s for s in sents)
        first_start = run.file_start + min(s.start_s for s in sents)
        infer_s = float(rec.get("inference_ms", 0)) / 1000
        emitted = float(rec.get("emitted_at", seen))
        per_line.append(seen - last_end)
        segment_wait.append(emitted - infer_s - last_end)
        model.append(infer_s)
        write.append(seen - emitted)
        # Cross-checks of the two clocks: audiod's capture times against where the sentences were played.
        end_offset.append(float(rec["end"]) - last_end)
        start_offset.append(float(rec["start"]) - first_start)
    return {
        "sentence": percentiles(per_sentence),
        "sentence_values": per_sentence,
        "line": percentiles(per_line),
        "line_values": per_line,
        "segment_wait_s": _median(segment_wait),
        "model_s": _median(model),
        "write_s": _median(write),
        "audiod_end_minus_played_end_s": _median(end_offset),
        "audiod_start_minus_played_start_s": _median(start_offset),
        "sentences_per_line": len(case.sentences) / max(1, len(owners)),
        "missed_sentences": missed,
        "unmatched_lines": len(lines) - len(owners),
        "play_delay_s": run.file_start - run.play_at,
        "file_match": run.file_match,
    }


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def callback_cost(run: Run) -> dict[str, Any]:
    if not run.callback_ns:
        return {"n": 0}
    a = np.asarray(run.callback_ns, dtype=np.int64)
    us = a[:, 1] / 1000
    gaps_ms = np.diff(a[:, 0]) / 1e6
    return {
        "n": len(a),
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
        "max_interval_ms": float(gaps_ms.max()) if len(gaps_ms) else None,
    }


def figures(run: Run, case: Case, offline: dict[str, Any], idle_cpu_rate: float | None) -> dict[str, Any]:
    """Everything for one case in one repetition. ``idle_cpu_rate``: audiod's CPU seconds per second while
    no speech is played (from the noise case of the same repetition), subtracted to isolate inference."""
    text = " ".join(str(ln.record["text"]) for ln in transcript_lines(run))
    window = run.window[1] - run.window[0]
    st = run.status
    out: dict[str, Any] = {
        "case": case.name,
        "error": run.error,
        "exit_code": run.exit_code,
        "text": text,
        "offline_text": offline["text"],
        # The records as written, with when the benchmark saw each: the raw material of the latency figures.
        "lines": [{**ln.record, "seen_at": round(ln.seen_at, 4)} for ln in run.lines],
        "file_start": run.file_start,
        "words": word_count(text),
        "offline_words": word_count(offline["text"]),
        "start_to_ready_s": run.events.get("started"),
        "model_load_s": run.model_load_s,
        "first_log_s": run.events.get("model_loaded"),
        "first_audio_wait_s": (
            run.events["started"] - run.events["model_loaded"]
            if {"started", "model_loaded"} <= run.events.keys()
            else None
        ),
        "rss_ready_mb": run.memory_ready.get("VmRSS"),
        "rss_end_mb": run.memory_end.get("VmRSS"),
        "rss_peak_mb": run.memory_end.get("VmHWM"),
        "cpu_s": run.cpu_s,
        "cpu_window_s": window,
        "others_cpu_cores": run.others_cpu_s / window if window > 0 else None,
        "bench_cpu_cores": run.bench_cpu_s / window if window > 0 else None,
        "foreign_cpu_cores": (run.others_cpu_s - run.bench_cpu_s) / window if window > 0 else None,
        "steal_cores": run.steal_s / window if window > 0 else None,
        "offline_cpu_s": offline["cpu_s"],
        "offline_wall_s": offline["wall_s"],
        "audio_s": case.duration_s,
        "xruns": st.get("xruns"),
        "drops": (st.get("dropped_chunks") or 0) + (st.get("skipped_chunks") or 0),
        "callback_errors": st.get("callback_errors"),
        "inference_runs": st.get("inference_runs"),
        "discarded_utterances": st.get("discarded_utterances"),
        "total_chunks": st.get("total_chunks"),
        "callback": callback_cost(run),
    }
    if case.is_speech:
        out["reference"] = case.reference
        out["wer"] = wer(case.reference, text)
        out["offline_wer"] = wer(case.reference, offline["text"])
        out["latency"] = latency(run, case)
        if idle_cpu_rate is not None and window > 0:
            out["inference_cpu_s"] = run.cpu_s - idle_cpu_rate * window
    else:
        playing = run.played_at - run.play_at
        out["idle_cpu_pct"] = 100 * run.idle_cpu_s / playing if playing > 0 else None
        out["idle_cpu_rate"] = run.idle_cpu_s / playing if playing > 0 else None
    return out
