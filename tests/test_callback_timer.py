"""The benchmark's callback timer (daemon/_callback_timer.py): times the body, saves what it recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from daemon._callback_timer import CallbackTimer


def test_times_each_call_and_saves_start_and_duration(tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    path = tmp_path / "cb.npy"
    timer = CallbackTimer(lambda *a: calls.append(a), str(path))
    for i in range(3):
        timer(np.zeros((4, 1), np.float32), 4, None, i)
    timer.save()
    rows = np.load(path)
    assert [c[3] for c in calls] == [0, 1, 2], "the body gets every call's arguments"
    assert rows.shape == (3, 2) and rows.dtype == np.int64
    assert (np.diff(rows[:, 0]) > 0).all() and (rows[:, 1] >= 0).all()
