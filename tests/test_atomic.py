import functools
import threading
import time

from daemon._atomic import fast_inc
from daemon._status import Status


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
        timings = []
        for f in (inc, st.total_chunks.inc):
            t0 = time.perf_counter()
            for _ in range(20_000):
                f()
            timings.append(time.perf_counter() - t0)
        assert timings[0] < timings[1] / 2, timings
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
