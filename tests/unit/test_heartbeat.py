"""The mtime heartbeat on a real (unlinked) temporary file."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable_cluster.heartbeat import Heartbeat


@pytest.fixture
def heartbeat(tmp_path: Path) -> Iterator[Heartbeat]:
    beat = Heartbeat(tmp_path)
    yield beat
    beat.close()


def test_new_heartbeat_has_never_been_notified(heartbeat: Heartbeat) -> None:
    assert heartbeat.last_update() == Heartbeat.NEVER
    assert not heartbeat.notified()


def test_file_is_unlinked(tmp_path: Path, heartbeat: Heartbeat) -> None:
    assert list(tmp_path.iterdir()) == []
    assert os.fstat(heartbeat.fileno()).st_nlink == 0


def test_notify_records_monotonic_time(heartbeat: Heartbeat) -> None:
    before = time.monotonic()
    heartbeat.notify()
    after = time.monotonic()
    assert heartbeat.notified()
    assert before - 0.001 <= heartbeat.last_update() <= after + 0.001


def test_notify_moves_forward(heartbeat: Heartbeat) -> None:
    heartbeat.notify()
    first = heartbeat.last_update()
    time.sleep(0.01)
    heartbeat.notify()
    assert heartbeat.last_update() > first


def test_notify_is_seen_through_another_descriptor(heartbeat: Heartbeat) -> None:
    """The coordinator and the worker hold the same open file after fork."""
    other = os.dup(heartbeat.fileno())
    try:
        heartbeat.notify()
        assert os.fstat(other).st_mtime_ns / 1e9 == heartbeat.last_update()
    finally:
        os.close(other)


def test_default_directory_works() -> None:
    beat = Heartbeat()
    try:
        beat.notify()
        assert beat.notified()
    finally:
        beat.close()


def test_close_is_idempotent_and_final(heartbeat: Heartbeat) -> None:
    heartbeat.close()
    heartbeat.close()
    assert heartbeat.closed
    assert "closed" in repr(heartbeat)
    with pytest.raises(ValueError, match="closed"):
        heartbeat.notify()
