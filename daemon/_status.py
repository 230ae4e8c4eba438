"""The pipeline's status block: 64-bit atomic counters in an mmap'ed file, written by all, read by anyone.

Writers (callback, worker, poller) never block: each update is one ``atomics`` operation. Readers take a
``Snapshot``, one load per field, and derive rates from it. Because the block lives in a file in the runtime
directory, ``audiod status`` in another process maps it read-only and sees live values with no socket, no
lock and no cooperation from the daemon. (``multiprocessing.shared_memory`` is not used: before Python 3.13
it unlinks the segment when a reader exits.)

File layout, version ``LAYOUT_VERSION``, little-endian::

    0   8s   magic  b"AUDIODS\\0"
    8   u32  layout version
    12  u32  number of fields
    16  i64  pid of the writer
    24  i64  writer start time, epoch microseconds
    32  u32  number of histograms
    36  u32  buckets per histogram
    40  ...  reserved (zero) up to HEADER_SIZE
    64  8 bytes per field, in ``Snapshot`` field order
    ..  the histogram region (``_histogram``): per histogram, in ``HISTOGRAMS`` order, one u64 per bucket,
        then the u64 sum of observations in microseconds

Beside the block, ``status.json`` holds what does not change while the daemon runs (device, transcript file)
for ``audiod top``; it is written once after start and removed with the block.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol

import atomics

from ._atomic import fast_load
from ._histogram import BUCKETS, HISTOGRAMS, SLOTS, HistogramSet, Latencies

MAGIC = b"AUDIODS\0"
LAYOUT_VERSION = 3
HEADER = struct.Struct("<8sIIqq")
GEOMETRY = struct.Struct("<II")  # right after HEADER: histograms, buckets per histogram
HEADER_SIZE = 64

STATE_NAMES = ("starting", "loading", "running", "stopping")
STARTING, LOADING, RUNNING, STOPPING = range(4)


def _f(doc: str, signed: bool = False) -> Any:
    return field(metadata={"doc": doc, "signed": signed})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable copy of the status block, one load per field."""

    audio_lag_ms: int = _f("now minus capture time of the newest audio the worker consumed, ms", True)
    consumed_until_us: int = _f(
        "capture time of the end of the newest audio the worker consumed, epoch us", True
    )
    inference_time_ms: int = _f("compute time of the last model run, ms")
    inference_audio_ms: int = _f("duration of the audio the last model run covered, ms")
    inference_runs: int = _f("model runs since start")
    total_chunks: int = _f("blocks delivered by the audio callback")
    dropped_chunks: int = _f("blocks dropped because the ring was full (backpressure)")
    skipped_chunks: int = _f("blocks the worker skipped unprocessed to keep its lag under max_lag_s")
    stream_restarts: int = _f("times the input stream was lost and reopened")
    nonfinite_blocks: int = _f("blocks with NaN or infinite samples (zeroed before use)")
    xruns: int = _f("input overflows reported by PortAudio (audio lost before our callback)")
    callback_errors: int = _f("exceptions caught in the audio callback")
    transcripts: int = _f("transcript lines written")
    sink_errors: int = _f("failed attempts to write the transcript file")
    sink_pending: int = _f("transcripts held in memory until the transcript file can be written again")
    discarded_utterances: int = _f("speech segments the model judged to hold no speech")
    drafts_voided: int = _f("early decodes wasted: speech resumed in the pause that started them")
    audio_processed_ms: int = _f("audio the worker has consumed since start, ms")
    ring_capacity: int = _f("ring size, blocks")
    ring_written: int = _f("blocks written into the ring")
    ring_read: int = _f("blocks the worker has taken from the ring")
    last_latency_ms: int = _f("for the last transcript: written time minus end of its audio, ms", True)
    worker_heartbeat_us: int = _f("when the worker last went round its loop, epoch us", True)
    updated_us: int = _f("when the poller last took a snapshot, epoch us", True)
    poller_cpu_us: int = _f("CPU time the poller thread has used, us")
    state: int = _f("0 starting, 1 loading model, 2 running, 3 stopping")

    def drop_rate(self) -> float:
        """Blocks lost (dropped when the ring was full, or skipped to bound the lag) over all blocks the
        callback delivered (0 before the first)."""
        lost = self.dropped_chunks + self.skipped_chunks
        return lost / self.total_chunks if self.total_chunks else 0.0

    def real_time_factor(self) -> float:
        """Last model run's compute time over the duration of the audio it covered; < 1 is faster than real
        time. 0 before the first run."""
        return self.inference_time_ms / self.inference_audio_ms if self.inference_audio_ms else 0.0

    def ring_fill(self) -> int:
        return self.ring_written - self.ring_read

    def state_name(self) -> str:
        return STATE_NAMES[self.state] if 0 <= self.state < len(STATE_NAMES) else f"unknown({self.state})"

    def to_dict(self) -> dict[str, Any]:
        """Every field plus the derived values, for logs and ``audiod status --json``."""
        d: dict[str, Any] = {name: getattr(self, name) for name in FIELDS}  # asdict() deep-copies: 5x slower
        d["drop_rate"] = self.drop_rate()
        d["real_time_factor"] = self.real_time_factor()
        d["ring_fill"] = self.ring_fill()
        d["state"] = self.state_name()
        return d

    def display_line(self) -> str:
        return (
            f"Latency: {self.audio_lag_ms}ms | RTF: {self.real_time_factor():.2f} | "
            f"Drops: {self.drop_rate() * 100:.1f}%"
        )


