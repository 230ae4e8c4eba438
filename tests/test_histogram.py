"""Latency histograms: bucket bounds, where observations land, PromQL's quantile, and reading them from
another process through the status file."""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon import _status
from daemon._histogram import BOUNDS_S, BOUNDS_US, BUCKETS, HISTOGRAMS, HistogramSnapshot, quantile
from daemon._status import Status


@pytest.fixture
def status() -> Iterator[Status]:
    st = Status.in_memory()
    yield st
    st.close()


def test_bounds_are_four_per_octave_from_1ms_to_64s() -> None:
    assert len(BOUNDS_US) == 65 and BUCKETS == 66
    assert (BOUNDS_US[0], BOUNDS_US[-1]) == (977, 64_000_000)  # 2**-10 s and 2**6 s
    ratios = [b / a for a, b in itertools.pairwise(BOUNDS_US)]
    assert all(r == pytest.approx(2**0.25, rel=1e-3) for r in ratios)
    # Every fourth bound is a power of two seconds: Prometheus native histogram schema 2 boundaries.
    assert [BOUNDS_S[i] for i in range(0, 65, 4)] == pytest.approx([2.0**k for k in range(-10, 7)], rel=1e-3)


@pytest.mark.parametrize(
    ("value_us", "bucket"),
    [
        (-5, 0),  # a capture clock slightly ahead counts as 0
        (0, 0),
        (977, 0),  # le: a value equal to a bound is in that bound's bucket
        (978, 1),
        (1_000_000, 40),  # 1 s is exactly 2**0
        (1_000_001, 41),
        (64_000_000, 64),
        (64_000_001, 65),  # overflow
        (10**12, 65),
    ],
)
def test_an_observation_is_one_bucket_and_the_sum(status: Status, value_us: int, bucket: int) -> None:
    status.latency.inference.observe_us(value_us)
    h = status.latencies().inference
    assert h.buckets == tuple(int(i == bucket) for i in range(BUCKETS))
    assert h.count == 1 and h.sum_us == max(0, value_us)
    assert status.latencies().capture == status.latencies().transcript == HistogramSnapshot((0,) * BUCKETS, 0)


def test_observe_ages_matches_one_observation_per_value(status: Status) -> None:
    now = time.time()
    rng = np.random.default_rng(1)
    ends = now - np.concatenate([rng.exponential(0.05, 500), [-0.002, 0.0, 40.0, 100.0]])
    status.latency.capture.observe_ages(ends, now)
    for end in ends:
        status.latency.transcript.observe_us(round((now - end) * 1e6))
    lat = status.latencies()
    assert lat.capture == lat.transcript
    assert lat.capture.count == len(ends) and lat.capture.buckets[-1] == 1  # 100 s overflows


def test_quantile_is_promqls_histogram_quantile() -> None:
    bounds = [0.1, 0.2, 0.4]
    # 10 in (0, 0.1], 30 in (0.1, 0.2], 0 in (0.2, 0.4], 10 above.
    cumulative = [10, 40, 40, 50]
    assert quantile(0.1, cumulative, bounds) == pytest.approx(0.05)  # first bucket starts at 0
    assert quantile(0.5, cumulative, bounds) == pytest.approx(0.1 + 0.1 * 15 / 30)
    assert quantile(0.8, cumulative, bounds) == pytest.approx(0.2)  # rank 40 reached at 0.2
    assert quantile(0.99, cumulative, bounds) == 0.4  # in +Inf: the highest finite bound
    assert quantile(0.5, [0, 0, 0, 0], bounds) is None


