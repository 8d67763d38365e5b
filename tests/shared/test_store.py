"""shared/store.py: a folder is written whole or not at all."""

from __future__ import annotations

import pytest

from shared.store import write_folder


def test_a_folder_is_written_once_and_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "builds" / "model"
    calls = []

    def write(scratch):
        calls.append(scratch)
        (scratch / "weights").write_text("w")
        (scratch / "done.json").write_text("{}")

    assert write_folder(target, write, "done.json") == target
    assert (target / "weights").read_text() == "w"
    assert write_folder(target, write, "done.json") == target and len(calls) == 1  # kept, not written again

    def crash(scratch):
        (scratch / "half").write_text("h")
        raise RuntimeError("stopped")

    other = tmp_path / "builds" / "other"
    with pytest.raises(RuntimeError, match="stopped"):
        write_folder(other, crash, "done.json")
    assert sorted(p.name for p in (tmp_path / "builds").iterdir()) == ["model"]  # no scratch, no half folder


def test_a_folder_left_by_a_crash_is_replaced(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale").write_text("s")  # no done file: a crash's leftover
    write_folder(target, lambda scratch: (scratch / "done.json").write_text("{}"), "done.json")
    assert sorted(p.name for p in target.iterdir()) == ["done.json"]
