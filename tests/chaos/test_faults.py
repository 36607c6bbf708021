"""Faults with real processes: stalls, lost lock connections, a dead coordinator, a rolling restart."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

TERMINAL = ("completed", "failed", "cancelled")


def start_batch(conn: psycopg.Connection[Any], count: int, steps: int, pause: float) -> list[str]:
    graph = " ~> ".join(
        f"'INSERT INTO side SELECT ''{{sys_instance_id}}'', {k} FROM pg_sleep({pause})'" for k in range(steps)
    )
    rows = conn.execute(
        sql.SQL("SELECT df.start({}) FROM generate_series(1, {})").format(sql.SQL(graph), sql.Literal(count))
    ).fetchall()
    return [str(r[0]) for r in rows]


def all_done(conn: psycopg.Connection[Any], ids: list[str]) -> bool:
    rows = conn.execute("SELECT status FROM df.instances WHERE id = ANY(%s)", (ids,)).fetchall()
    return len(rows) == len(ids) and all(r[0] in TERMINAL for r in rows)


def assert_exactly_once(conn: psycopg.Connection[Any], ids: list[str], steps: int) -> None:
    statuses = {r[0] for r in conn.execute("SELECT status FROM df.instances WHERE id = ANY(%s)", (ids,))}
    assert statuses == {"completed"}
    assert conn.execute("SELECT count(*), count(DISTINCT (instance, step)) FROM side").fetchone() == (
        len(ids) * steps,
        len(ids) * steps,
    )


def lock_backend_of(admin: psycopg.Connection[Any], worker_pid: int) -> int:
    """The server process of a worker's lock connection (it holds the worker's membership lock)."""
    row = admin.execute(
        "SELECT l.pid FROM durable.workers w JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted"
        " AND l.classid = 1145241603 AND l.objid = w.member_key AND l.objsubid = 2"
        " WHERE w.pid = %s",
        (worker_pid,),
    ).fetchone()
    assert row is not None, f"worker {worker_pid} holds no membership lock"
    return int(row[0])


def test_a_stalled_worker_that_lost_its_claim_is_fenced(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory, conn: psycopg.Connection[Any]
) -> None:
    """SIGSTOP a worker, kill its lock connection, let the other worker take over, resume it."""
    cluster = start_cluster(workers=2, args=("--heartbeat-timeout", "300"))
    role = make_role("stall")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as user:
        user.execute("CREATE TABLE side (instance text NOT NULL, step int NOT NULL)")
        ids = start_batch(user, 30, 4, 0.3)
        wait_for(lambda: user.execute("SELECT count(*) FROM side").fetchone() != (0,), 30, message="progress")
        stalled, other = cluster.worker_pids()
        backend = lock_backend_of(conn, stalled)
        os.kill(stalled, signal.SIGSTOP)
        try:
            conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
            total = cluster.partition_count()

            def taken_over() -> bool:
                row = conn.execute(
                    "SELECT cardinality(partitions) FROM durable.workers WHERE pid = %s", (other,)
                ).fetchone()
                return row is not None and row[0] == total

            wait_for(taken_over, 30, message="the other worker to claim every partition")
        finally:
            os.kill(stalled, signal.SIGCONT)
        wait_for(lambda: all_done(user, ids), 120, interval=0.2, message="every instance to finish")
        assert_exactly_once(user, ids, 4)
    log = cluster.log()
    assert "lock connection failed" in log or "claimed by another worker" in log, log[-3000:]


def test_a_killed_coordinator_takes_its_workers_and_a_new_one_resumes(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory
) -> None:
    first = start_cluster(workers=2)
    workers = first.worker_pids()
    role = make_role("orphan")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as user:
        user.execute("CREATE TABLE side (instance text NOT NULL, step int NOT NULL)")
        ids = start_batch(user, 20, 4, 0.2)
        wait_for(lambda: user.execute("SELECT count(*) FROM side").fetchone() != (0,), 30, message="progress")
        os.kill(first.pid, signal.SIGKILL)

        def orphans_gone() -> bool:
            return not any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in workers)

        wait_for(orphans_gone, 10, message="the orphaned workers to exit")
        assert not all_done(user, ids), "the work finished before the kill; the test proves nothing"
        start_cluster(workers=2)
        wait_for(lambda: all_done(user, ids), 120, interval=0.2, message="every instance to finish")
        assert_exactly_once(user, ids, 4)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_sighup_replaces_every_worker_without_dropping_work(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory
) -> None:
    cluster = start_cluster(workers=2)
    before = set(cluster.worker_pids())
    role = make_role("roll")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as user:
        user.execute("CREATE TABLE side (instance text NOT NULL, step int NOT NULL)")
        ids = start_batch(user, 30, 5, 0.2)
        wait_for(lambda: user.execute("SELECT count(*) FROM side").fetchone() != (0,), 30, message="progress")
        cluster.send_signal(signal.SIGHUP)
        wait_for(
            lambda: len(cluster.worker_pids()) == 2 and not (set(cluster.worker_pids()) & before),
            60,
            message="both workers to be replaced",
        )
        wait_for(lambda: all_done(user, ids), 120, interval=0.2, message="every instance to finish")
        assert_exactly_once(user, ids, 5)
    assert "rolling restart" in cluster.log()
    cluster.check_alive()
    assert cluster.stop() == 0


def test_sigterm_with_a_long_step_waits_then_exits_cleanly(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory
) -> None:
    cluster = start_cluster(workers=1, args=("--graceful-timeout", "30"))
    role = make_role("drain")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as user:
        user.execute("CREATE TABLE side (instance text NOT NULL, step int NOT NULL)")
        ids = start_batch(user, 1, 2, 2.0)
        wait_for(
            lambda: (
                user.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2.0)%'"
                    " AND pid <> pg_backend_pid()"
                    " AND state = 'active'"
                ).fetchone()
                != (0,)
            ),
            30,
            message="the long step to run",
        )
        assert cluster.stop(signal.SIGTERM) == 0
        # The in-flight step finished and was checkpointed before the exit.
        assert user.execute("SELECT count(*) FROM side").fetchone() == (1,)
        start_cluster(workers=1)
        wait_for(lambda: all_done(user, ids), 60, message="the instance to finish")
        assert_exactly_once(user, ids, 2)
