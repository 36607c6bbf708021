"""Retries, timeouts, statement timeouts and cancelling SQL that is running."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.dfclient import root_error
from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.timeout(180)]


def start(conn: psycopg.Connection[Any], graph: str) -> str:
    row = conn.execute(f"SELECT df.start({graph})").fetchone()
    assert row is not None
    return str(row[0])


def running_sleeps(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%%' AND state = 'active'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_retry_until_success_records_each_attempt(cluster: Cluster, make_role: RoleFactory) -> None:
    role = make_role("retry")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE attempts")
        # Fails twice (nextval survives the rollback), then succeeds.
        flaky = "'SELECT 42 / (CASE WHEN nextval(''attempts'') < 3 THEN 0 ELSE 1 END) AS v'"
        instance = start(conn, f"df.retry({flaky}, 5, 0.2)")
        status = conn.execute("SELECT df.await_instance(%s, 60)", (instance,)).fetchone()
        assert status == ("completed",), root_error(conn, instance)
        result = conn.execute("SELECT df.result(%s)", (instance,)).fetchone()
        assert result is not None
        assert json.loads(result[0]) == {"rows": [{"v": 42}], "row_count": 1}
        details = conn.execute(
            "SELECT status_details FROM df.nodes WHERE instance_id = %s AND node_type = 'RETRY'", (instance,)
        ).fetchone()
        assert details is not None
        assert details[0]["attempt"] == 3
        assert details[0]["errors"] == [
            {"attempt": 1, "error": "SQL execution failed: division by zero"},
            {"attempt": 2, "error": "SQL execution failed: division by zero"},
        ]
        failing = start(conn, "df.retry('SELECT 1/0', 2, 0.1)")
        assert conn.execute("SELECT df.await_instance(%s, 60)", (failing,)).fetchone() == ("failed",)
        assert root_error(conn, failing) == "failed after 2 attempts: SQL execution failed: division by zero"


def test_timeout_fails_the_subgraph_and_cancels_its_sql(
    cluster: Cluster, make_role: RoleFactory, conn: psycopg.Connection[Any]
) -> None:
    role = make_role("timeout")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as user:
        instance = start(user, "df.timeout('SELECT pg_sleep(60)', 1)")
        wait_for(lambda: running_sleeps(conn) == 1, 30, message="the SQL step to run")
        assert user.execute("SELECT df.await_instance(%s, 60)", (instance,)).fetchone() == ("failed",)
        assert root_error(user, instance) == "df.timeout: did not finish within 1s"
        wait_for(lambda: running_sleeps(conn) == 0, 10, message="the server to cancel the statement")
        quick = start(user, "df.timeout('SELECT 5 AS v', 30)")
        assert user.execute("SELECT df.await_instance(%s, 60)", (quick,)).fetchone() == ("completed",)


def test_cancel_stops_a_running_statement(
    cluster: Cluster, make_role: RoleFactory, conn: psycopg.Connection[Any]
) -> None:
    role = make_role("cancelsql")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as user:
        user.execute("CREATE TABLE done (x int)")
        instance = start(user, "'SELECT pg_sleep(60)' ~> 'INSERT INTO done VALUES (1)'")
        wait_for(lambda: running_sleeps(conn) == 1, 30, message="the SQL step to run")
        user.execute("SELECT df.cancel(%s)", (instance,))
        wait_for(lambda: running_sleeps(conn) == 0, 10, message="the statement to be cancelled")
        assert user.execute("SELECT df.status(%s)", (instance,)).fetchone() == ("cancelled",)
        assert user.execute("SELECT count(*) FROM done").fetchone() == (0,)


def test_step_statement_timeout(start_cluster: Callable[..., Cluster], make_role: RoleFactory) -> None:
    start_cluster(workers=1, args=("--step-statement-timeout", "1"))
    role = make_role("stmt")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as user:
        instance = start(user, "'SELECT pg_sleep(10)'")
        assert user.execute("SELECT df.await_instance(%s, 60)", (instance,)).fetchone() == ("failed",)
        assert (
            root_error(user, instance) == "SQL execution failed: canceling statement due to statement timeout"
        )
