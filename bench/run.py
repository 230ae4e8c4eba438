"""The benchmark's command line: build the corpus, run every case live and offline, repeat, report.

.venv/bin/python -m bench [--quick] [--reps N] [--model M] [--set SECTION.KEY=VALUE] [--json PATH] [--readme]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import corpus, live, metrics, report
from daemon._config import ConfigError, InferenceSettings, Settings, from_mapping
from daemon._vmic import VirtualMic

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
BUSY_CORES = 0.2  # CPU of processes not ours (not audiod, the bench, PulseAudio) above which a run is flagged
TOOLS = ("flite", "pulseaudio", "pactl", "paplay", "parec")


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    versions: dict[str, str | None] = {}
    for pkg in ("faster-whisper", "ctranslate2", "onnxruntime", "numpy", "sounddevice"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git": git,
        "loadavg_at_start": os.getloadavg(),
    }


def offline(cases: list[corpus.Case], model: str | None, settings: InferenceSettings) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.offline", "--model", model or settings.model]
    cmd += ["--compute-type", settings.compute_type, "--beam-size", str(settings.beam_size)]
    cmd += ["--language", settings.language, "--cpu-threads", str(settings.cpu_threads)]
    out = subprocess.run(
        [*cmd, *(str(c.wav) for c in cases)], capture_output=True, text=True, cwd=HERE.parent
    )
    if out.returncode != 0:
        raise RuntimeError(f"offline baseline failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def audiod_config(assignments: list[str]) -> tuple[str, Settings]:
    """The TOML the live runs use: the virtual microphone, JSON logs, and ``--set section.key=value`` (values
    in TOML syntax); with the settings it means, so the offline baseline follows inference.* changes."""
    tables: dict[str, dict[str, str]] = {"capture": {"device": '"pulse"'}, "log": {"format": '"json"'}}
    for assignment in assignments:
        key, eq, value = assignment.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot:
            raise ConfigError(f"--set {assignment!r}: expected section.key=value")
        if (section, name) in (("capture", "device"), ("log", "format")):
            raise ConfigError(f"--set {assignment!r}: the benchmark sets {key} itself")
        tables.setdefault(section, {})[name] = value.strip()
    text = "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in t.items()) for s, t in tables.items())
    try:
        return text, from_mapping(tomllib.loads(text), "--set")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--set: {e} (strings need quotes: --set 'inference.language=\"en\"')") from None


def wait_quiet(limit_s: float) -> None:
    """Wait (at most ``limit_s``) until the machine's CPU use over 2 s is below ``BUSY_CORES``: on a shared
    machine, other people's jobs would show up as audiod's latency."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        busy0, _ = live.machine_busy_s()
        time.sleep(2)
        busy = (live.machine_busy_s()[0] - busy0) / 2
        if busy < BUSY_CORES:
            return
        print(f"  waiting for a quiet machine ({busy:.2f} cores busy)", file=sys.stderr)


def repetition(
    mic: VirtualMic,
    cases: list[corpus.Case],
    work: Path,
    model: str | None,
    config: str,
    settings: InferenceSettings,
    quiet_wait_s: float,
) -> dict[str, Any]:
    """Every case live (the noise case first: its CPU rate is the baseline the others subtract), then the
    offline baseline on the same files, so the ratios come from one sitting."""
    runs = {}
    for case in cases:
        wait_quiet(quiet_wait_s)
        t = time.monotonic()
        runs[case.name] = live.run_case(mic, case, work / case.name, model, config)
        r = runs[case.name]
        note = f" ERROR {r.error}" if r.error else ""
        window = r.window[1] - r.window[0]
        foreign = (r.others_cpu_s - r.bench_cpu_s) / window if window > 0 else 0.0
        if foreign > BUSY_CORES:
            note += f" (other processes used {foreign:.2f} cores: figures may be disturbed)"
        lines = len(metrics.transcript_lines(r))
        print(f"  {case.name:6} {time.monotonic() - t:5.1f} s, {lines} lines{note}", file=sys.stderr)
    base = offline(cases, model, settings)
    by_file = {f["file"]: f for f in base["files"]}
    noise = runs.get("noise")
    idle_rate = noise.idle_cpu_s / (noise.played_at - noise.play_at) if noise and not noise.error else None
    figs = {c.name: metrics.figures(runs[c.name], c, by_file[str(c.wav)], idle_rate) for c in cases}
    return {"figures": figs, "offline": {"load_s": base["load_s"], "peak_rss_mb": base["peak_rss_mb"]}}


