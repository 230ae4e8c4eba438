import json
import os
from pathlib import Path

import pytest

from daemon._sinks import JsonlSink, SinkError


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_lines_are_whole_json_objects_numbered_from_one(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    sink = JsonlSink(path)
    sink.write({"text": "hello", "start": 1.0})
    sink.write({"text": "wörld\nnext", "start": 2.0})
    sink.close()
    assert lines(path) == [
        {"seq": 1, "text": "hello", "start": 1.0},
        {"seq": 2, "text": "wörld\nnext", "start": 2.0},
    ]


def test_seq_continues_after_restart_and_a_partial_line_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    sink = JsonlSink(path)
    sink.write({"text": "a"})
    sink.close()
    with open(path, "a") as f:
        f.write('{"seq": 2, "text": "half')  # a crash mid-line
    sink = JsonlSink(path)
    assert sink.repaired == len('{"seq": 2, "text": "half')
    sink.write({"text": "b"})
    sink.close()
    assert [r["seq"] for r in lines(path)] == [1, 2]


def test_reopen_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    sink = JsonlSink(path)
    sink.write({"text": "old"})
    os.rename(path, tmp_path / "t.jsonl.1")
    sink.reopen()
    sink.write({"text": "new"})
    sink.close()
    assert [r["text"] for r in lines(path)] == ["new"]
    assert [r["text"] for r in lines(tmp_path / "t.jsonl.1")] == ["old"]


def test_disk_full_raises_a_named_error() -> None:
    sink = JsonlSink(Path("/dev/full"))
    with pytest.raises(SinkError, match="/dev/full: cannot write transcript: No space left on device"):
        sink.write({"text": "lost?"})
    sink.close()


def test_unwritable_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SinkError, match="cannot open transcript file"):
        JsonlSink(tmp_path / "file" / "t.jsonl")
