"""The coordinator with real processes: fake_cluster.py runs as a subprocess.

The cluster runs in its own session and is only ever signalled by pid (gunicorn
``tests/test_signal_integration.py``); nothing forks inside the pytest process.
Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

import pytest

pytestmark = [pytest.mark.xdist_group("signals"), pytest.mark.timeout(60)]

FAKE_CLUSTER = Path(__file__).with_name("fake_cluster.py")
START_TIMEOUT = 15.0  # seconds for the interpreter to start and fork the workers
T = TypeVar("T")


def wait_for(what: str, predicate: Callable[[], T | None], timeout: float) -> T:
    """Poll ``predicate`` until it returns something truthy, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


class FakeCluster:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "state"
        self.dir.mkdir()
        self.stderr_path = tmp_path / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, env: dict[str, str] | None = None) -> None:
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-W", "error", str(FAKE_CLUSTER), "--dir", str(self.dir), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def slot(self, slot: int) -> tuple[int, int] | None:
        """(pid, generation) of the worker that last booted in ``slot``."""
        try:
            pid, generation = (self.dir / f"slot-{slot}.pid").read_text().split()
        except (FileNotFoundError, ValueError):
            return None
        return int(pid), int(generation)

    def slots(self, count: int) -> dict[int, tuple[int, int]] | None:
        found = {slot: self.slot(slot) for slot in range(count)}
        if any(value is None for value in found.values()):
            return None
        return {slot: value for slot, value in found.items() if value is not None}

    def boots(self) -> list[str]:
        path = self.dir / "boots.log"
        return path.read_text().splitlines() if path.exists() else []

    def wait_started(self, workers: int) -> dict[int, tuple[int, int]]:
        wait_for("the ready file", (self.dir / "ready").exists, START_TIMEOUT)
        return wait_for(f"{workers} workers", lambda: self.slots(workers), START_TIMEOUT)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the coordinator did not exit within {timeout}s:\n{self.stderr()}"
            ) from None

    def kill_all(self) -> None:
        """Clean-up: SIGKILL the session's process group (coordinator and workers)."""
        if self.proc is None:
            return
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    fake = FakeCluster(tmp_path)
    try:
        yield fake
    finally:
        fake.kill_all()


def test_respawn_into_the_same_slot_then_graceful_stop(cluster: FakeCluster) -> None:
    cluster.start("--workers", "2")
    workers = cluster.wait_started(2)
    (pid0, _), (pid1, _) = workers[0], workers[1]
    assert pid0 != pid1
    assert alive(pid0)
    assert alive(pid1)

    os.kill(pid0, signal.SIGKILL)

    def respawned() -> tuple[int, int] | None:
        slot = cluster.slot(0)
        return slot if slot is not None and slot[0] != pid0 else None

    new0, generation = wait_for("a new worker in slot 0", respawned, 2.0)
    assert generation == 0
    assert alive(new0)
    assert cluster.slot(1) == (pid1, 0)
    wait_for("the killed worker to be reaped", lambda: not alive(pid0), 2.0)

    cluster.signal(signal.SIGTERM)
    assert cluster.wait(timeout=10) == 0, cluster.stderr()
    assert not alive(new0)
    assert not alive(pid1)
    assert (cluster.dir / "stopped").exists()
    stderr = cluster.stderr()
    assert "was killed by SIGKILL (out of memory?" in stderr
    assert "Traceback" not in stderr
    assert "cluster stopped" in stderr


def test_boot_failure_halts_the_cluster_without_crash_loop(cluster: FakeCluster) -> None:
    cluster.start("--workers", "2", "--boot-error-slot", "0")
    status = cluster.wait(timeout=START_TIMEOUT)

    stderr = cluster.stderr()
    assert status == 3, stderr
    assert "worker[0] failed to boot (exit 3): stopping the cluster instead of crash-looping" in stderr
    slot0_boots = [line for line in cluster.boots() if line.startswith("0 ")]
    assert len(slot0_boots) == 1, cluster.boots()
    assert (cluster.dir / "stopped").exists()


def test_every_worker_failing_to_boot_halts_too(cluster: FakeCluster) -> None:
    cluster.start("--workers", "2", env={"FAKE_CLUSTER_BOOT_ERROR": "1"})
    status = cluster.wait(timeout=START_TIMEOUT)
    assert status == 3, cluster.stderr()
    assert len(cluster.boots()) <= 2


def test_workers_die_with_a_sigkilled_coordinator(cluster: FakeCluster) -> None:
    cluster.start("--workers", "2")
    workers = cluster.wait_started(2)
    pids = [pid for pid, _ in workers.values()]

    cluster.signal(signal.SIGKILL)
    assert cluster.wait(timeout=5) == -signal.SIGKILL
    wait_for("the orphaned workers to die", lambda: not any(alive(pid) for pid in pids), 2.0)


def test_hup_rolls_and_ttin_ttou_scale(cluster: FakeCluster) -> None:
    cluster.start("--workers", "2", "--no-pin")
    before = cluster.wait_started(2)

    cluster.signal(signal.SIGHUP)

    def rolled() -> dict[int, tuple[int, int]] | None:
        slots = cluster.slots(2)
        if slots is None or any(generation != 1 for _, generation in slots.values()):
            return None
        return slots

    after = wait_for("generation 1 in both slots", rolled, 10.0)
    assert {pid for pid, _ in after.values()}.isdisjoint(pid for pid, _ in before.values())
    wait_for(
        "the old generation to drain",
        lambda: not any(alive(pid) for pid, _ in before.values()),
        5.0,
    )
    assert all(alive(pid) for pid, _ in after.values())

    cluster.signal(signal.SIGTTIN)
    pid2, generation2 = wait_for("slot 2", lambda: cluster.slot(2), 5.0)
    assert generation2 == 1

    cluster.signal(signal.SIGTTOU)
    wait_for("slot 2 to stop", lambda: not alive(pid2), 5.0)
    time.sleep(0.3)  # would be enough for a (wrong) respawn
    assert [line for line in cluster.boots() if line.startswith("2 ")] == [f"2 {pid2} 1"]
    assert all(alive(pid) for pid, _ in after.values())

    cluster.signal(signal.SIGTERM)
    assert cluster.wait(timeout=10) == 0, cluster.stderr()


def test_unexpected_signals_are_not_fatal(cluster: FakeCluster) -> None:
    cluster.start("--workers", "1", "--no-pin")
    workers = cluster.wait_started(1)
    cluster.signal(signal.SIGUSR2)
    cluster.signal(signal.SIGUSR1)
    wait_for("the USR2 log line", lambda: "ignoring unexpected SIGUSR2" in cluster.stderr(), 5.0)
    assert cluster.proc is not None
    assert cluster.proc.poll() is None
    assert cluster.slot(0) == workers[0]
    cluster.signal(signal.SIGTERM)
    assert cluster.wait(timeout=10) == 0, cluster.stderr()


def test_sigquit_kills_stubborn_workers_after_a_short_grace(cluster: FakeCluster) -> None:
    cluster.start("--workers", "2", "--graceful-timeout", "30", env={"FAKE_CLUSTER_IGNORE_TERM": "1"})
    workers = cluster.wait_started(2)
    start = time.monotonic()
    cluster.signal(signal.SIGQUIT)
    assert cluster.wait(timeout=10) == 0, cluster.stderr()
    assert time.monotonic() - start < 5.0  # QUICK_STOP_TIMEOUT, not the graceful 30 s
    assert not any(alive(pid) for pid, _ in workers.values())
    assert "2 workers still running: SIGKILL" in cluster.stderr()
