import functools
import threading
import time
from collections.abc import Callable

from daemon._atomic import fast_add, fast_inc, fast_load, fast_store
from daemon._status import Status


def assert_at_least_twice_as_fast(fast: Callable[[], object], wrapper: Callable[[], object]) -> None:
    timings = []
    for f in (fast, wrapper):
        t0 = time.perf_counter()
        for _ in range(20_000):
            f()
        timings.append(time.perf_counter() - t0)
    assert timings[0] < timings[1] / 2, timings


def test_fast_inc_is_one_c_call_that_counts_like_inc_across_threads() -> None:
    st = Status.in_memory()
    try:
        inc = fast_inc(st.total_chunks)
        assert isinstance(inc, functools.partial), "bound to patomic's increment, not the Python wrapper"
        threads = [threading.Thread(target=lambda: [inc() for _ in range(20_000)]) for _ in range(4)]
        for t in threads:
            t.start()
        for _ in range(20_000):
            st.total_chunks.inc()
        for t in threads:
            t.join()
        assert st.snapshot().total_chunks == 100_000, "no increment lost"
        # And it is the point of it: much cheaper than the wrapper.
        assert_at_least_twice_as_fast(inc, st.total_chunks.inc)
    finally:
        st.close()


def test_fast_inc_falls_back_to_inc_for_other_counters() -> None:
    class Plain:
        n = 0

        def inc(self) -> None:
            self.n += 1

    c = Plain()
    fast_inc(c)()
    assert c.n == 1


def test_fast_load_reads_what_the_wrapper_reads_signed_and_unsigned() -> None:
    st = Status.in_memory()
    try:
        cases = [(st.audio_lag_ms, -1234), (st.audio_lag_ms, 2**63 - 1), (st.total_chunks, 2**64 - 1)]
        for counter, value in cases:
            counter.store(value)
            load = fast_load(counter)
            assert not hasattr(load, "__self__"), "bound to patomic's load, not the wrapper's method"
            assert load() == counter.load() == value
        # The snapshot goes through them, and it is the point of it: much cheaper than the wrappers.
        st.total_chunks.store(7)
        assert st.snapshot().total_chunks == 7
        assert_at_least_twice_as_fast(fast_load(st.total_chunks), st.total_chunks.load)
    finally:
        st.close()


def test_fast_load_falls_back_to_load_for_other_counters() -> None:
    class Plain:
        def load(self) -> int:
            return 5

    assert fast_load(Plain())() == 5


def test_fast_store_and_add_write_what_the_wrappers_write_and_lose_no_add_across_threads() -> None:
    st = Status.in_memory()
    try:
        store, add = fast_store(st.audio_lag_ms), fast_add(st.poller_cpu_us)
        assert not hasattr(store, "__self__") and not hasattr(add, "__self__"), "bound, not the wrappers"
        for value in (-1234, 2**63 - 1, 0):
            store(value)
            assert st.audio_lag_ms.load() == value
        fast_store(st.total_chunks)(2**64 - 1)
        assert st.total_chunks.load() == 2**64 - 1
        # Each call has its own scratch integer: threads adding different amounts lose nothing.
        threads = [threading.Thread(target=lambda k=k: [add(k) for _ in range(10_000)]) for k in (1, 2, 3, 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert st.snapshot().poller_cpu_us == 10_000 * (1 + 2 + 3 + 4)
    finally:
        st.close()
