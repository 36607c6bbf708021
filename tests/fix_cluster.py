"""Run ``durable-cluster`` as a subprocess against the test's database.

Never fork the cluster inside the pytest process: it is started with
``python -m durable_cluster start`` in its own session and signalled by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

READY_TIMEOUT = 30.0  # seconds for a cluster to claim every partition
STOP_TIMEOUT = 30.0


class Cluster:
    """A running ``durable-cluster start`` process."""

    def __init__(
        self,
        dsn: str | None,
        workdir: Path,
        *,
        workers: int = 2,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        pin: bool = False,
    ) -> None:
        self.dsn = dsn
        self.workdir = workdir
        self.workers = workers
        self.args = args
        self.env = env or {}
        self.pin = pin
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"cluster-{time.monotonic_ns()}.log"
        self.out_path = self.log_path.with_suffix(".out")

    def start(self, *, wait: bool = True) -> Cluster:
        command = [
            sys.executable,
            "-m",
            "durable_cluster",
            "start",
            "--workers",
            str(self.workers),
            "--pin" if self.pin else "--no-pin",
        ]
        if self.dsn:
            command += ["--dsn", self.dsn]
        command += list(self.args)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("DURABLE_DSN", None) if self.dsn else None
        with self.log_path.open("ab") as log, self.out_path.open("ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=log, cwd=self.workdir, env=env, start_new_session=True
            )
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        assert self.dsn is not None
        return psycopg.connect(self.dsn, autocommit=True)

    def partitions_held(self) -> int:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
                " AND classid = 1145241601 AND database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())"
            ).fetchone()
            assert row is not None
            return int(row[0])

    def partition_count(self) -> int:
        with self.connect() as conn:
            row = conn.execute("SELECT value::int FROM durable.settings WHERE name = 'partitions'").fetchone()
            assert row is not None
            return int(row[0])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the cluster runs and every partition is claimed."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            with contextlib.suppress(psycopg.Error, AssertionError):
                if self.dsn and self.partitions_held() >= self.partition_count() and self.live_workers():
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster not ready after {timeout}s; log:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"cluster exited with {self.process.returncode}; log:\n{self.log()[-4000:]}")

    def live_workers(self) -> list[int]:
        """Pids of workers that hold their membership lock (so, alive)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT w.pid FROM durable.workers w JOIN pg_locks l ON l.locktype = 'advisory'"
                " AND l.classid = 1145241603 AND l.objid = w.member_key AND l.granted"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall()
        return sorted(int(r[0]) for r in rows)

    def worker_pids(self) -> list[int]:
        """Pids of the coordinator's worker processes (children), from /proc."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid and fields[0] != "Z":
                found.append(int(entry))
        return sorted(found)

    def kill_worker(self, sig: int = signal.SIGKILL) -> int:
        pids = self.worker_pids()
        assert pids, "no worker to kill"
        victim = pids[int(time.monotonic_ns()) % len(pids)]
        os.kill(victim, sig)
        return victim

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the coordinator and wait for it; return its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired as exc:
                self.kill()
                raise AssertionError(
                    f"cluster did not stop within {timeout}s; log:\n{self.log()[-4000:]}"
                ) from exc
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (cleanup)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


ClusterFactory = "Callable[..., Cluster]"


@pytest.fixture
def start_cluster(dsn: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``start_cluster(workers=2, args=(), env=None, wait=True)`` runs a cluster on the test's database."""
    started: list[Cluster] = []

    def start(
        *,
        workers: int = 2,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        wait: bool = True,
        database_dsn: str | None = None,
        pin: bool = False,
    ) -> Cluster:
        cluster = Cluster(database_dsn or dsn, tmp_path, workers=workers, args=args, env=env, pin=pin)
        started.append(cluster)
        return cluster.start(wait=wait)

    yield start
    for cluster in started:
        if cluster.process is not None and cluster.process.poll() is None:
            cluster.kill()


@pytest.fixture
def cluster(start_cluster: Callable[..., Cluster]) -> Cluster:
    """A two-worker cluster running on the test's database."""
    return start_cluster()


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
