"""A bounded, preallocated single-producer/single-consumer ring of fixed-size audio blocks.

The producer is the PortAudio callback: ``push`` copies one block into a preallocated slot and publishes it
by advancing the write position, with no allocation, no lock and no system call. The consumer is the
inference worker: ``drain`` takes every published block at once, so the cost of the atomics (a few
microseconds each) is paid per drain, not per block.

Each slot carries the capture time of its first frame, and how many blocks are missing just before it: the
number this ring dropped, or UNCOUNTED after an overflow PortAudio reported or a reopened stream. A block that
finds the ring full is dropped whole and the caller counts it; later blocks keep their own capture times, so a
drop never skews the lag clock, and the consumer learns of the loss exactly rather than guessing it from
capture times, which hosts misreport by up to half a second (see the worker's gap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ._atomic import fast_inc

UNCOUNTED = -1  # lost[i]: audio is missing before block i, but how much is unknown


class Counter(Protocol):
    """What the ring needs of an atomic 64-bit position (an ``atomics`` view satisfies it)."""

    def load(self) -> int: ...
    def store(self, desired: int) -> None: ...
    def inc(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Drained:
    """Blocks taken from the ring, oldest first: ``frames[i]`` was captured at ``times[i]`` (epoch s)."""

    frames: npt.NDArray[np.float32]  # shape (blocks, block_frames, channels)
    times: npt.NDArray[np.float64]  # shape (blocks,)
    lost: npt.NDArray[np.int32]  # shape (blocks,): blocks missing right before this one, or UNCOUNTED

    def __len__(self) -> int:
        return len(self.times)


class Ring:
    def __init__(
        self, capacity: int, block_frames: int, channels: int, write_pos: Counter, read_pos: Counter
    ) -> None:
        if capacity < 1 or block_frames < 1 or channels < 1:
            raise ValueError("ring capacity, block size and channels must be positive")
        self.capacity = capacity
        self.block_frames = block_frames
        self.channels = channels
        self._data = np.zeros((capacity, block_frames, channels), dtype=np.float32)
        self._times = np.zeros(capacity, dtype=np.float64)
        self._lost = np.zeros(capacity, dtype=np.int32)
        self._dropped = 0  # producer: blocks lost since the last one pushed (or UNCOUNTED)
        # Positions count blocks since start and never wrap (2**64 blocks is ~10**10 years at 20 ms).
        self._write_pos = write_pos
        self._read_pos = read_pos
        self._w = write_pos.load()  # producer's private copy: saves one atomic load per push
        # Only the producer writes the position, so an increment publishes exactly like a store of w + 1,
        # and ``fast_inc`` makes it one C call.
        self._publish = fast_inc(write_pos)
        # The producer's last view of the read position. Space it saw free stays free (only the producer
        # fills it), so it loads the real position only when this view says the ring is full: one atomic
        # operation per push instead of two.
        self._r_seen = read_pos.load()
        self._r = read_pos.load()  # consumer's private copy

    # -- producer (PortAudio callback thread) --------------------------------------------------------------
    def push(self, block: npt.NDArray[Any], capture_time: float, after_loss: bool = False) -> bool:
        """Copy ``block`` (block_frames x channels) into the ring; False when full (the block is dropped).

        ``after_loss``: audio was lost before this block upstream (a PortAudio overflow)."""
        w = self._w
        if w - self._r_seen >= self.capacity:
            self._r_seen = self._read_pos.load()
            if w - self._r_seen >= self.capacity:
                if self._dropped >= 0:
                    self._dropped += 1
                return False
        slot = w % self.capacity
        np.copyto(self._data[slot], block)
        self._times[slot] = capture_time
        self._lost[slot] = UNCOUNTED if after_loss else self._dropped
        self._dropped = 0
        self._w = w + 1
        # The increment publishes the slot: it is sequentially consistent (as every atomics operation), so the
        # consumer that sees the new position also sees the copied samples and the time.
        self._publish()
        return True

    def mark_loss(self) -> None:
        """Audio was lost upstream (the stream was reopened): the next block pushed starts a new run.
        Producer side: call only while no callback is running."""
        self._dropped = UNCOUNTED

    # -- consumer (inference worker thread) ----------------------------------------------------------------
    def drain(self, max_blocks: int | None = None) -> Drained | None:
        """Take the published blocks (copied out, oldest first); None when the ring is empty."""
        available = self._write_pos.load() - self._r
        if available <= 0:
            return None
        n = available if max_blocks is None else min(available, max_blocks)
        start = self._r % self.capacity
        idx = (
            (np.arange(start, start + n) % self.capacity)
            if start + n > self.capacity
            else slice(start, start + n)
        )
        drained = Drained(
            frames=self._data[idx].copy(), times=self._times[idx].copy(), lost=self._lost[idx].copy()
        )
        self._r += n
        self._read_pos.store(self._r)  # frees the slots only after the copy above
        return drained
