import atomics
import numpy as np
import pytest

from daemon._ring import UNCOUNTED, Ring


def make(capacity: int = 4, frames: int = 3, channels: int = 2) -> Ring:
    return Ring(
        capacity,
        frames,
        channels,
        atomics.atomic(width=8, atype=atomics.UINT),
        atomics.atomic(width=8, atype=atomics.UINT),
    )


def block(value: float, frames: int = 3, channels: int = 2) -> np.ndarray:
    return np.full((frames, channels), value, dtype=np.float32)


def test_empty_ring_drains_nothing() -> None:
    assert make().drain() is None


def test_blocks_come_out_in_order_with_their_times() -> None:
    ring = make()
    for i in range(3):
        assert ring.push(block(i), 100.0 + i)
    out = ring.drain()
    assert out is not None
    assert out.frames[:, 0, 0].tolist() == [0, 1, 2]
    assert out.times.tolist() == [100.0, 101.0, 102.0]
    assert ring.drain() is None


def test_wraps_around_many_times() -> None:
    ring = make(capacity=4)
    seen = []
    for i in range(50):
        assert ring.push(block(i), float(i))
        if i % 3 == 2:
            out = ring.drain()
            assert out is not None
            seen += out.times.tolist()
    out = ring.drain()
    assert out is not None
    seen += out.times.tolist()
    assert seen == [float(i) for i in range(50)]


def test_full_ring_drops_new_blocks_and_later_times_stay_exact() -> None:
    w = atomics.atomic(width=8, atype=atomics.UINT)
    r = atomics.atomic(width=8, atype=atomics.UINT)
    ring = Ring(4, 3, 2, w, r)
    pushed = [ring.push(block(i), 10.0 + i) for i in range(6)]
    assert pushed == [True] * 4 + [False] * 2  # the caller counts the two drops
    assert w.load() - r.load() == 4  # ring_fill, as the status block derives it
    out = ring.drain(max_blocks=2)
    assert out is not None and out.times.tolist() == [10.0, 11.0]
    # Space again: the next blocks keep their own capture times, not ones shifted by the drops.
    assert ring.push(block(6), 16.0) and ring.push(block(7), 17.0)
    assert not ring.push(block(8), 18.0)
    out = ring.drain()
    assert out is not None
    assert out.times.tolist() == [12.0, 13.0, 16.0, 17.0]
    assert out.frames[:, 0, 0].tolist() == [2, 3, 6, 7]


def test_drained_copy_is_independent_of_the_slots() -> None:
    ring = make(capacity=2)
    ring.push(block(1), 1.0)
    out = ring.drain()
    ring.push(block(9), 2.0)
    ring.push(block(9), 3.0)
    assert out is not None and out.frames[0, 0, 0] == 1


def test_positions_live_in_the_given_atomics() -> None:
    w = atomics.atomic(width=8, atype=atomics.UINT)
    r = atomics.atomic(width=8, atype=atomics.UINT)
    ring = Ring(3, 2, 1, w, r)
    ring.push(np.zeros((2, 1), np.float32), 0.0)
    ring.push(np.zeros((2, 1), np.float32), 0.0)
    assert (w.load(), r.load()) == (2, 0)
    ring.drain()
    assert (w.load(), r.load()) == (2, 2)


def test_wrong_block_shape_raises_for_the_callback_to_count() -> None:
    with pytest.raises(ValueError):
        make().push(np.zeros((5, 2), np.float32), 0.0)


def test_blocks_after_a_loss_carry_how_many_blocks_are_missing() -> None:
    ring = make(capacity=2)
    ring.push(block(0), 0.0)
    ring.push(block(1), 1.0)
    assert not ring.push(block(2), 2.0)  # dropped
    assert not ring.push(block(3), 3.0)  # dropped
    out = ring.drain()
    assert out is not None and out.lost.tolist() == [0, 0]
    ring.push(block(4), 4.0)
    ring.push(block(5), 5.0, after_loss=True)  # PortAudio reported an overflow: how much is unknown
    out = ring.drain()
    assert out is not None and out.lost.tolist() == [2, UNCOUNTED]
    ring.push(block(6), 6.0)
    ring.push(block(7), 7.0)
    assert not ring.push(block(8), 8.0)  # dropped, then the stream was reopened: the count no longer holds
    ring.mark_loss()
    out = ring.drain()
    assert out is not None and out.lost.tolist() == [0, 0]
    ring.push(block(9), 9.0)
    out = ring.drain()
    assert out is not None and out.lost.tolist() == [UNCOUNTED]


class CountingPosition:
    """An atomic position that counts the operations made on it."""

    def __init__(self) -> None:
        self.atomic = atomics.atomic(width=8, atype=atomics.UINT)
        self.loads = self.stores = 0

    def load(self) -> int:
        self.loads += 1
        return int(self.atomic.load())

    def store(self, desired: int) -> None:
        self.stores += 1
        self.atomic.store(desired)

    def inc(self) -> None:
        self.stores += 1
        self.atomic.inc()


def test_push_costs_one_atomic_operation_until_the_ring_looks_full() -> None:
    write, read = CountingPosition(), CountingPosition()
    ring = Ring(4, 3, 2, write, read)
    write.loads = read.loads = 0
    for i in range(4):
        assert ring.push(block(i), float(i))
    assert (write.loads, write.stores, read.loads) == (0, 4, 0), "a store per push and nothing else"
    assert not ring.push(block(9), 9.0), "full: dropped"
    assert read.loads == 1, "only a ring that looks full reads the consumer's position"
    assert ring.drain(2) is not None
    assert ring.push(block(4), 4.0) and ring.push(block(5), 5.0), "space freed by the consumer is seen"
    assert not ring.push(block(6), 6.0)
    out = ring.drain()
    assert out is not None and out.frames[:, 0, 0].tolist() == [2, 3, 4, 5]
    assert out.lost.tolist() == [0, 0, 1, 0], "the drop before 4 is marked"
