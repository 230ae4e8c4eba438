"""``audiod top``: the running daemon, live, from another shell.

On a terminal the screen is redrawn every 100 ms (plain ANSI: home, rewrite each line, clear the rest, in one
write so it does not flicker) until ``q`` or Ctrl-C. Anywhere else (a pipe, a file, a service log) it prints
one ``key=value`` line a second. Both read the status block through one long-lived mapping
(``_status.Reader``) and the last lines of the transcript file the daemon named in its info file.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TextIO

from . import __version__, _exits, _status
from ._histogram import QUANTILES, HistogramSnapshot
from ._paths import STATUS_FILE, find_runtime_dir

REFRESH_S = 0.1
LINE_EVERY_S = 1.0
TRANSCRIPTS_SHOWN = 5
_TAIL_BYTES = 16384  # enough for the last few transcript lines

# Row label -> histogram, in screen order.
LATENCY_ROWS = (
    ("capture -> consumed", "capture"),
    ("utterance end -> emitted", "transcript"),
    ("inference", "inference"),
)


def fmt_seconds(v: float | None) -> str:
    """A duration for people: '-' before the first observation, 4.2ms, 760ms, 1.23s."""
    if v is None:
        return "-"
    if v < 0.01:
        return f"{v * 1000:.1f}ms"
    if v < 1:
        return f"{v * 1000:.0f}ms"
    return f"{v:.2f}s"


def percentiles(h: HistogramSnapshot) -> list[str]:
    return [fmt_seconds(h.quantile(q)) for q in QUANTILES]


def duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def last_transcripts(path: str | None, n: int = TRANSCRIPTS_SHOWN) -> list[dict[str, Any]] | str:
    """The last ``n`` transcript records of the daemon's JSONL file, or why they cannot be shown."""
    if not path:
        return "transcript file not known yet"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
            lines = f.read().splitlines()
    except OSError as e:
        return f"{path}: {e.strerror}"
    records = []
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("type", "transcript") == "transcript":
                records.append(rec)
        if len(records) == n:
            break
    return records[::-1]


def screen(live: _status.LiveStatus | None, problem: str | None, now: float) -> list[str]:
    """The lines of one frame."""
    clock = datetime.fromtimestamp(now).strftime("%H:%M:%S")
    if live is None:
        return [
            f"audiod top {__version__}  {clock}",
            "",
            problem or "",
            "",
            "waiting for the daemon; q quits",
        ]
    s, info = live.snapshot, live.info
    up = duration(now - live.started_us / 1e6)
    rate = f" ({info['samplerate']} Hz)" if "samplerate" in info else ""
    lines = [
        f"audiod top {__version__}  pid {live.pid}, up {up}, state {s.state_name()}  {clock}",
        f"device   {info.get('device', '?')}{rate}",
        (
            f"audio    lag {s.audio_lag_ms}ms | RTF {s.real_time_factor():.2f} | "
            f"drops {s.drop_rate() * 100:.2f}% (ring_full {s.dropped_chunks}, lag_skip {s.skipped_chunks}) | "
            f"xruns {s.xruns} | restarts {s.stream_restarts}"
        ),
        (
            f"counts   chunks {s.total_chunks} | transcripts {s.transcripts} (pending {s.sink_pending}, "
            f"write errors {s.sink_errors}) | discarded {s.discarded_utterances} | "
            f"drafts voided {s.drafts_voided} | ring {s.ring_fill()}/{s.ring_capacity}"
        ),
        "",
        f"{'latency':<26}{'count':>8}{'p50':>9}{'p95':>9}{'p99':>9}",
    ]
    for label, key in LATENCY_ROWS:
        h: HistogramSnapshot = getattr(live.latency, key)
        lines.append(f"  {label:<24}{h.count:>8}" + "".join(f"{p:>9}" for p in percentiles(h)))
    lines += ["", "last transcripts"]
    records = last_transcripts(info.get("transcript"))
    if isinstance(records, str):
        lines.append(f"  ({records})")
    for rec in records if not isinstance(records, str) else []:
        at = datetime.fromtimestamp(rec.get("end", 0)).strftime("%H:%M:%S")
        lines.append(f"  {at} {rec.get('latency_ms', '?'):>6}ms  {rec.get('text', '')}")
    if problem:
        lines += ["", problem]
    lines += ["", "q quits"]
    return lines


def line(live: _status.LiveStatus | None, problem: str | None, now: float) -> str:
    """One ``key=value`` line, for logs."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if live is None:
        return f"{stamp} state=not_running error={json.dumps(problem)}"
    s = live.snapshot
    fields: dict[str, Any] = {
        "state": s.state_name(),
        "pid": live.pid,
        "lag_ms": s.audio_lag_ms,
        "rtf": round(s.real_time_factor(), 3),
        "chunks": s.total_chunks,
        "dropped": s.dropped_chunks,
        "skipped": s.skipped_chunks,
        "drop_rate": round(s.drop_rate(), 6),
        "xruns": s.xruns,
        "restarts": s.stream_restarts,
        "transcripts": s.transcripts,
    }
    for key, h in live.latency.to_dict().items():
        fields[f"{key}_count"] = h["count"]
        for q in QUANTILES:
            name = f"p{round(q * 100)}_ms"
            fields[f"{key}_{name}"] = "-" if h[name] is None else h[name]
    return stamp + " " + " ".join(f"{k}={v}" for k, v in fields.items())


def _readings(reader: _status.Reader) -> tuple[_status.LiveStatus | None, str | None]:
    try:
        return reader.read(), None
    except _status.StatusFileError as e:
        return None, str(e)


@contextlib.contextmanager
def _terminal(out: TextIO) -> Iterator[bool]:
    """Alternate screen, hidden cursor, and keys without Enter; all undone on the way out. Yields whether
    keys can be read."""
    keys = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin) if keys else None
    out.write("\x1b[?1049h\x1b[?25l")
    out.flush()
    try:
        if keys:
            tty.setcbreak(sys.stdin)
        yield keys
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()


def _stop_on(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # leaves through the same clean-up as Ctrl-C


def run(out: TextIO = sys.stdout) -> int:
    path = find_runtime_dir() / STATUS_FILE
    reader = _status.Reader(path)
    try:
        reader.read()  # nothing to watch: say so, as `status` does
    except _status.StatusFileError as e:
        print(f"audiod: {e}", file=sys.stderr)
        return e.exit_code
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on)
    try:
        if out.isatty():
            _live(reader, out)
        else:
            _lines(reader, out)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `audiod top | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    finally:
        reader.close()
    return _exits.OK


def _live(reader: _status.Reader, out: TextIO) -> None:
    with _terminal(out) as keys:
        while True:
            live, problem = _readings(reader)
            width, height = shutil.get_terminal_size()
            rows = [r[:width] for r in screen(live, problem, time.time())][:height]
            out.write("\x1b[H" + "".join(r + "\x1b[K\n" for r in rows[:-1]) + rows[-1] + "\x1b[K\x1b[J")
            out.flush()
            if keys:
                ready, _, _ = select.select([sys.stdin], [], [], REFRESH_S)
                if ready and b"q" in os.read(sys.stdin.fileno(), 32).lower():
                    return
            else:
                time.sleep(REFRESH_S)


def _lines(reader: _status.Reader, out: TextIO) -> None:
    deadline = time.monotonic()
    while True:
        live, problem = _readings(reader)
        out.write(line(live, problem, time.time()) + "\n")
        out.flush()
        deadline += LINE_EVERY_S
        time.sleep(max(0.0, deadline - time.monotonic()))
