"""Operating the cluster: partitions, processes, failures, the CLI's other commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.timeout(180)]


def run_one(make_role: RoleFactory, graph: str = "'SELECT 41 + 1'") -> tuple[str, str]:
    role = make_role("ops")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        row = conn.execute(f"SELECT df.start({graph})").fetchone()
        assert row is not None
        status = conn.execute("SELECT df.await_instance(%s, 60)", (row[0],)).fetchone()
        assert status is not None
        return str(row[0]), str(status[0])


def test_a_plugin_that_fails_to_import_stops_the_cluster(
    start_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("import no_such_module_anywhere\n")
    cluster = start_cluster(workers=2, args=("--plugins-dir", str(plugins)), wait=False)
    assert cluster.process is not None
    assert cluster.process.wait(30) == 4
    log = cluster.log()
    assert "broken.py failed to import: ModuleNotFoundError: No module named 'no_such_module_anywhere'" in log
    assert "stopping the cluster instead of crash-looping" in log
    assert log.count("failed to import") <= 2  # one per slot at most: no crash loop


def test_durable_dsn_in_the_environment(
    start_cluster: Callable[..., Cluster], dsn: str, make_role: RoleFactory, tmp_path: Path
) -> None:
    from tests.fix_cluster import Cluster

    cluster = Cluster(None, tmp_path, workers=1, env={"DURABLE_DSN": dsn})
    cluster.dsn = None
    cluster.start(wait=False)
    try:
        cluster.dsn = dsn  # only for the readiness probe
        cluster.wait_ready()
        assert run_one(make_role)[1] == "completed"
    finally:
        cluster.kill()


def test_wake_ups_come_by_notify_not_by_polling(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory
) -> None:
    start_cluster(workers=1, args=("--poll-interval", "600"))
    started = time.monotonic()
    assert run_one(make_role)[1] == "completed"
    # With a 10-minute safety poll, only NOTIFY can have woken the worker.
    assert time.monotonic() - started < 60


def test_two_clusters_share_the_partitions_and_take_over(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory
) -> None:
    first = start_cluster(workers=1)
    total = first.partition_count()
    second = start_cluster(workers=1, wait=False)

    def split() -> dict[int, int] | None:
        with first.connect() as conn:
            rows = conn.execute(
                "SELECT pid, cardinality(partitions) FROM durable.workers WHERE state = 'running'"
            ).fetchall()
        counts = {int(p): int(n) for p, n in rows}
        return counts if len(counts) == 2 and sorted(counts.values()) == [total // 2, total // 2] else None

    wait_for(split, 30, message="the partitions to split between the two clusters")
    assert first.partitions_held() == total
    os.kill(first.pid, signal.SIGKILL)  # the whole first host dies; its workers follow (PDEATHSIG)
    wait_for(lambda: first.process is not None and first.process.poll() is not None, 10, message="exit")

    def taken_over() -> bool:
        with second.connect() as conn:
            row = conn.execute(
                "SELECT cardinality(w.partitions) FROM durable.workers w WHERE w.pid = ANY(%s)",
                (second.worker_pids(),),
            ).fetchone()
        return row is not None and row[0] == total

    wait_for(taken_over, 30, message="the second cluster to hold every partition")
    assert run_one(make_role)[1] == "completed"


def test_a_statement_that_cannot_run_in_a_transaction_is_at_least_once(
    cluster: Cluster, make_role: RoleFactory
) -> None:
    role = make_role("vac")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        conn.execute("CREATE TABLE v (x int)")
        row = conn.execute(
            "SELECT df.start('VACUUM v' ~> 'CREATE INDEX CONCURRENTLY v_x ON v (x)' ~> 'SELECT 1')"
        ).fetchone()
        assert row is not None
        # Poll from here: df.await_instance holds a snapshot for the whole statement, and
        # CREATE INDEX CONCURRENTLY waits for every older snapshot to go away.
        wait_for(
            lambda: conn.execute("SELECT df.status(%s)", (row[0],)).fetchone() == ("completed",),
            60,
            message="the instance to complete",
        )
        guarantees = dict(
            conn.execute(
                "SELECT query, status_details->>'guarantee' FROM df.nodes"
                " WHERE instance_id = %s AND node_type = 'SQL'",
                (row[0],),
            ).fetchall()
        )
        assert guarantees == {
            "VACUUM v": "at-least-once",
            "CREATE INDEX CONCURRENTLY v_x ON v (x)": "at-least-once",
            "SELECT 1": "exactly-once",
        }
        assert conn.execute("SELECT to_regclass('v_x') IS NOT NULL").fetchone() == (True,)


def test_coordinator_holds_no_connection_and_workers_are_pinned(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(workers=2, pin=True)
    coordinator_fds = os.listdir(f"/proc/{cluster.pid}/fd")
    sockets = [
        fd for fd in coordinator_fds if os.readlink(f"/proc/{cluster.pid}/fd/{fd}").startswith("socket:")
    ]
    assert sockets == [], "the coordinator holds a socket (a database connection?)"
    workers = cluster.worker_pids()
    assert len(workers) == 2
    cpus = os.sched_getaffinity(0)
    if len(cpus) >= 2:
        allowed = sorted(_allowed_cpus(pid) for pid in workers)
        assert all(len(a) == 1 for a in allowed), allowed
        assert len({a[0] for a in allowed}) == 2


def test_without_pinning_workers_may_run_anywhere(start_cluster: Callable[..., Cluster]) -> None:
    cluster = start_cluster(workers=1, pin=False)
    (worker,) = cluster.worker_pids()
    assert set(_allowed_cpus(worker)) == os.sched_getaffinity(0)


def _allowed_cpus(pid: int) -> list[int]:
    return sorted(os.sched_getaffinity(pid))


def test_a_killed_worker_is_respawned_and_its_partitions_reclaimed(
    cluster: Cluster, make_role: RoleFactory
) -> None:
    total = cluster.partition_count()
    before = cluster.worker_pids()
    victim = cluster.kill_worker(signal.SIGKILL)
    wait_for(
        lambda: len(cluster.worker_pids()) == 2 and victim not in cluster.worker_pids(), 10, message="respawn"
    )
    wait_for(lambda: cluster.partitions_held() == total, 10, message="every partition to be held again")
    assert sorted(set(cluster.worker_pids()) - set(before)) != []
    assert "respawned" in cluster.log()
    assert run_one(make_role)[1] == "completed"


def test_database_restart_mid_run_loses_nothing(
    pg_server: Any, start_cluster: Callable[..., Cluster], make_role: RoleFactory
) -> None:
    if pg_server.embedded is None:
        pytest.skip("restarting the server needs the embedded test server (not --test-dsn)")
    cluster = start_cluster(workers=2, args=("--heartbeat-timeout", "4"))
    role = make_role("restart")
    role_dsn = make_role.dsn(role)
    with psycopg.connect(role_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE side (instance text NOT NULL, step int NOT NULL)")
        graph = " ~> ".join(
            f"'INSERT INTO side SELECT ''{{sys_instance_id}}'', {k} FROM pg_sleep(0.05)'" for k in range(6)
        )
        ids = [
            str(r[0])
            for r in conn.execute(
                sql.SQL("SELECT df.start({}) FROM generate_series(1, 20)").format(sql.SQL(graph))
            ).fetchall()
        ]
        wait_for(lambda: conn.execute("SELECT count(*) FROM side").fetchone() != (0,), 30, message="progress")
    pg_server.embedded.stop("immediate")
    try:
        # A worker that dies now is respawned while the database is down: waiting for the
        # database, it keeps its heartbeat and is not killed as stuck.
        wait_for(cluster.worker_pids, 10, message="a worker to kill")
        cluster.kill_worker(signal.SIGKILL)
        time.sleep(5)
    finally:
        pg_server.embedded.start()  # the other tests of this xdist worker share the server

    def finished() -> bool:
        with psycopg.connect(role_dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT status FROM df.instances WHERE id = ANY(%s)", (ids,)).fetchall()
        return len(rows) == 20 and all(r[0] == "completed" for r in rows)

    wait_for(finished, 90, interval=0.2, message="every instance to complete after the restart")
    with psycopg.connect(role_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT (instance, step)) FROM side").fetchone() == (
            120,
            120,
        )
    cluster.check_alive()
    assert "retrying" in cluster.log()
    assert "SIGABRT" not in cluster.log()


def test_init_is_idempotent_and_dsn_prints(pg_server: Any, tmp_path: Path) -> None:
    name = "ops_init"
    with pg_server.admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    target = pg_server.db_dsn(name)
    try:
        cli = [sys.executable, "-m", "durable_cluster"]
        first = subprocess.run([*cli, "init", "--dsn", target], capture_output=True, text=True, check=True)
        assert "schema upgraded from version 0 to" in first.stdout
        second = subprocess.run(
            [*cli, "init"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "DURABLE_DSN": target},
        )
        assert "schema is up to date" in second.stdout
        shown = subprocess.run(
            [*cli, "dsn", "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, check=True
        )
        assert shown.stdout.startswith("postgresql://app@/postgres?host=")
    finally:
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_retention_purges_terminal_instances(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory, dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:  # a `start` run that ended two days ago
        admin.execute(
            "INSERT INTO df._worker_epoch (epoch_id, started_at, last_seen_at)"
            " VALUES ('00000000-0000-4000-8000-000000000001', now() - interval '3 days',"
            " now() - interval '2 days')"
        )
    start_cluster(workers=1, args=("--reconcile-interval", "1", "--retention-days", "0"))
    role = make_role("retain")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        done = conn.execute("SELECT df.start('SELECT 1')").fetchone()
        waiting = conn.execute("SELECT df.start(df.wait_for_signal('never'))").fetchone()
        assert done is not None
        assert waiting is not None
        assert conn.execute("SELECT df.await_instance(%s)", (done[0],)).fetchone() == ("completed",)
        wait_for(
            lambda: (
                conn.execute("SELECT count(*) FROM df.instances WHERE id = %s", (done[0],)).fetchone() == (0,)
            ),
            30,
            message="the terminal instance to be purged",
        )
        assert conn.execute(
            "SELECT count(*) FROM df.nodes WHERE instance_id = %s", (done[0],)
        ).fetchone() == (0,)
        # Running instances are never touched.
        assert conn.execute("SELECT df.status(%s)", (waiting[0],)).fetchone() == ("running",)
    with psycopg.connect(dsn, autocommit=True) as admin:
        epochs = [r[0] for r in admin.execute("SELECT epoch_id::text FROM df._worker_epoch").fetchall()]
    assert len(epochs) == 1  # the live run's row stays
    assert epochs != ["00000000-0000-4000-8000-000000000001"]  # the old run's row is gone


def test_a_killed_worker_makes_the_survivors_rebalance_at_once(cluster: Cluster) -> None:
    """The coordinator pokes the other workers (SIGUSR1); they NOTIFY 'rebalance' and stay alive."""
    with psycopg.connect(cluster.dsn, autocommit=True) as listener:
        listener.execute("LISTEN durable_wake")
        survivors = cluster.worker_pids()
        victim = cluster.kill_worker(signal.SIGKILL)
        survivors.remove(victim)
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while "rebalance" not in seen and time.monotonic() < deadline:  # other wake-ups may come first
            remaining = max(0.0, deadline - time.monotonic())
            seen += [n.payload for n in listener.notifies(timeout=remaining, stop_after=1)]
    assert "rebalance" in seen
    for pid in survivors:
        os.kill(pid, 0)  # the poke did not kill it
        assert pid in cluster.worker_pids()
    wait_for(
        lambda: cluster.partitions_held() == cluster.partition_count(), 10, message="every partition held"
    )


def test_a_worker_that_keeps_dying_young_is_respawned_with_backoff(
    start_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "dies.py").write_text(
        "import os\n"
        "from durable_cluster import hookimpl\n\n"
        "@hookimpl\n"
        "def durable_worker_started(worker):\n"
        "    os._exit(1)\n"
    )
    cluster = start_cluster(
        workers=1, args=("--plugins-dir", str(plugins), "--respawn-backoff", "1"), wait=False
    )
    wait_for(lambda: cluster.log().count("respawning in 1s") >= 2, 30, message="the capped back-off, twice")
    log = cluster.log()
    first, second, third = (log.index(f"respawning in {delay}s") for delay in ("0.25", "0.5", "1"))
    assert first < second < third
    assert "died 4 times in a row within 5s of its start: respawning in 0.25s" in log
    assert "respawning in 2s" not in log  # capped by --respawn-backoff
    assert cluster.process is not None
    assert cluster.process.poll() is None  # still running, not halted
    assert cluster.stop() == 0
