import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon import _status
from daemon._status import FIELDS, Snapshot, Status


def test_snapshot_reads_every_field_once_and_derives_rates() -> None:
    st = Status.in_memory()
    try:
        st.total_chunks.add(200)
        st.dropped_chunks.add(5)
        st.inference_time_ms.store(120)
        st.inference_audio_ms.store(2400)
        st.audio_lag_ms.store(-7)  # signed: capture clocks can run a little ahead
        st.ring_written.store(10)
        st.ring_read.store(7)
        snap = st.snapshot()
    finally:
        st.close()
    assert snap.drop_rate() == pytest.approx(0.025)
    assert snap.real_time_factor() == pytest.approx(0.05)
    assert snap.audio_lag_ms == -7
    assert snap.ring_fill() == 3
    assert snap.display_line() == "Latency: -7ms | RTF: 0.05 | Drops: 2.5%"
    d = snap.to_dict()
    assert set(FIELDS) <= set(d) and d["drop_rate"] == pytest.approx(0.025)


def test_derived_rates_are_zero_before_any_data() -> None:
    snap = Snapshot(*[0] * len(FIELDS))
    assert snap.drop_rate() == 0.0 and snap.real_time_factor() == 0.0


def test_every_snapshot_field_is_a_writer_attribute() -> None:
    assert set(FIELDS) == {n for n, t in Status.__annotations__.items() if t == "Atomic"}


def test_snapshot_is_immutable() -> None:
    st = Status.in_memory()
    snap = st.snapshot()
    st.close()
    with pytest.raises(AttributeError):
        snap.total_chunks = 3  # type: ignore[misc]


def test_file_is_private_and_removed_on_clean_close(tmp_path: Path) -> None:
    path = tmp_path / "status"
    st = Status.create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    st.close()
    assert not path.exists()


READER = """
import json, sys
from pathlib import Path
from daemon import _status
live = _status.read(Path(sys.argv[1]))
print(json.dumps(live.snapshot.to_dict()))
"""


def test_another_process_reads_live_values_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "status"
    st = Status.create(path)
    try:
        st.total_chunks.add(41)
        st.audio_lag_ms.store(120)
        out = subprocess.run(
            [sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True
        )
        first = json.loads(out.stdout)
        st.total_chunks.inc()  # the writer keeps going; a second reader sees the new value
        out = subprocess.run(
            [sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True
        )
        second = json.loads(out.stdout)
    finally:
        st.close()
    assert (first["total_chunks"], first["audio_lag_ms"]) == (41, 120)
    assert second["total_chunks"] == 42


def test_missing_file_means_not_running(tmp_path: Path) -> None:
    with pytest.raises(_status.NotRunning, match="not running"):
        _status.read(tmp_path / "status")


def test_stale_file_from_a_dead_pid_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "status"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    st = Status.create(path)
    with open(path, "r+b") as f:  # as if the dead process had written it and crashed
        f.seek(16)
        f.write(dead.pid.to_bytes(8, "little", signed=True))
    try:
        with pytest.raises(_status.NotRunning, match=f"stale status file .* pid {dead.pid}"):
            _status.read(path)
    finally:
        st.close(unlink=False)


def test_foreign_and_other_version_files_are_named(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"x" * 400)
    with pytest.raises(_status.StatusFileError, match="not an audiod status file") as e:
        _status.read(foreign)
    assert e.value.exit_code == 4
    other = tmp_path / "other"
    other.write_bytes(
        _status.HEADER.pack(_status.MAGIC, 99, len(FIELDS), os.getpid(), 0).ljust(_status.SIZE, b"\0")
    )
    with pytest.raises(_status.StatusFileError, match="layout v99"):
        _status.read(other)


def test_create_replaces_an_old_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "status"
    path.write_bytes(b"old junk")
    st = Status.create(path)
    try:
        st.transcripts.inc()
        assert _status.read(path).snapshot.transcripts == 1
        assert time.time_ns() // 1000 - _status.read(path).started_us < 10_000_000
    finally:
        st.close()


WRITER = """
import sys, types
from pathlib import Path
import numpy as np
from daemon._capture import Capture, InputFormat
from daemon._ring import Ring
from daemon._status import Status

st = Status.create(Path(sys.argv[1]))
fmt = InputFormat(0, "fake", 16000, 1, 16)
ring = Ring(8, 16, 1, st.ring_written, st.ring_read)
# The real callback and ring, on a stream that never opens: the test drives the callback itself.
cap = Capture(types.SimpleNamespace(InputStream=lambda **kw: None), fmt, ring, st)
block, when = np.zeros((16, 1), np.float32), types.SimpleNamespace(inputBufferAdcTime=1.0, currentTime=1.0)
print("ready", flush=True)
for i in range(400_000):
    cap._callback(block, 16, when, 0)
    if i % 3 == 0 and (batch := ring.drain(2)) is not None:  # a consumer slower than the producer: drops
        # The worker's bookkeeping order: count what it processed, and what it skipped, after reading it.
        st.audio_processed_ms.add(len(batch.times) - 1)
        st.skipped_chunks.inc()
"""


def test_live_snapshots_never_show_a_count_ahead_of_what_it_depends_on(tmp_path: Path) -> None:
    """Writers in another process race the reader; the load order keeps every snapshot consistent."""
    path = tmp_path / "status"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        reader = _status.Reader(path)
        snaps = []
        while proc.poll() is None and len(snaps) < 1500:
            with contextlib.suppress(_status.NotRunning):
                snaps.append(reader.read().snapshot)
        reader.close()
    finally:
        proc.kill()
        proc.wait()
    moving = [s for s in snaps if s.ring_read > 0]
    assert len(moving) > 500 and moving[-1].dropped_chunks > 0, "the writer ran while we read"
    for s in moving:
        assert s.ring_written + s.dropped_chunks <= s.total_chunks, s
        assert s.ring_read <= s.ring_written, s
        assert s.audio_processed_ms + s.skipped_chunks <= s.ring_read, s
