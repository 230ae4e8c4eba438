"""Repetitions -> medians -> the tables and the target verdicts."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

import jiwer

from bench.metrics import normalise, percentiles

Rep = dict[str, dict[str, Any]]  # case name -> figures of one repetition


def _med(values: Iterable[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return statistics.median(vs) if vs else None


def _speech(rep: Rep) -> list[dict[str, Any]]:
    return [f for f in rep.values() if "wer" in f]


def _corpus_wer(figs: list[dict[str, Any]], key: str) -> float:
    refs = [normalise(" ".join(_reference(f))) for f in figs]
    hyps = [normalise(f[key]) for f in figs]
    return float(jiwer.wer(refs, hyps))


def _reference(f: dict[str, Any]) -> list[str]:
    return [str(f["reference"])]


def overall(rep: Rep) -> dict[str, Any]:
    """One repetition's figures across cases."""
    speech = _speech(rep)
    noise = rep.get("noise", {})
    lat = [v for f in speech for v in f["latency"]["sentence_values"]]
    line_lat = [v for f in speech for v in f["latency"].get("line_values", [])]
    cb = [f["callback"] for f in rep.values() if f["callback"].get("n")]
    infer = [f.get("inference_cpu_s") for f in speech]
    offline_cpu = sum(f["offline_cpu_s"] for f in speech)
    return {
        "latency": percentiles(lat),
        "line_latency": percentiles(line_lat),
        "wer": _corpus_wer(speech, "text"),
        "offline_wer": _corpus_wer(speech, "offline_text"),
        "cpu_per_audio_s": sum(f["cpu_s"] for f in speech) / sum(f["audio_s"] for f in speech),
        "inference_cpu_per_audio_s": (
            sum(v for v in infer if v is not None) / sum(f["audio_s"] for f in speech)
            if None not in infer
            else None
        ),
        "offline_cpu_per_audio_s": offline_cpu / sum(f["audio_s"] for f in speech),
        "noise_words": noise.get("words"),
        "offline_noise_words": noise.get("offline_words"),
        "idle_cpu_pct": noise.get("idle_cpu_pct"),
        "callback_p50_us": _med(c["p50_us"] for c in cb),
        "callback_p99_us": _med(c["p99_us"] for c in cb),
        "callback_max_us": max((c["max_us"] for c in cb), default=None),
        "callback_max_interval_ms": max((c["max_interval_ms"] or 0 for c in cb), default=None),
        "xruns": sum(f["xruns"] or 0 for f in rep.values()),
        "drops": sum(f["drops"] or 0 for f in rep.values()),
        "callback_errors": sum(f["callback_errors"] or 0 for f in rep.values()),
        "rss_ready_mb": _med(f["rss_ready_mb"] for f in rep.values()),
        "rss_end_mb": _med(f["rss_end_mb"] for f in rep.values()),
        "rss_peak_mb": max((f["rss_peak_mb"] or 0 for f in rep.values()), default=None),
        "start_to_ready_s": _med(f["start_to_ready_s"] for f in rep.values()),
        "model_load_s": _med(f["model_load_s"] for f in rep.values()),
        "first_audio_wait_s": _med(f["first_audio_wait_s"] for f in rep.values()),
        "segment_wait_s": _med(f["latency"]["segment_wait_s"] for f in speech),
        "model_s": _med(f["latency"]["model_s"] for f in speech),
        "write_s": _med(f["latency"]["write_s"] for f in speech),
        "bench_cpu_cores_max": max((f["bench_cpu_cores"] or 0 for f in rep.values()), default=None),
        "foreign_cpu_cores_max": max((f["foreign_cpu_cores"] or 0 for f in rep.values()), default=None),
        "errors": [f"{f['case']}: {f['error']}" for f in rep.values() if f["error"] or f["exit_code"] != 0],
    }


