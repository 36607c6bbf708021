"""Test helpers for workflow and plugin authors: the kill-point harness.

:func:`kill_at_every_checkpoint` runs your workflow on a real cluster again
and again, each time SIGKILLing the worker at the next checkpoint boundary
(before a step, during it, before and after a checkpoint commits, after a SQL
step's own commit), lets the cluster recover, and checks your side effects:
each must have happened exactly once. It is the machinery durable-cluster's
own chaos tests use::

    from durable_cluster.testing import kill_at_every_checkpoint

    def submit(conn):
        return conn.execute("SELECT df.start('INSERT INTO audit VALUES (''{sys_instance_id}'', 1)'"
                            " ~> 'INSERT INTO audit VALUES (''{sys_instance_id}'', 2)')").fetchone()[0]

    def effects(conn, instance_id):
        return dict(conn.execute("SELECT step::text, count(*) FROM audit WHERE instance = %s GROUP BY 1",
                                 (instance_id,)).fetchall())

    report = kill_at_every_checkpoint(
        dsn="postgresql://admin@/app",           # the runtime's DSN (the cluster runs on it)
        role_dsn="postgresql://alice@/app",      # the submitting role
        submit=submit, effects=effects, expected=lambda _id: {"1", "2"},
    )
    assert report.ok, report.summary()

Custom steps are at least once by nature: expect a key twice only where a
worker died between the step and its checkpoint, and pass ``at_least_once``
to accept that.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from . import crashpoints

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping

POINTS = (
    "before_step",
    "during_step",
    "before_checkpoint_commit",
    "after_checkpoint_commit",
    "after_step_commit",
)
TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class KillPointRun:
    point: str
    skip: int
    instance_id: str
    crashed: bool
    status: str
    anomalies: list[str] = field(default_factory=list)


@dataclass
class KillPointReport:
    runs: list[KillPointRun] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(not run.anomalies for run in self.runs)

    @property
    def crashes(self) -> int:
        return sum(run.crashed for run in self.runs)

    def summary(self) -> str:
        lines = [f"{len(self.runs)} runs, {self.crashes} worker kills"]
        for run in self.runs:
            if run.anomalies:
                lines.append(
                    f"  {run.point} (hit {run.skip}), instance {run.instance_id}: " + "; ".join(run.anomalies)
                )
        return "\n".join(lines)


class _Cluster:
    def __init__(self, dsn: str, crash_dir: Path, workers: int, args: Iterable[str], log: Path) -> None:
        env = {**os.environ, crashpoints.ENV: str(crash_dir), "PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable,
            "-m",
            "durable_cluster",
            "start",
            "--dsn",
            dsn,
            "--workers",
            str(workers),
            "--no-pin",
            "--respawn-backoff",  # the harness kills the worker again and again on purpose
            "0",
            *args,
        ]
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=out, env=env, start_new_session=True)
        self.dsn = dsn
        self.log = log

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the cluster exited with {self.process.returncode}; see {self.log}")
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.dsn, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND objsubid = 2 AND classid = 1145241601 AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database()))"
                    " >= (SELECT value::int FROM durable.settings WHERE name = 'partitions')"
                ).fetchone()
                if row and row[0]:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not claim its partitions in {timeout}s; see {self.log}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def kill_at_every_checkpoint(
    *,
    dsn: str,
    role_dsn: str,
    submit: Callable[[psycopg.Connection[Any]], str],
    effects: Callable[[psycopg.Connection[Any], str], Mapping[str, int]],
    expected: Callable[[str], Collection[str]],
    points: Iterable[str] = POINTS,
    max_hits: int = 50,
    workers: int = 1,
    cluster_args: Iterable[str] = (),
    at_least_once: bool = False,
    timeout: float = 60.0,
    work_dir: Path | None = None,
) -> KillPointReport:
    """Run the workflow once per (kill point, hit number) until every hit of every point was tried.

    :param dsn: the runtime's DSN; a cluster is started on it (its schema installed).
    :param role_dsn: a connection as the role that starts the workflow.
    :param submit: starts the workflow on a connection from ``role_dsn``; returns the instance id.
    :param effects: counts of each side effect of that instance, by key.
    :param expected: the keys that must each appear exactly once when the instance completed.
    :param at_least_once: accept a key seen more than once (custom and HTTP steps) but never zero.
    """
    report = KillPointReport()
    base = Path(work_dir or tempfile.mkdtemp(prefix="durable-killpoints-"))
    crash_dir = base / "crashpoints"
    crash_dir.mkdir(parents=True, exist_ok=True)
    cluster = _Cluster(dsn, crash_dir, workers, cluster_args, base / "cluster.log")
    try:
        cluster.wait_ready(timeout)
        with psycopg.connect(role_dsn, autocommit=True) as conn:
            for point in points:
                for skip in range(max_hits):
                    crashpoints.arm(crash_dir, point, skip)
                    instance = submit(conn)
                    status = _wait_terminal(conn, instance, timeout)
                    crashed = not crashpoints.armed(crash_dir, point)
                    run = KillPointRun(point, skip, instance, crashed, status)
                    _check(run, effects(conn, instance), expected(instance), at_least_once)
                    report.runs.append(run)
                    if not crashed:
                        (crash_dir / point).unlink(missing_ok=True)
                        break
                    cluster.wait_ready(timeout)
    finally:
        cluster.stop()
    return report


def _wait_terminal(conn: psycopg.Connection[Any], instance: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute("SELECT status FROM df.instances WHERE id = %s", (instance,)).fetchone()
        status = str(row[0]) if row else "missing"
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def _check(
    run: KillPointRun, seen: Mapping[str, int], expected: Collection[str], at_least_once: bool
) -> None:
    if run.status != "completed":
        run.anomalies.append(f"instance ended {run.status}")
    for key in expected:
        count = seen.get(key, 0)
        if count == 0:
            run.anomalies.append(f"effect {key!r} never happened")
        elif count > 1 and not at_least_once:
            run.anomalies.append(f"effect {key!r} happened {count} times")
    for key in seen:
        if key not in expected:
            run.anomalies.append(f"unexpected effect {key!r}")