def write_readme(text: str) -> None:
    doc = README.read_text()
    a, b = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    README.write_text(doc[:a] + "\n" + text + "\n" + doc[b:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions; figures are medians over them (3)")
    p.add_argument("--quick", action="store_true", help="one repetition (about 2.5 minutes)")
    p.add_argument("--model", help="audiod's --model: 'bundled' (default), a directory or a model name")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="an audiod setting for the live runs, value in TOML (repeatable): --set vad.min_silence_ms=300",
    )
    p.add_argument("--json", type=Path, default=HERE / "results.json", help="where the full results go")
    p.add_argument("--readme", action="store_true", help="write the tables into bench/README.md")
    p.add_argument("--cases", default="noise,clean,noisy,rapid", help="comma-separated subset of cases")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each case, wait up to S seconds for other processes to go quiet (default: don't)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (audio, transcripts)")
    args = p.parse_args(argv)
    reps = 1 if args.quick else args.reps
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"bench: missing {', '.join(missing)} (make setup-demo installs them)", file=sys.stderr)
        return 2

    try:
        config, all_settings = audiod_config(args.set)
    except ConfigError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    settings = all_settings.inference
    wanted = args.cases.split(",")
    if unknown := set(wanted) - {"noise", "clean", "noisy", "rapid"}:
        print(f"bench: --cases: unknown case {sorted(unknown)[0]!r}", file=sys.stderr)
        return 2
    if wanted == ["noise"]:
        print("bench: --cases needs a speech case (clean, noisy or rapid) beside noise", file=sys.stderr)
        return 2
    info = machine()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="audiod-bench-"))
    try:
        cases = [c for c in corpus.build(work / "corpus") if c.name in wanted]
        results = []
        with VirtualMic() as mic:
            for i in range(reps):
                print(f"repetition {i + 1}/{reps}", file=sys.stderr)
                rep = repetition(mic, cases, work / f"rep{i}", args.model, config, settings, args.quiet_wait)
                results.append(rep)
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    summary = report.summarise([r["figures"] for r in results])
    elapsed = time.monotonic() - started
    command = "make bench" + (f' ARGS="{" ".join(argv or sys.argv[1:])}"' if (argv or sys.argv[1:]) else "")
    header = (
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, `{command}`, {reps} repetition(s), "
        f"{elapsed / 60:.1f} min; model {args.model or settings.model}, {settings.compute_type}, "
        f"beam {settings.beam_size}; {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; "
        f"faster-whisper {info['packages']['faster-whisper']}, "
        f"ctranslate2 {info['packages']['ctranslate2']}; "
        f"git {info['git']}. Medians over repetitions."
    )
    table = report.tables(summary)
    print(f"\n{header}\n\n{table}")
    if summary["overall"]["errors"]:
        print("\nerrors: " + "; ".join(summary["overall"]["errors"]), file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": info,
                "command": command,
                "elapsed_s": elapsed,
                "audiod_config": config,
                "settings": {
                    "model": args.model or settings.model,
                    "compute_type": settings.compute_type,
                    "beam_size": settings.beam_size,
                    "language": settings.language,
                    "cpu_threads": settings.cpu_threads,
                },
                "corpus": corpus.describe(cases),
                "summary": summary,
                "targets": [
                    {"figure": f, "target": t, "measured": m, "pass": ok}
                    for f, t, m, ok in report.targets(summary)
                ],
                "repetitions": results,
            },
            indent=1,
        )
    )
    print(f"\nfull results: {args.json}", file=sys.stderr)
    if args.readme:
        write_readme(f"{header}\n\n{table}")
    return 1 if summary["overall"]["errors"] else 0
