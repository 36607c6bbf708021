"""The core, end to end: the CLI as a subprocess, real PostgreSQL, real signals."""

from __future__ import annotations

import random
import signal
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.timeout(180)]

TERMINAL = ("completed", "failed", "cancelled")


def statuses(conn: psycopg.Connection[Any], ids: list[str]) -> dict[str, str]:
    rows = conn.execute("SELECT id, status FROM df.instances WHERE id = ANY(%s)", (ids,)).fetchall()
    return {str(i): str(s) for i, s in rows}


def wait_terminal(conn: psycopg.Connection[Any], ids: list[str], timeout: float = 60.0) -> dict[str, str]:
    def done() -> dict[str, str] | None:
        found = statuses(conn, ids)
        return found if len(found) == len(ids) and all(s in TERMINAL for s in found.values()) else None

    result: dict[str, str] = wait_for(done, timeout, message=f"{len(ids)} instances to finish")
    return result


def test_readme_example_runs(cluster: Cluster, make_role: RoleFactory) -> None:
    role = make_role("alice")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        row = conn.execute(
            "SELECT df.start('INSERT INTO t VALUES (1)' ~> 'SELECT count(*) FROM t' |=> 'n'"
            " ~> 'SELECT $n + 1', 'my-label')"
        ).fetchone()
        assert row is not None
        instance = str(row[0])
        assert len(instance) == 8
        assert int(instance, 16) >= 0
        assert conn.execute("SELECT df.await_instance(%s, 30)", (instance,)).fetchone() == ("completed",)
        assert conn.execute("SELECT df.status(%s)", (instance,)).fetchone() == ("completed",)
        result = conn.execute("SELECT df.result(%s)", (instance,)).fetchone()
        assert result == ('{"rows": [{"?column?": 2}], "row_count": 1}',)
        label, completed_at = conn.execute(
            "SELECT label, completed_at FROM df.instances WHERE id = %s", (instance,)
        ).fetchone() or (None, None)
        assert label == "my-label"
        assert completed_at is not None
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
        nodes = conn.execute(
            "SELECT node_type, status, status_details->>'guarantee' FROM df.nodes WHERE instance_id = %s"
            " ORDER BY node_type",
            (instance,),
        ).fetchall()
        assert [n[1] for n in nodes] == ["completed"] * 5
        assert sorted(n[2] for n in nodes if n[0] == "SQL") == ["exactly-once"] * 3


def test_sql_error_fails_instance(cluster: Cluster, make_role: RoleFactory) -> None:
    role = make_role("bob")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        row = conn.execute(
            "SELECT df.start('SELECT 1' ~> 'SELECT * FROM no_such_table' ~> 'SELECT 3')"
        ).fetchone()
        assert row is not None
        instance = str(row[0])
        assert conn.execute("SELECT df.await_instance(%s, 30)", (instance,)).fetchone() == ("failed",)
        assert conn.execute("SELECT df.result(%s)", (instance,)).fetchone() == (None,)
        error = conn.execute(
            "SELECT n.result #>> '{}' FROM df.nodes n JOIN df.instances i ON i.root_node = n.id"
            " AND i.id = n.instance_id WHERE i.id = %s",
            (instance,),
        ).fetchone()
        assert error == ('SQL execution failed: relation "no_such_table" does not exist',)
        last = conn.execute(
            "SELECT status FROM df.nodes WHERE instance_id = %s AND query = 'SELECT 3'", (instance,)
        ).fetchone()
        assert last == ("pending",)


def test_missing_result_name_fails_with_spec_message(cluster: Cluster, make_role: RoleFactory) -> None:
    role = make_role("carol")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        row = conn.execute("SELECT df.start('SELECT 1 WHERE false' |=> 'x' ~> 'SELECT $x')").fetchone()
        assert row is not None
        assert conn.execute("SELECT df.await_instance(%s, 30)", (row[0],)).fetchone() == ("failed",)
        error = conn.execute(
            "SELECT n.result #>> '{}' FROM df.nodes n JOIN df.instances i ON i.root_node = n.id"
            " AND i.id = n.instance_id WHERE i.id = %s",
            (row[0],),
        ).fetchone()
        assert error == ("$x has no rows — query returned zero results",)


def test_malformed_graph_is_rejected_and_nothing_written(cluster: Cluster, make_role: RoleFactory) -> None:
    role = make_role("dave")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="Unknown node_type 'NOPE'"):
            conn.execute("""SELECT df.start('{"node_type":"NOPE","query":"x"}')""")
        with pytest.raises(psycopg.errors.Error, match="Malformed Durofut JSON with node_type 'THEN'"):
            conn.execute(
                'SELECT df.start(\'{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"}}\')'
            )
        with pytest.raises(psycopg.errors.Error, match="result name 'not valid' is not a valid identifier"):
            conn.execute("SELECT df.start('SELECT 1' |=> 'not valid')")
        assert conn.execute("SELECT count(*) FROM df.instances").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM df.nodes").fetchone() == (0,)


