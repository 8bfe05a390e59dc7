"""usage.json: only regular files are read, one warning per unwritable outage, the files of
the other instances of one state tree (run --workers N) are read as their documents."""

from __future__ import annotations

import json
import logging
import os
from datetime import date
from pathlib import Path

import pytest

from bridge.daemon.usage_store import UsageStore
from bridge.protocol.guardrails import Tokens
from bridge.protocol.shared_usage import SharedUsage
from bridge.protocol.usage_documents import file_document

DAY = date(2026, 6, 1)


def saved_by(path: Path, instance: str, total: int, day: date = DAY) -> None:
    usage = SharedUsage(name=instance)
    usage.roll(day)
    usage.charge("kitchen", "default", Tokens(0, total, total))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(file_document(instance, usage)))


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_only_a_regular_file_is_read_the_rest_is_set_aside(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A FIFO would block a plain open() for ever (issue 22, item 12)."""
    path = tmp_path / "usage.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with caplog.at_level(logging.WARNING):
        usage = UsageStore(tmp_path, "me").load()
    assert usage.used() == 0
    (line,) = [record.getMessage() for record in caplog.records]
    assert f"not a regular file (a {'FIFO' if kind == 'fifo' else 'directory'})" in line
    assert "moved to" in line
    assert not path.exists()
    assert [p.name.startswith("usage.json.corrupt-") for p in tmp_path.iterdir()] == [True]


def test_saving_to_an_unwritable_directory_warns_once_per_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 22, item 14: once, then back-off; one INFO when it works again."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state directory's parent should be")
    store = UsageStore(blocker / "state", "me")
    usage = SharedUsage(name="me")
    usage.roll(DAY)
    now = 1000.0
    with caplog.at_level(logging.INFO):
        for _ in range(10):
            while not store.due(now):
                now += 0.5
            store.save(usage, now)
        assert store.failed_saves == 10
        assert now > 1000.0 + 5 + 10 + 20 + 40  # backed off (jittered to half at least)
        assert store.problem is not None
        assert store.problem.startswith("not writable: ")
        assert usage.unsaved
        blocker.unlink()
        while not store.due(now):
            now += 0.5
        store.save(usage, now)
    assert store.problem is None
    assert not usage.unsaved
    lines = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert "could not save token usage" in lines[0][1]
    assert "saved to" in lines[1][1]
    assert store.due(now)
    assert UsageStore(blocker / "state", "me").load().own.bridge == usage.own.bridge


def test_the_files_of_the_other_instances_of_the_state_tree_are_their_documents(
    tmp_path: Path,
) -> None:
    """From one process to --workers 2 and back: each sees the others' usage, none twice."""
    saved_by(tmp_path / "usage.json", "house", 100)
    saved_by(tmp_path / "w1" / "usage.json", "house-w1", 20)
    saved_by(tmp_path / "w3" / "usage.json", "house-w3", 3)  # from an earlier --workers 3
    saved_by(tmp_path / "other" / "usage.json", "elsewhere", 999)  # not a worker's directory
    worker = UsageStore(tmp_path / "w2", "house-w2").load()  # its own file is missing
    worker.roll(DAY)
    assert sorted(worker.peers) == ["house", "house-w1", "house-w3"]
    assert worker.used() == 123
    single = UsageStore(tmp_path, "house").load()
    single.roll(DAY)
    assert sorted(single.peers) == ["house-w1", "house-w3"]
    assert (single.own.bridge.total, single.used()) == (100, 123)
    # Our directory, but another name wrote it (the instance was renamed): its usage, not ours.
    renamed = UsageStore(tmp_path, "mansion").load()
    renamed.roll(DAY)
    assert (renamed.own.bridge.total, renamed.used()) == (0, 123)
