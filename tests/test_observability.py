"""One live run, four views: ``audiod status --json``, a Prometheus scrape, the ``audiod top`` screen (in
tmux) and journal queries by MESSAGE_ID must show the same numbers.

The daemon logs to a real journald, serves /metrics on a free loopback port, is made to drop audio (its
worker stalls behind a two-second ring) and transcribes two sentences. Once it is idle, the counters that no
longer move (transcripts, drops, xruns, restarts, the transcript and inference histograms) must agree
exactly; the ones that keep moving (blocks arrive 20 a second) must lie between two status readings taken
before and after the other views.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon._events import MESSAGE_IDS
from daemon._histogram import BOUNDS_S, HistogramSnapshot, quantile
from daemon._top import LATENCY_ROWS, percentiles
from daemon._vmic import SENTENCES, VirtualMic

from ._tmux import Tmux
from .conftest import wer
from .test_journal import journald  # noqa: F401 - the fixture, shared

pytestmark = pytest.mark.e2e

BLOCK_S = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def journal(*matches: str) -> list[dict[str, Any]]:
    subprocess.run(["journalctl", "--sync"], capture_output=True)
    out = subprocess.run(
        ["journalctl", "--no-pager", "--all", "-o", "json", *matches], capture_output=True, text=True
    )
    return [json.loads(x) for x in out.stdout.splitlines()]


def journal_until(count: int, *matches: str, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(found := journal(*matches)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} entries for {matches}"
        time.sleep(0.2)
    return found


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def histogram(status_json: dict[str, Any], key: str) -> HistogramSnapshot:
    h = status_json["latency"][key]
    return HistogramSnapshot(tuple(h["buckets"]), round(h["sum_ms"] * 1000))


def bucketed(values_ms: list[int]) -> list[int]:
    """The histogram buckets of these observations, as the daemon fills them."""
    counts = [0] * (len(BOUNDS_S) + 1)
    for v in values_ms:
        counts[next((i for i, b in enumerate(BOUNDS_S) if v / 1000 <= b), len(BOUNDS_S))] += 1
    return counts


def test_status_scrape_top_and_journal_agree(
    journald: str,  # noqa: F811
    audiod: Any,
    vmic: VirtualMic,
    media: dict[str, Path],
    tmp_path: Path,
) -> None:
    port, hang = free_port(), tmp_path / "hang"
    d = audiod(
        f"[ring]\ncapacity_s = 2.0\n[metrics.prometheus]\nenabled = true\nport = {port}\n",
        name="obs",
        log="journal",
        AUDIOD_TEST_HANG_WORKER=str(hang),
    )
    pid = d.proc.pid
    tmux = Tmux(tmp_path / "tmux", width=140)
    try:
        tmux.start(f"{sys.executable} -m daemon top", d.env)
        _run(d, tmux, port, pid, hang, vmic, media)
    finally:
        tmux.kill()
    assert d.stop() == 0


def _run(
    d: Any, tmux: Tmux, port: int, pid: int, hang: Path, vmic: VirtualMic, media: dict[str, Path]
) -> None:
    # The worker stalls for longer than the ring holds: blocks are dropped, then the stream has a gap.
    # (The ring has room for a slow model run, so the sentences themselves lose nothing.)
    hang.touch()
    time.sleep(3.5)
    hang.unlink()
    for _ in range(2):
        vmic.play(media["sentence"])
        time.sleep(0.3)
    deadline = time.monotonic() + 30
    while (s := d.status_json())["transcripts"] < 2:
        assert time.monotonic() < deadline, s
        time.sleep(0.2)
    # Idle now, only the block counters move; read every view between two status readings, again if a
    # late model run changed a stable value in between.
    stable = ("transcripts", "inference_runs", "dropped_chunks", "skipped_chunks", "xruns", "stream_restarts")
    for _ in range(5):
        time.sleep(1.5)
        before = d.status_json()
        metrics = scrape(port)
        screen = tmux.wait_for(rf"transcripts {before['transcripts']} \(pending")
        after = d.status_json()
        if all(before[k] == after[k] for k in stable) and before["latency"] == {
            **after["latency"],
            "capture": before["latency"]["capture"],
        }:
            break
    print(f"\n{screen}")
    for key in stable:
        assert before[key] == after[key], key
    for key in ("transcript", "inference"):
        assert before["latency"][key] == after["latency"][key], key
    s = after
    assert s["transcripts"] >= 2 and s["dropped_chunks"] >= 20
    assert s["latency"]["transcript"]["count"] == s["transcripts"]
    assert s["latency"]["inference"]["count"] == s["inference_runs"]
    assert s["info"]["device"].endswith(": pulse") and s["info"]["transcript"] == str(d.transcript)

    # -- the Prometheus scrape
    def m(name: str, **labels: str) -> float:
        return metrics[(name, tuple(sorted(labels.items())))]

    assert m("audiod_transcripts_total") == s["transcripts"]
    assert m("audiod_audio_chunks_dropped_total", reason="ring_full") == s["dropped_chunks"]
    assert m("audiod_audio_chunks_dropped_total", reason="lag_skip") == s["skipped_chunks"]
    assert m("audiod_xruns_total") == s["xruns"]
    assert m("audiod_stream_restarts_total") == s["stream_restarts"]
    assert m("audiod_real_time_factor") == pytest.approx(s["real_time_factor"])
    assert before["total_chunks"] <= m("audiod_audio_chunks_total") <= after["total_chunks"]
    assert m("audiod_state", state="running") == 1
    for key, name in (
        ("transcript", "audiod_transcript_latency_seconds"),
        ("inference", "audiod_inference_duration_seconds"),
    ):
        h = histogram(s, key)
        cumulative = [m(f"{name}_bucket", le=repr(b)) for b in BOUNDS_S] + [m(f"{name}_bucket", le="+Inf")]
        assert cumulative == h.cumulative(), key
        assert m(f"{name}_count") == h.count
        assert m(f"{name}_sum") == pytest.approx(s["latency"][key]["sum_ms"] / 1000, abs=1e-6)
        for q in (0.5, 0.95, 0.99):  # PromQL's histogram_quantile() over the scrape = what status says
            assert (
                round(quantile(q, cumulative, BOUNDS_S) * 1000, 3)
                == s["latency"][key][f"p{round(q * 100)}_ms"]
            )
    capture_count = m("audiod_capture_latency_seconds_count")
    assert before["latency"]["capture"]["count"] <= capture_count <= after["latency"]["capture"]["count"]

    # -- the top screen
    def on_screen(pattern: str) -> tuple[int, ...]:
        found = re.search(pattern, screen)
        assert found, pattern
        return tuple(int(g) for g in found.groups())

    assert on_screen(r"ring_full (\d+), lag_skip (\d+)\) \| xruns (\d+) \| restarts (\d+)") == (
        s["dropped_chunks"],
        s["skipped_chunks"],
        s["xruns"],
        s["stream_restarts"],
    )
    (chunks,) = on_screen(r"chunks (\d+) \|")
    assert before["total_chunks"] - 2 <= chunks <= after["total_chunks"]  # the frame is <= 100 ms old
    assert "state running" in screen and f"pid {s['pid']}" in screen
    for label, key in LATENCY_ROWS:
        if key == "capture":
            continue  # moving: its count is checked between the readings below
        h = histogram(s, key)
        assert f"  {label:<24}{h.count:>8}" + "".join(f"{p:>9}" for p in percentiles(h)) in screen, label
    (capture_on_screen,) = on_screen(r"capture -> consumed +(\d+)")
    assert (
        before["latency"]["capture"]["count"] - 2 <= capture_on_screen <= after["latency"]["capture"]["count"]
    )
    texts = [r["text"] for r in d.transcripts()]
    assert len(texts) == s["transcripts"] and all(t in screen for t in texts[-5:])
    assert wer(SENTENCES[2], texts[-1]) <= 0.3

    # -- the journal, through the queries the README documents
    transcripts = journal_until(s["transcripts"], f"MESSAGE_ID={MESSAGE_IDS['transcript']}", f"_PID={pid}")
    assert [e["TEXT"] for e in transcripts] == texts
    latencies = [int(e["LATENCY_MS"]) for e in transcripts]
    assert bucketed(latencies) == s["latency"]["transcript"]["buckets"]
    inference = bucketed([int(e["INFERENCE_MS"]) for e in transcripts])
    if s["discarded_utterances"] == 0:
        assert inference == s["latency"]["inference"]["buckets"]
    else:  # runs that found no speech are logged at debug level only
        assert all(a <= b for a, b in zip(inference, s["latency"]["inference"]["buckets"], strict=True))
    drops = journal_until(1, f"MESSAGE_ID={MESSAGE_IDS['drop']}", f"_PID={pid}")
    assert {e["REASON"] for e in drops} == {"ring_full"}
    assert sum(int(e["COUNT"]) for e in drops) == int(drops[-1]["DROPPED_CHUNKS"]) == s["dropped_chunks"]
    assert all(e["PRIORITY"] == "4" for e in drops)
    gaps = journal_until(1, f"MESSAGE_ID={MESSAGE_IDS['gap']}", f"_PID={pid}")
    lost = sum(float(g["SECONDS"]) for g in gaps)
    counted = (s["dropped_chunks"] + s["skipped_chunks"]) * BLOCK_S
    if s["xruns"] == s["stream_restarts"] == 0:  # then every lost block was counted: the gaps are exact
        assert lost == pytest.approx(counted, abs=0.002 * len(gaps))
    else:
        assert lost > counted
    xruns = journal(f"MESSAGE_ID={MESSAGE_IDS['xrun']}", f"_PID={pid}")
    assert sum(int(e["COUNT"]) for e in xruns) == s["xruns"]
    restored = journal(f"MESSAGE_ID={MESSAGE_IDS['capture_restored']}", f"_PID={pid}")
    assert len(restored) == s["stream_restarts"]
    (started,) = journal(f"MESSAGE_ID={MESSAGE_IDS['started']}", f"_PID={pid}")
    assert started["DEVICE"] == s["info"]["device"]
    # The 100 ms snapshot the poller logged just before the last status reading: the same tick.
    (tick,) = journal(f"_PID={pid}", "EVENT=metrics", f"UPDATED_US={after['updated_us']}")
    assert int(tick["TRANSCRIPTS"]) == s["transcripts"] and int(tick["DROPPED_CHUNKS"]) == s["dropped_chunks"]
    assert int(tick["XRUNS"]) == s["xruns"] and int(tick["SKIPPED_CHUNKS"]) == s["skipped_chunks"]
    assert after["total_chunks"] - 3 <= int(tick["TOTAL_CHUNKS"]) <= after["total_chunks"]