FIELDS = tuple(f.name for f in fields(Snapshot))
# A snapshot is not one atomic read, but its loads are ordered so that no count is ever seen ahead of the
# count it depends on: each counter here is bumped only after the ones listed after it (the callback counts a
# block before it writes or drops it; the worker reads a slot only after it was written, and counts what it
# processed or skipped only after reading it). Loading the dependents first makes ``written + dropped <=
# total``, ``read <= written`` and ``processed + skipped <= read`` (in blocks) hold in every snapshot.
LOAD_FIRST = ("audio_processed_ms", "skipped_chunks", "ring_read", "ring_written", "dropped_chunks")
_LOAD_ORDER = [FIELDS.index(n) for n in LOAD_FIRST] + [i for i, n in enumerate(FIELDS) if n not in LOAD_FIRST]
_UNORDER = [_LOAD_ORDER.index(i) for i in range(len(FIELDS))]
HIST_OFFSET = HEADER_SIZE + 8 * len(FIELDS)
SIZE = HIST_OFFSET + 8 * SLOTS * len(HISTOGRAMS)
INFO_SUFFIX = ".json"


class Atomic(Protocol):
    def load(self) -> int: ...
    def store(self, desired: int) -> None: ...
    def inc(self) -> None: ...
    def add(self, delta: int) -> None: ...


class _Block:
    """Atomic views over the fields of a mapped block (shared by the writer and the reader)."""

    def __init__(self, buf: mmap.mmap) -> None:
        self._buf = buf
        self._view = memoryview(buf)
        self._contexts: list[Any] = []
        self._atomics: list[Atomic] = []
        for i, f in enumerate(fields(Snapshot)):
            off = HEADER_SIZE + 8 * i
            ctx = atomics.atomicview(
                buffer=self._view[off : off + 8], atype=atomics.INT if f.metadata["signed"] else atomics.UINT
            )
            self._contexts.append(ctx)
            self._atomics.append(ctx.__enter__())  # held for the block's lifetime; released in close()
        slots = []
        for off in range(HIST_OFFSET, SIZE, 8):
            ctx = atomics.atomicview(buffer=self._view[off : off + 8], atype=atomics.UINT)
            self._contexts.append(ctx)
            slots.append(ctx.__enter__())
        self.latency = HistogramSet(slots)
        # Bound loads hold raw addresses: close() must come after every thread that snapshots this block.
        self._loads = [fast_load(self._atomics[i]) for i in _LOAD_ORDER]

    def snapshot(self) -> Snapshot:
        loaded = [load() for load in self._loads]
        return Snapshot(*[loaded[i] for i in _UNORDER])

    def latencies(self) -> Latencies:
        """The histograms, one load per bucket (separate from ``snapshot()``, which the poller takes ten
        times a second and which stays cheap)."""
        return self.latency.snapshot()

    def close(self) -> None:
        self._loads = []  # a snapshot after close fails in Python, not on an unmapped address
        for ctx in self._contexts:
            ctx.__exit__(None, None, None)
        self._contexts.clear()
        self._atomics.clear()
        del self.latency
        self._view.release()
        self._buf.close()