def summarise(reps: list[Rep]) -> dict[str, Any]:
    """Medians over repetitions, per case and overall (max figures: the max over repetitions)."""
    cases: dict[str, dict[str, Any]] = {}
    for name in reps[0]:
        figs = [r[name] for r in reps if name in r]

        def med(get: Callable[[dict[str, Any]], Any], figs: list[dict[str, Any]] = figs) -> float | None:
            return _med(get(f) for f in figs)

        row: dict[str, Any] = {
            "audio_s": figs[0]["audio_s"],
            "cpu_per_audio_s": med(lambda f: f["cpu_s"] / f["audio_s"]),
            "offline_cpu_per_audio_s": med(lambda f: f["offline_cpu_s"] / f["audio_s"]),
            "words": med(lambda f: f["words"]),
            "offline_words": med(lambda f: f["offline_words"]),
            "start_to_ready_s": med(lambda f: f["start_to_ready_s"]),
        }
        if "wer" in figs[0]:
            row |= {
                "latency_p50_s": med(lambda f: f["latency"]["sentence"]["p50"]),
                "latency_p95_s": med(lambda f: f["latency"]["sentence"]["p95"]),
                "latency_max_s": med(lambda f: f["latency"]["sentence"]["max"]),
                "line_latency_p50_s": med(lambda f: f["latency"]["line"]["p50"]),
                "segment_wait_s": med(lambda f: f["latency"]["segment_wait_s"]),
                "model_s": med(lambda f: f["latency"]["model_s"]),
                "write_s": med(lambda f: f["latency"]["write_s"]),
                "sentences_per_line": med(lambda f: f["latency"]["sentences_per_line"]),
                "play_delay_s": med(lambda f: f["latency"]["play_delay_s"]),
                "audiod_end_minus_played_end_s": med(lambda f: f["latency"]["audiod_end_minus_played_end_s"]),
                "wer": med(lambda f: f["wer"]),
                "offline_wer": med(lambda f: f["offline_wer"]),
                "inference_cpu_per_audio_s": med(
                    lambda f: f["inference_cpu_s"] / f["audio_s"] if "inference_cpu_s" in f else None
                ),
                "inference_cpu_ratio": med(
                    lambda f: f["inference_cpu_s"] / f["offline_cpu_s"] if "inference_cpu_s" in f else None
                ),
            }
        else:
            row["idle_cpu_pct"] = med(lambda f: f["idle_cpu_pct"])
        cases[name] = row
    per_rep = [overall(r) for r in reps]
    keys = per_rep[0].keys()
    total: dict[str, Any] = {}
    for k in keys:
        vals = [o[k] for o in per_rep]
        if k in ("latency", "line_latency"):
            total[k] = {q: _med(v[q] for v in vals) for q in ("p50", "p95", "max")}
        elif k == "errors":
            total[k] = [e for v in vals for e in v]
        elif k in ("xruns", "drops", "callback_errors"):
            total[k] = sum(vals)
        elif k.endswith(("max_us", "peak_mb", "interval_ms", "_max")):
            total[k] = max((v for v in vals if v is not None), default=None)
        else:
            total[k] = _med(vals)
    ratios = [
        o["inference_cpu_per_audio_s"] / o["offline_cpu_per_audio_s"]
        for o in per_rep
        if o["inference_cpu_per_audio_s"] is not None
    ]
    total["inference_cpu_ratio"] = _med(ratios)
    total["cpu_ratio"] = _med(o["cpu_per_audio_s"] / o["offline_cpu_per_audio_s"] for o in per_rep)
    return {"cases": cases, "overall": total, "repetitions": len(reps)}