def test_many_instances_with_worker_kills_apply_each_step_once(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory, dsn: str
) -> None:
    """200 instances x 10 SQL steps; SIGKILL workers mid-run; every step's row exists exactly once."""
    # Four kills 0.4 s apart can catch one step in flight three times (a recovered
    # instance is running again within milliseconds): poison detection is not
    # what this test is about (tests/chaos covers it).
    cluster = start_cluster(workers=2, args=("--poison-threshold", "100"))
    role = make_role("load")
    steps = 10
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        conn.execute("CREATE TABLE side (instance text NOT NULL, step int NOT NULL)")
        graph = " ~> ".join(
            f"'INSERT INTO side SELECT ''{{sys_instance_id}}'', {k} FROM pg_sleep(0.002)'"
            for k in range(steps)
        )
        ids = [
            str(r[0])
            for r in conn.execute(
                sql.SQL("SELECT df.start({}) FROM generate_series(1, 200)").format(sql.SQL(graph))
            ).fetchall()
        ]
        assert len(set(ids)) == 200
        kills = []
        for _ in range(4):
            time.sleep(0.4)
            done = sum(1 for s in statuses(conn, ids).values() if s in TERMINAL)
            if done == len(ids):
                break
            kills.append(cluster.kill_worker(signal.SIGKILL))
        final = wait_terminal(conn, ids, timeout=120)
        assert set(final.values()) == {"completed"}, cluster.log()[-3000:]
        duplicates = conn.execute(
            "SELECT instance, step, count(*) FROM side GROUP BY 1, 2 HAVING count(*) > 1"
        ).fetchall()
        assert duplicates == []
        assert conn.execute("SELECT count(*) FROM side").fetchone() == (200 * steps,)
        assert conn.execute("SELECT count(DISTINCT instance) FROM side").fetchone() == (200,)
    assert kills, "the run finished before any worker could be killed"
    cluster.check_alive()


def test_sigterm_drains_and_restart_resumes(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory
) -> None:
    cluster = start_cluster(workers=2)
    role = make_role("drain")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        conn.execute("CREATE TABLE side (instance text NOT NULL, step int NOT NULL)")
        graph = " ~> ".join(
            f"'INSERT INTO side SELECT ''{{sys_instance_id}}'', {k} FROM pg_sleep(0.3)'" for k in range(4)
        )
        ids = [
            str(r[0])
            for r in conn.execute(
                sql.SQL("SELECT df.start({}) FROM generate_series(1, 6)").format(sql.SQL(graph))
            ).fetchall()
        ]
        wait_for(
            lambda: conn.execute("SELECT count(*) FROM side").fetchone() != (0,),
            30,
            message="the first steps to run",
        )
        assert cluster.stop(signal.SIGTERM) == 0
        log = cluster.log()
        assert "stopping: finishing in-flight steps" in log
        assert "cluster stopped" in log
        # Drained: no partition is held, nothing is marked as in a worker's memory.
        assert conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1145241601"
        ).fetchone() == (0,)
        unfinished = [i for i, s in statuses(conn, ids).items() if s not in TERMINAL]
        assert unfinished, "everything finished before the stop; the test proves nothing"
        start_cluster(workers=2)
        final = wait_terminal(conn, ids, timeout=60)
        assert set(final.values()) == {"completed"}
        assert conn.execute("SELECT count(*), count(DISTINCT (instance, step)) FROM side").fetchone() == (
            24,
            24,
        )


def test_embedded_default_resumes_on_second_start(
    tmp_path: Any, start_embedded: Callable[..., Cluster]
) -> None:
    """`durable-cluster start` with no DSN: embedded PostgreSQL, stop, start again, work resumes."""
    first = start_embedded()
    out = wait_for(lambda: "connect:" in first.output() and first.output(), 30, message="the banner")
    app_dsn = out.split('connect:  psql "', 1)[1].split('"', 1)[0]
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE marks (instance text, at timestamptz DEFAULT now())")
        row = conn.execute(
            "SELECT df.start(df.sleep(2) ~> 'INSERT INTO marks VALUES (''{sys_instance_id}'')'"
            " ~> 'SELECT count(*) FROM marks')"
        ).fetchone()
        assert row is not None
        instance = str(row[0])
        wait_for(
            lambda: (
                conn.execute("SELECT status FROM df.instances WHERE id = %s", (instance,)).fetchone()
                == ("running",)
            ),
            30,
            message="the instance to run",
        )
    assert first.stop(signal.SIGINT) == 0
    assert "stopping the embedded PostgreSQL" in first.log()
    second = start_embedded()
    wait_for(lambda: "connect:" in second.output(), 30, message="the second banner")
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT df.await_instance(%s, 30)", (instance,)).fetchone() == ("completed",)
        assert conn.execute("SELECT count(*) FROM marks WHERE instance = %s", (instance,)).fetchone() == (1,)
    assert second.stop(signal.SIGTERM) == 0


@pytest.fixture
def start_embedded(tmp_path: Any) -> Any:
    from tests.fix_cluster import Cluster

    started: list[Cluster] = []

    def start() -> Cluster:
        cluster = Cluster(None, tmp_path, workers=2, args=("--data-dir", str(tmp_path / "data")))
        started.append(cluster)
        return cluster.start(wait=False)

    yield start
    for cluster in started:
        if cluster.process is not None and cluster.process.poll() is None:
            cluster.kill()
    # The embedded server outlives a SIGKILLed coordinator: stop it.
    from durable_cluster.embedded import EmbeddedPostgres

    EmbeddedPostgres(tmp_path / "data").stop("immediate")


def test_unreachable_database_is_retried_with_a_clear_message(
    start_cluster: Callable[..., Cluster], pg_server: Any, template_db: str
) -> None:
    name = f"late_{random.randrange(10**9)}"
    late_dsn = pg_server.db_dsn(name)
    cluster = start_cluster(workers=1, wait=False, database_dsn=late_dsn)
    wait_for(lambda: "cannot connect" in cluster.log(), 30, message="the retry message")
    assert f'database "{name}" does not exist' in cluster.log()
    cluster.check_alive()
    with pg_server.admin() as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    try:
        cluster.wait_ready(timeout=30)
    finally:
        cluster.stop()
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