class Status(_Block):
    """The writer side. Each field of ``Snapshot`` is an attribute holding its atomic."""

    audio_lag_ms: Atomic
    consumed_until_us: Atomic
    inference_time_ms: Atomic
    inference_audio_ms: Atomic
    inference_runs: Atomic
    total_chunks: Atomic
    dropped_chunks: Atomic
    skipped_chunks: Atomic
    stream_restarts: Atomic
    nonfinite_blocks: Atomic
    xruns: Atomic
    callback_errors: Atomic
    transcripts: Atomic
    sink_errors: Atomic
    sink_pending: Atomic
    discarded_utterances: Atomic
    drafts_voided: Atomic
    audio_processed_ms: Atomic
    ring_capacity: Atomic
    ring_written: Atomic
    ring_read: Atomic
    last_latency_ms: Atomic
    worker_heartbeat_us: Atomic
    updated_us: Atomic
    poller_cpu_us: Atomic
    state: Atomic

    path: Path | None

    def __init__(self, buf: mmap.mmap, path: Path | None) -> None:
        super().__init__(buf)
        self.path = path
        for name, atomic in zip(FIELDS, self._atomics, strict=True):
            setattr(self, name, atomic)

    @classmethod
    def in_memory(cls) -> Status:
        """A private block (tests, tools): same code, no file."""
        buf = mmap.mmap(-1, SIZE)
        buf[: HEADER.size + GEOMETRY.size] = _header()
        return cls(buf, None)

    def write_info(self, **info: str | int) -> None:
        """Record facts for readers that are not counters (device, transcript file), atomically."""
        if self.path is None:
            return
        path = info_path(self.path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), **info}, f)
        os.replace(tmp, path)

    @classmethod
    def create(cls, path: Path) -> Status:
        """Create the block as ``path`` (mode 0600), replacing any old one atomically, so a reader never
        maps a half-written header."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, _header().ljust(SIZE, b"\0"))
            buf = mmap.mmap(fd, SIZE)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        return cls(buf, path)

    def close(self, unlink: bool = True) -> None:
        """Unmap; on a clean exit also remove the file, so that ``audiod status`` says "not running"."""
        if unlink and self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                # Only our own file: a newer daemon may have replaced it.
                if _read_header(self.path)[3] == os.getpid():
                    self.path.unlink()
                    info_path(self.path).unlink(missing_ok=True)
        super().close()


class StatusFileError(Exception):
    """The status file cannot be read as a live audiod's; ``exit_code`` is what ``audiod status`` returns."""

    exit_code: ClassVar[int] = 4


class NotRunning(StatusFileError):
    exit_code = 3


def _now_us() -> int:
    return time.time_ns() // 1000


def _header() -> bytes:
    header = HEADER.pack(MAGIC, LAYOUT_VERSION, len(FIELDS), os.getpid(), _now_us())
    return header + GEOMETRY.pack(len(HISTOGRAMS), BUCKETS)


def info_path(status_path: Path) -> Path:
    return status_path.with_name(status_path.name + INFO_SUFFIX)


def _read_header(path: Path) -> tuple[bytes, int, int, int, int]:
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise StatusFileError(f"{path}: not an audiod status file (only {len(raw)} bytes)")
    magic, version, nfields, pid, started = HEADER.unpack(raw)
    return magic, version, nfields, pid, started


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