def targets(summary: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(figure, target, measured, passed) for each target of the issue."""
    o, cases = summary["overall"], summary["cases"]
    lat = o["latency"]

    def check(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    rows: list[tuple[str, str, str, bool | None]] = [
        ("final-transcript latency p50", "<= 0.70 s", _s(lat["p50"]), check(lat["p50"], 0.7)),
        ("final-transcript latency p95", "<= 1.00 s", _s(lat["p95"]), check(lat["p95"], 1.0)),
    ]
    for name, c in cases.items():
        if "wer" in c and c["wer"] is not None and c["offline_wer"] is not None:
            diff = 100 * (c["wer"] - c["offline_wer"])
            rows.append((f"WER vs offline, {name}", "<= +0.5 pts", f"{diff:+.1f} pts", diff <= 0.5 + 1e-9))
    rows += [
        ("words on the noise case", "0", _n(o["noise_words"]), check(o["noise_words"], 0)),
        (
            "inference CPU / offline CPU",
            "<= 3x",
            _x(o["inference_cpu_ratio"]),
            check(o["inference_cpu_ratio"], 3.0),
        ),
        ("idle CPU (noise case)", "<= 2 % of a core", _pct(o["idle_cpu_pct"]), check(o["idle_cpu_pct"], 2.0)),
        ("xruns + drops (all runs)", "0", f"{o['xruns']} + {o['drops']}", o["xruns"] + o["drops"] == 0),
        ("callback p99", "<= 200 us", _us(o["callback_p99_us"]), check(o["callback_p99_us"], 200)),
        ("RSS at the end", "<= 400 MB", _mb(o["rss_end_mb"]), check(o["rss_end_mb"], 400)),
        ("start-to-ready", "<= 1.00 s", _s(o["start_to_ready_s"]), check(o["start_to_ready_s"], 1.0)),
    ]
    return rows


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} %"


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} us"


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} MB"


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def tables(summary: dict[str, Any]) -> str:
    """Markdown: per case, then the overall figures against the targets."""
    out = [
        "| case | audio | latency p50 / p95 / max | WER audiod | WER offline | CPU s per audio s: "
        "audiod all / inference | offline | inference / offline | words |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in summary["cases"].items():
        if "wer" in c:
            lat = " / ".join(_f(c[k], ".2f") for k in ("latency_p50_s", "latency_p95_s", "latency_max_s"))
            out.append(
                f"| {name} | {c['audio_s']:.1f} s | {lat} s | {_f(c['wer'], '.1%')} | "
                f"{_f(c['offline_wer'], '.1%')} | {_f(c['cpu_per_audio_s'], '.3f')} / "
                f"{_f(c['inference_cpu_per_audio_s'], '.3f')} | {_f(c['offline_cpu_per_audio_s'], '.3f')} | "
                f"{_x(c['inference_cpu_ratio'])} | {_n(c['words'])} |"
            )
        else:
            out.append(
                f"| {name} | {c['audio_s']:.1f} s | - | - | - | {_f(c['cpu_per_audio_s'], '.3f')} / - | "
                f"{_f(c['offline_cpu_per_audio_s'], '.3f')} | - | {_n(c['words'])} "
                f"(offline {_n(c['offline_words'])}) |"
            )
    o = summary["overall"]
    lat = o["latency"]
    out.append(
        f"| **speech, all** | | {_f(lat['p50'], '.2f')} / {_f(lat['p95'], '.2f')} / "
        f"{_f(lat['max'], '.2f')} s "
        f"| {_f(o['wer'], '.1%')} | {_f(o['offline_wer'], '.1%')} | {_f(o['cpu_per_audio_s'], '.3f')} / "
        f"{_f(o['inference_cpu_per_audio_s'], '.3f')} | {_f(o['offline_cpu_per_audio_s'], '.3f')} | "
        f"{_x(o['inference_cpu_ratio'])} | |"
    )
    out += ["", "| figure | target | measured | |", "|---|---|---|---|"]
    for figure, target, measured, ok in targets(summary):
        mark = "n/a" if ok is None else ("pass" if ok else "**miss**")
        out.append(f"| {figure} | {target} | {measured} | {mark} |")
    out += [
        "",
        "| other figures | |",
        "|---|---|",
        f"| line latency p50 (from the end of a line's last sentence) | {_s(o['line_latency']['p50'])} |",
        f"| callback p50 / p99 / max | {_us(o['callback_p50_us'])} / {_us(o['callback_p99_us'])} / "
        f"{_us(o['callback_max_us'])} |",
        f"| longest interval between callbacks | {_f(o['callback_max_interval_ms'], '.1f')} ms |",
        f"| RSS at ready / at the end / peak | {_mb(o['rss_ready_mb'])} / {_mb(o['rss_end_mb'])} / "
        f"{_mb(o['rss_peak_mb'])} |",
        f"| start-to-ready: model load (stream open meanwhile) / then warm-up and first block (overlapped) | "
        f"{_s(o['model_load_s'])} / {_s(o['first_audio_wait_s'])} |",
        f"| latency split: segmenter wait / model run / write+seen (medians) | {_s(o['segment_wait_s'])} / "
        f"{_s(o['model_s'])} / {_f(None if o['write_s'] is None else 1000 * o['write_s'], '.0f')} ms |",
        f"| audiod CPU, all threads, per audio s / offline's | {_x(o['cpu_ratio'])} |",
        f"| offline words on the noise case | {_n(o['offline_noise_words'])} |",
        f"| CPU during a run (most of any run): the bench's own (PulseAudio, parec, paplay, itself) / "
        f"every other process on the machine | {_f(o['bench_cpu_cores_max'], '.2f')} / "
        f"{_f(o['foreign_cpu_cores_max'], '.2f')} cores |",
    ]
    return "\n".join(out)