def test_percentiles_of_a_known_distribution_are_within_a_bucket(status: Status) -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(math.log(0.4), 0.5, 20_000)  # seconds, like transcript latencies
    for v in values:
        status.latency.transcript.observe_us(round(v * 1e6))
    h = status.latencies().transcript
    assert h.count == len(values)
    assert h.sum_us / 1e6 == pytest.approx(values.sum(), rel=1e-6)
    for q in (0.5, 0.95, 0.99):
        true = float(np.quantile(values, q))
        assert h.quantile(q) == pytest.approx(true, rel=0.19), q  # one bucket is 19% wide
    d = h.to_dict()
    assert d["count"] == len(values) and d["p95_ms"] == round(h.quantile(0.95) * 1000, 3)  # type: ignore[operator]


READER = """
import json, sys
from pathlib import Path
from daemon import _status
live = _status.read(Path(sys.argv[1]))
print(json.dumps(live.latency.to_dict()))
"""


def test_another_process_reads_the_histograms(tmp_path: Path) -> None:
    path = tmp_path / "status"
    st = Status.create(path)
    try:
        for ms in (5, 50, 50, 500):
            st.latency.inference.observe_ms(ms)
        st.latency.transcript.observe_ms(900)
        out = subprocess.run(
            [sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True
        )
    finally:
        st.close()
    seen = json.loads(out.stdout)
    assert set(seen) == set(HISTOGRAMS)
    assert seen["inference"]["count"] == 4 and seen["inference"]["sum_ms"] == 605
    assert seen["transcript"]["count"] == 1 and seen["capture"]["count"] == 0
    assert seen["capture"]["p50_ms"] is None
    assert sum(seen["inference"]["buckets"]) == 4


def test_a_block_with_other_histograms_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "status"
    st = Status.create(path)
    try:
        with open(path, "r+b") as f:  # as if written by an audiod with 3 histograms of 40 buckets
            f.seek(_status.HEADER.size)
            f.write(_status.GEOMETRY.pack(3, 40))
        with pytest.raises(
            _status.StatusFileError, match="3 histograms of 40 buckets, this audiod reads 3 of 66"
        ):
            _status.read(path)
    finally:
        st.close()


def test_an_observation_costs_microseconds(status: Status) -> None:
    # Measured on the 2-core CI machine: ~10 us (one bisect, one inc(), one add()); the worker makes a few per
    # 25 ms poll. The bound only catches an accidental slow path (a lock, a syscall, a snapshot).
    h = status.latency.inference
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(2000):
            h.observe_us(123_456)
        runs.append((time.perf_counter() - t0) / 2000)
    cost = statistics.median(runs)
    print(f"\nobservation: {cost * 1e6:.1f} us")
    assert cost < 100e-6
    assert status.latencies().inference.count == 10_000


def test_status_reader_keeps_the_mapping_and_follows_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "status"
    first = Status.create(path)
    reader = _status.Reader(path)
    try:
        first.transcripts.inc()
        assert reader.read().snapshot.transcripts == 1
        first.transcripts.inc()  # live values through the same mapping
        assert reader.read().snapshot.transcripts == 2
        second = Status.create(path)  # a restarted daemon replaces the file
        try:
            second.latency.transcript.observe_ms(300)
            live = reader.read()
            assert live.snapshot.transcripts == 0 and live.latency.transcript.count == 1
        finally:
            second.close()
        with pytest.raises(_status.NotRunning):
            reader.read()
    finally:
        reader.close()
        first.close(unlink=False)


def test_info_is_beside_the_block_and_goes_with_it(tmp_path: Path) -> None:
    path = tmp_path / "status"
    st = Status.create(path)
    try:
        assert _status.read(path).info == {}
        st.write_info(device="3: USB mic", transcript="/x/t.jsonl")
        assert _status.read(path).info == {
            "pid": os.getpid(),
            "device": "3: USB mic",
            "transcript": "/x/t.jsonl",
        }
        assert (tmp_path / "status.json").stat().st_mode & 0o777 == 0o600
        (tmp_path / "status.json").write_text(json.dumps({"pid": 1, "device": "old"}))  # another run's
        assert _status.read(path).info == {}
    finally:
        st.close()
    assert not (tmp_path / "status.json").exists()