@dataclass(frozen=True, slots=True)
class LiveStatus:
    pid: int
    started_us: int
    snapshot: Snapshot
    latency: Latencies
    info: dict[str, Any]  # what the daemon wrote with ``write_info`` ({} before it did)


def _open(path: Path) -> tuple[int, int, _Block, tuple[int, int]]:
    """Check ``path`` and map it read-only: (pid, start time, block, file identity). Header and mapping come
    from one open file, so a daemon replacing the file in between cannot mix two."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotRunning(f"audiod is not running (no status file at {path})") from None
    except OSError as e:
        raise StatusFileError(f"{path}: cannot read status file: {e.strerror}") from None
    try:
        raw = os.read(fd, HEADER.size + GEOMETRY.size)
        if len(raw) < HEADER.size:
            raise StatusFileError(f"{path}: not an audiod status file (only {len(raw)} bytes)")
        magic, version, nfields, pid, started = HEADER.unpack(raw[: HEADER.size])
        if magic != MAGIC:
            raise StatusFileError(f"{path}: not an audiod status file (bad magic {magic!r})")
        if version != LAYOUT_VERSION or nfields != len(FIELDS):
            raise StatusFileError(
                f"{path}: status layout v{version} with {nfields} fields, this audiod reads "
                f"v{LAYOUT_VERSION} with {len(FIELDS)}: daemon and CLI are different versions"
            )
        if not pid_alive(pid):
            raise NotRunning(f"audiod is not running (stale status file {path} from pid {pid})")
        st = os.fstat(fd)
        if st.st_size < SIZE:
            raise StatusFileError(f"{path}: status file truncated")
        geometry = GEOMETRY.unpack(raw[HEADER.size :])
        if geometry != (len(HISTOGRAMS), BUCKETS):
            raise StatusFileError(
                f"{path}: status file has {geometry[0]} histograms of {geometry[1]} buckets, this audiod "
                f"reads {len(HISTOGRAMS)} of {BUCKETS}: daemon and CLI are different versions"
            )
        buf = mmap.mmap(fd, SIZE, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return pid, started, _Block(buf), (st.st_dev, st.st_ino)


def read(path: Path) -> LiveStatus:
    """Map ``path`` read-only and take one snapshot; raise ``StatusFileError`` saying what is wrong."""
    pid, started, block, _ = _open(path)
    try:
        snap, latency = block.snapshot(), block.latencies()
    finally:
        block.close()
    return LiveStatus(pid=pid, started_us=started, snapshot=snap, latency=latency, info=_read_info(path, pid))


class Reader:
    """Reads the status file again and again (``audiod top``), keeping it mapped in between: setting up the
    atomics of a mapping costs about 10 ms, a read of a mapped block 2 ms. Maps the file again when the
    daemon replaced it, and says "not running" when it removed it or died."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mapped: tuple[int, int, _Block, tuple[int, int]] | None = None

    def read(self) -> LiveStatus:
        if self._mapped is not None:
            pid, _, _, identity = self._mapped
            try:
                st = os.stat(self.path)
                same = (st.st_dev, st.st_ino) == identity and pid_alive(pid)
            except OSError:
                same = False
            if not same:
                self.close()
        if self._mapped is None:
            self._mapped = _open(self.path)
        pid, started, block, _ = self._mapped
        return LiveStatus(
            pid=pid,
            started_us=started,
            snapshot=block.snapshot(),
            latency=block.latencies(),
            info=_read_info(self.path, pid),
        )

    def close(self) -> None:
        if self._mapped is not None:
            self._mapped[2].close()
            self._mapped = None


def _read_info(path: Path, pid: int) -> dict[str, Any]:
    try:
        info = json.loads(info_path(path).read_text())
    except (OSError, ValueError):
        return {}
    # A file left by an earlier daemon (killed before it could remove it) describes another run.
    return info if isinstance(info, dict) and info.get("pid") == pid else {}
