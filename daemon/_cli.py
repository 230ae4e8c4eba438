"""The ``audiod`` command. A failure the user can cause ends in one line on stderr and its own exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, _config, _exits, _status
from ._histogram import BOUNDS_US, HISTOGRAMS
from ._paths import STATUS_FILE, find_runtime_dir
from ._top import percentiles


def _fail(message: str, code: int) -> int:
    print(f"audiod: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="audiod", description="Real-time microphone transcription daemon.")
    p.add_argument("--version", action="version", version=f"audiod {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_opts = argparse.ArgumentParser(add_help=False)
    run_opts.add_argument(
        "--config",
        type=Path,
        help="TOML config (default: ~/.config/audiod/audiod.toml, "
        "then /etc/audiod/audiod.toml, else built-in defaults)",
    )
    run_opts.add_argument("--device", help="input device index or name substring (see `audiod devices`)")
    run_opts.add_argument(
        "--model", help="'bundled', a CTranslate2 model directory, or a faster-whisper model name"
    )
    run_opts.add_argument("--transcript", help="JSONL transcript file")

    help_run = "capture and transcribe in the foreground until Ctrl-C / SIGTERM"
    sub.add_parser("run", parents=[run_opts], help=help_run)
    help_start = "start the daemon (through systemctl if a unit is installed, else detached)"
    sub.add_parser("start", parents=[run_opts], help=help_start)
    sub.add_parser("stop", help="stop the daemon: it transcribes what is buffered, then exits")
    sub.add_parser("restart", parents=[run_opts], help="stop, then start")
    unit = sub.add_parser("install-unit", help="install the systemd unit for this installation")
    unit.add_argument("--user", action="store_true", help="the user unit (desktop sessions)")

    demo = sub.add_parser(
        "demo", help="speak sample sentences into a private virtual microphone, transcribe them"
    )
    demo.add_argument("--config", type=Path, help="TOML config (capture.device is replaced)")
    demo.add_argument("--transcript", help="JSONL transcript file (default: a temporary file)")

    sub.add_parser("devices", help="list input devices")

    st = sub.add_parser("status", help="show the running daemon's live metrics")
    st.add_argument("--json", action="store_true", help="every field as one JSON object")
    sub.add_parser("top", help="live view of the running daemon (a line a second when not on a terminal)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "demo":
            return _demo(args)
        if args.command in ("start", "stop", "restart", "install-unit"):
            return _lifecycle(args)
        if args.command == "devices":
            return _devices()
        if args.command == "top":
            from . import _top

            return _top.run()
        return _show_status(args.json)
    except KeyboardInterrupt:
        return 130


def _settings(args: argparse.Namespace, **overrides: str | None) -> _config.Settings:
    settings = _config.load(args.config or _config.default_config_path())
    return _config.override(settings, overrides)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(
            args, capture__device=args.device, inference__model=args.model, transcript__path=args.transcript
        )
    except _config.ConfigError as e:
        return _fail(str(e), _exits.CONFIG)
    return _run_daemon(settings)


def _run_daemon(settings: _config.Settings, on_ready: Callable[[], None] | None = None) -> int:
    from . import _daemon, _logging
    from ._capture import DeviceError, PortAudioMissing
    from ._inference import ModelError
    from ._paths import AlreadyRunning
    from ._prometheus import ExporterError
    from ._sinks import SinkError

    _logging.configure(settings.log)
    try:
        return _daemon.run(settings, on_ready=on_ready)
    except PortAudioMissing as e:
        return _fail(str(e), _exits.NO_PORTAUDIO)
    except DeviceError as e:
        return _fail(str(e), _exits.NO_DEVICE)
    except ModelError as e:
        return _fail(str(e), _exits.MODEL_FAILED)
    except (SinkError, PermissionError) as e:
        return _fail(str(e), _exits.CANT_CREATE)
    except AlreadyRunning as e:
        return _fail(str(e), _exits.ALREADY_RUNNING)
    except ExporterError as e:
        return _fail(str(e), _exits.CONFIG)


def _demo(args: argparse.Namespace) -> int:
    """The whole pipeline with no microphone: flite speaks into a private PulseAudio null sink."""
    from ._vmic import SENTENCES, ToolMissing, VirtualMic, speak

    with tempfile.TemporaryDirectory(prefix="audiod-demo-") as tmp:
        transcript = args.transcript or str(Path(tmp) / "transcripts.jsonl")
        try:
            settings = _settings(args, capture__device="pulse", transcript__path=transcript)
            # One metrics line a second keeps the demo readable; the daemon's default is ten.
            settings = _config.override(settings, {"poller__interval_ms": 1000}, "demo")
        except _config.ConfigError as e:
            return _fail(str(e), _exits.CONFIG)
        try:
            wavs = [speak(text, Path(tmp) / f"{i}.wav") for i, text in enumerate(SENTENCES)]
            mic = VirtualMic().__enter__()
        except ToolMissing as e:
            return _fail(str(e), _exits.NO_DEVICE)
        try:
            os.environ.update(mic.env)  # before PortAudio starts, so ALSA's pulse device finds our server

            def speak_then_stop() -> None:
                for wav in wavs:
                    mic.play(wav)
                    time.sleep(0.8)
                time.sleep(1.0)
                os.kill(os.getpid(), signal.SIGINT)  # the same clean stop as Ctrl-C

            def on_ready() -> None:
                threading.Thread(target=speak_then_stop, daemon=True).start()

            code = _run_daemon(settings, on_ready)
        finally:
            mic.__exit__(None, None, None)
        print("\nSpoken:", *SENTENCES, sep="\n  ")
        print("Transcribed:")
        with contextlib.suppress(FileNotFoundError), open(transcript) as f:
            for line in f:
                rec = json.loads(line)
                print(f"  [{rec['seq']}] {rec['text']}  (latency {rec['latency_ms']} ms)")
        return code


def _lifecycle(args: argparse.Namespace) -> int:
    from . import _service

    if args.command == "install-unit":
        return _service.install_unit(args.user)
    if args.command == "stop":
        return _service.stop()
    run_args = [
        arg
        for flag, value in (
            ("--config", args.config),
            ("--device", args.device),
            ("--model", args.model),
            ("--transcript", args.transcript),
        )
        if value is not None
        for arg in (flag, str(Path(value).resolve()) if flag in ("--config", "--transcript") else value)
    ]
    if args.command == "start":
        return _service.start(run_args)
    return _service.restart(run_args)


def _devices() -> int:
    from ._capture import PortAudioMissing, input_devices, portaudio

    try:
        sd = portaudio()
    except PortAudioMissing as e:
        return _fail(str(e), _exits.NO_PORTAUDIO)
    default = sd.default.device[0]
    devs = input_devices(sd)
    if not devs:
        return _fail("no input devices found", _exits.NO_DEVICE)
    print(f"{'':2}{'index':>5}  {'channels':>8}  {'rate':>6}  name")
    for d in devs:
        mark = "*" if d["index"] == default else " "
        rate = int(d["default_samplerate"])
        print(f"{mark:2}{d['index']:>5}  {d['max_input_channels']:>8}  {rate:>6}  {d['name']}")
    return _exits.OK


STALE_AFTER_S = 5.0  # the poller writes ``updated_us`` ten times a second; seconds without it mean a hang


def _show_status(as_json: bool) -> int:
    path = find_runtime_dir() / STATUS_FILE
    try:
        live = _status.read(path)
    except _status.StatusFileError as e:
        return _fail(str(e), e.exit_code)
    snap = live.snapshot
    now_us = time.time_ns() // 1000
    age_s = (now_us - snap.updated_us) / 1e6 if snap.updated_us else None
    uptime_s = (now_us - live.started_us) / 1e6
    if as_json:
        out = {"pid": live.pid, "uptime_s": round(uptime_s, 3), "updated_age_s": age_s, **snap.to_dict()}
        out |= {"info": live.info, "latency": live.latency.to_dict(), "latency_bounds_us": BOUNDS_US}
        print(json.dumps(out))
    else:
        print(f"audiod running, pid {live.pid}, up {_duration(uptime_s)}, state {snap.state_name()}")
        print(snap.display_line())
        print(
            f"chunks {snap.total_chunks} (dropped {snap.dropped_chunks}, xruns {snap.xruns}, "
            f"callback errors {snap.callback_errors}) | ring {snap.ring_fill()}/{snap.ring_capacity} | "
            f"transcripts {snap.transcripts} (write errors {snap.sink_errors}) | "
            f"inference {snap.inference_time_ms}ms for {snap.inference_audio_ms}ms of audio"
        )
        quantiles = (f"{h} {'/'.join(percentiles(getattr(live.latency, h)))}" for h in HISTOGRAMS)
        print("latency p50/p95/p99: " + " | ".join(quantiles))
    if age_s is not None and age_s > STALE_AFTER_S:
        return _fail(
            f"pid {live.pid} has not updated its status for {age_s:.0f}s: hung?", _exits.STATUS_UNKNOWN
        )
    return _exits.OK


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
