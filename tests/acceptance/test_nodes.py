"""Every node kind, run by a real cluster: results and statuses as pg_durable gives them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from tests import dfclient
from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.timeout(180)]


class User(dfclient.User):
    """A role of the test, with its own connection."""

    def scalar(self, query: str, *params: Any) -> Any:
        row = self.conn.execute(query, params or None).fetchone()
        assert row is not None
        return row[0]


@pytest.fixture
def user(cluster: Cluster, make_role: RoleFactory) -> Any:
    person = User.made(make_role, "nodes")
    yield person
    person.conn.close()


def rows(*values: Any) -> dict[str, Any]:
    return {"rows": [{"?column?": v} for v in values], "row_count": len(values)}


def test_then_if_and_named_results(user: User) -> None:
    assert user.run("'SELECT 1' ~> 'SELECT 2'") == ("completed", rows(2))
    assert user.run("('SELECT true' ?> 'SELECT ''yes''') !> 'SELECT ''no'''") == ("completed", rows("yes"))
    assert user.run("('SELECT 0' ?> 'SELECT ''yes''') !> 'SELECT ''no'''") == ("completed", rows("no"))
    assert user.run("df.if('SELECT ''f''', 'SELECT 1', 'SELECT 2')") == ("completed", rows(2))
    assert user.run("'SELECT 7 AS n' |=> 'a' ~> 'SELECT $a * 6'") == ("completed", rows(42))
    assert user.run("'SELECT 1 WHERE false' |=> 'e' ~> df.if_rows('e', 'SELECT 1', 'SELECT 2')") == (
        "completed",
        rows(2),
    )
    assert user.run("'SELECT ''it''''s'' AS s' |=> 'q' ~> 'SELECT $q || ''!'''") == (
        "completed",
        rows("it's!"),
    )


def test_join_and_race(user: User) -> None:
    status, result = user.run("'SELECT 1' & 'SELECT 2'")
    assert (status, result) == ("completed", [rows(1), rows(2)])
    status, result = user.run("df.join3('SELECT 1', 'SELECT 2', 'SELECT 3')")
    assert result == [rows(1), rows(2), rows(3)]
    # Names bound inside branches are visible after the JOIN.
    # All seven operators share one precedence level: parenthesise each name.
    assert user.run("(('SELECT 20' |=> 'a') & ('SELECT 22' |=> 'b')) ~> 'SELECT $a + $b'") == (
        "completed",
        rows(42),
    )
    # The first to finish wins; the slow loser is cancelled.
    instance = user.start("'SELECT ''fast''' | (df.sleep(30) ~> 'SELECT ''slow''')")
    assert user.await_(instance, 30) == "completed"
    assert user.result(instance) == rows("fast")
    failed = user.start("'SELECT 1' & 'SELECT nope'")
    assert user.await_(failed) == "failed"
    assert user.error(failed) == 'JOIN branch 2 failed: SQL execution failed: column "nope" does not exist'


def test_sleep_and_loops(user: User) -> None:
    assert user.run("df.sleep(1)") == ("completed", {"slept": True, "seconds": 1})
    user.conn.execute("CREATE TABLE c (x int)")
    started = time.monotonic()
    status, result = user.run(
        "@> ('INSERT INTO c VALUES (1)' ~> "
        "(('SELECT count(*) >= 3 FROM c' ?> df.break('done')) !> 'SELECT 0'))"
    )
    assert (status, result) == ("completed", "done")
    assert user.scalar("SELECT count(*) FROM c") == 3
    assert time.monotonic() - started >= 2  # at least 1 s per iteration after the first
    user.conn.execute("TRUNCATE c")
    status, result = user.run("df.loop('INSERT INTO c VALUES (2) RETURNING x', 'SELECT count(*) < 2 FROM c')")
    assert (status, result) == ("completed", {"rows": [{"x": 2}], "row_count": 1})
    assert user.scalar("SELECT count(*) FROM c") == 2
    # A non-root loop: the prefix runs once, the suffix once, names flow through.
    user.conn.execute("TRUNCATE c")
    status, result = user.run(
        "'INSERT INTO c VALUES (100)' ~> "
        "@> ('INSERT INTO c VALUES (1)' ~> (('SELECT count(*) >= 3 FROM c' ?> df.break('{\"n\": 2}')) "
        "!> 'SELECT 0')) |=> 'l' ~> 'SELECT count(*) FROM c'"
    )
    assert (status, result) == ("completed", {"rows": [{"count": 3}], "row_count": 1})
    assert user.scalar("SELECT count(*) FROM c WHERE x = 100") == 1
    broke = user.start("df.break('x')")
    assert user.await_(broke) == "failed"
    assert user.error(broke) == (
        "df.break() was called outside of a loop. df.break() may only be used inside df.loop()."
    )


def test_signals_are_a_mailbox(user: User) -> None:
    waiting = user.start("df.wait_for_signal('go') |=> 's' ~> 'SELECT $s.data'")
    wait_for(lambda: user.status(waiting) == "running", 30, message="the wait")
    assert user.scalar("SELECT df.signal(%s, 'go', '{\"n\": 1}')", waiting) == "OK"
    assert user.await_(waiting) == "completed"
    # In SQL, an object substitutes as quoted (compact) JSON text.
    assert user.result(waiting) == {"rows": [{"?column?": '{"n":1}'}], "row_count": 1}
    # Sent before the wait is reached: kept, consumed once.
    early = user.start("df.sleep(1) ~> df.wait_for_signal('go')")
    assert user.scalar("SELECT df.signal(%s, 'go', 'plain text')", early) == "OK"
    assert user.await_(early) == "completed"
    assert user.result(early) == {"signal_name": "go", "timed_out": False, "data": "plain text"}
    timed = user.start("df.wait_for_signal('never', 1)")
    assert user.await_(timed) == "completed"
    assert user.result(timed) == {"signal_name": "never", "timed_out": True, "data": None}
    with pytest.raises(psycopg.errors.RaiseException, match="Instance not found or access denied: 00000000"):
        user.conn.execute("SELECT df.signal('00000000', 'go')")


def test_cancel_stops_timers_and_waits(user: User) -> None:
    user.conn.execute("CREATE TABLE after (x int)")
    sleeping = user.start("df.sleep(60) ~> 'INSERT INTO after VALUES (1)'")
    waiting = user.start("df.wait_for_signal('x') ~> 'INSERT INTO after VALUES (2)'")
    looping = user.start("@> (df.sleep(5) ~> 'INSERT INTO after VALUES (3)')")
    for instance in (sleeping, waiting, looping):
        wait_for(lambda i=instance: user.status(i) == "running", 30, message="running")
        message = user.scalar("SELECT df.cancel(%s)", instance)
        assert message == f"Instance {instance} cancelled: Cancelled by user"
        assert user.status(instance) == "cancelled"
        assert user.await_(instance) == "cancelled"
    assert user.scalar("SELECT df.cancel(%s, 'again')", sleeping) == f"Instance {sleeping} cancelled: again"
    # The runtime lets go of them: no runtime rows remain, nothing ran after.
    time.sleep(1)
    assert user.scalar("SELECT count(*) FROM after") == 0
    assert user.status(sleeping) == "cancelled"


def test_variables_are_snapshotted_at_start(user: User) -> None:
    user.conn.execute("SELECT df.setvar('greeting', 'hello')")
    instance = user.start(
        "df.sleep(1) ~> 'SELECT ''{greeting}, {sys_label}'' AS g'",
    )
    user.conn.execute("SELECT df.setvar('greeting', 'changed')")
    assert user.await_(instance) == "completed"
    assert user.result(instance) == {"rows": [{"g": "hello, "}], "row_count": 1}
    labelled = user.scalar("SELECT df.start('SELECT ''{sys_instance_id}/{sys_label}'' AS s', 'lbl')")
    assert user.await_(labelled) == "completed"
    assert user.result(labelled) == {"rows": [{"s": f"{labelled}/lbl"}], "row_count": 1}


def test_helpers_refuse_to_run_inside_a_workflow(user: User) -> None:
    for call, message in [
        ("SELECT df.setvar(''a'', ''b'')", "df.setvar() cannot be called inside a workflow"),
        ("SELECT df.await_instance(''00000000'')", "df.await_instance() cannot be called inside a workflow"),
    ]:
        instance = user.start(f"'{call}'")
        assert user.await_(instance) == "failed"
        assert message in user.error(instance)


def test_schedules_use_the_worker_clock(
    start_cluster: Callable[..., Cluster],
    make_role: RoleFactory,
    tmp_path: Path,
    conn: psycopg.Connection[Any],
) -> None:
    clock = tmp_path / "clock"
    clock.write_text("0")
    start_cluster(workers=1, env={"DURABLE_CLOCK_FILE": str(clock)})
    user = User.made(make_role, "nodes")

    def timer_due(instance: str) -> float:
        row = wait_for(
            lambda: conn.execute(
                "SELECT (value->>'due')::float8 FROM durable.journal"
                " WHERE instance_id = %s AND kind = 'timer'",
                (instance,),
            ).fetchone(),
            30,
            message="the timer to be armed",
        )
        return float(row[0])

    try:
        # The next tick is computed when the node runs, on the worker's clock: a whole minute.
        scheduled = user.start("df.wait_for_schedule('* * * * *')")
        due = timer_due(scheduled)
        assert due % 60 == 0
        clock.write_text(str(due - time.time() + 0.1))  # move the worker's clock to the tick
        assert user.await_(scheduled, 30) == "completed"
        assert user.result(scheduled) == {"scheduled": True}
        # A long sleep passes when the clock moves on.
        instance = user.start("df.sleep(3600) ~> 'SELECT 1'")
        due = timer_due(instance)
        clock.write_text(str(due - time.time() + 0.1))
        assert user.await_(instance, 30) == "completed"
    finally:
        user.conn.close()


def test_steps_run_in_another_database(cluster: Cluster, make_role: RoleFactory, pg_server: Any) -> None:
    user = User.made(make_role, "nodes")
    other = f"other_{user.role}"
    with pg_server.admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
    try:
        instance = user.scalar("SELECT df.start('SELECT current_database()::text AS db', NULL, %s)", other)
        assert user.await_(instance) == "completed"
        assert user.result(instance) == {"rows": [{"db": other}], "row_count": 1}
        guarantee = user.scalar(
            "SELECT status_details->>'guarantee' FROM df.nodes WHERE instance_id = %s", instance
        )
        assert guarantee == "at-least-once"
        with pytest.raises(psycopg.errors.InvalidCatalogName, match='database "nope" does not exist'):
            user.conn.execute("SELECT df.start('SELECT 1', NULL, 'nope')")
    finally:
        user.conn.close()
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other)))
