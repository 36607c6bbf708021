"""SIGKILL a worker at every checkpoint boundary in turn: nothing lost, nothing applied twice."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from durable_cluster.testing import POINTS, kill_at_every_checkpoint
from tests.dfclient import root_error
from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

STEPS = 4
PLUGIN = """
from durable_cluster import hookimpl

async def record(ctx):
    async with ctx.connection() as conn:
        await conn.execute(
            "INSERT INTO effects VALUES (%s, %s)", (ctx.instance_id, ctx.args["n"]))
        await conn.commit()
    return {"n": ctx.args["n"]}

@hookimpl
def durable_register_steps(registry):
    registry.add("record", record)
"""


def _setup(make_role: RoleFactory) -> str:
    role = make_role("chaos")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        conn.execute("CREATE TABLE effects (instance text NOT NULL, n int NOT NULL)")
    return make_role.dsn(role)


def _effects(conn: psycopg.Connection[Any], instance: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT n::text, count(*)::int FROM effects WHERE instance = %s GROUP BY 1", (instance,)
    ).fetchall()
    return {str(k): int(v) for k, v in rows}


def _expected(_instance: str) -> set[str]:
    return {str(n) for n in range(STEPS)}


def test_sql_steps_are_exactly_once_at_every_kill_point(
    dsn: str, make_role: RoleFactory, tmp_path: Path
) -> None:
    role_dsn = _setup(make_role)
    graph = " ~> ".join(f"'INSERT INTO effects VALUES (''{{sys_instance_id}}'', {n})'" for n in range(STEPS))

    def submit(conn: psycopg.Connection[Any]) -> str:
        row = conn.execute(f"SELECT df.start({graph})").fetchone()
        assert row is not None
        return str(row[0])

    report = kill_at_every_checkpoint(
        dsn=dsn, role_dsn=role_dsn, submit=submit, effects=_effects, expected=_expected, work_dir=tmp_path
    )
    assert report.ok, report.summary()
    crashed_points = {run.point for run in report.runs if run.crashed}
    assert crashed_points == set(POINTS), report.summary()
    assert report.crashes >= STEPS


def test_custom_steps_are_at_least_once_and_never_rerun_after_their_checkpoint(
    dsn: str, make_role: RoleFactory, tmp_path: Path
) -> None:
    role_dsn = _setup(make_role)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "record.py").write_text(PLUGIN)
    graph = " ~> ".join(f"df.step('record', '{{\"n\": {n}}}')" for n in range(STEPS))

    def submit(conn: psycopg.Connection[Any]) -> str:
        row = conn.execute(f"SELECT df.start({graph})").fetchone()
        assert row is not None
        return str(row[0])

    report = kill_at_every_checkpoint(
        dsn=dsn,
        role_dsn=role_dsn,
        submit=submit,
        effects=_effects,
        expected=_expected,
        points=("before_step", "before_checkpoint_commit", "after_checkpoint_commit"),
        cluster_args=("--plugins-dir", str(plugins)),
        at_least_once=True,
        work_dir=tmp_path / "runs",
    )
    assert report.ok, report.summary()
    by_point: dict[str, list[dict[str, int]]] = {}
    for run in report.runs:
        if not run.crashed:
            continue
        with psycopg.connect(role_dsn) as conn:
            by_point.setdefault(run.point, []).append(_effects(conn, run.instance_id))
    for point, runs in by_point.items():
        for counts in runs:
            # One kill re-runs at most the one step that was in flight, and only once.
            assert sum(counts.values()) <= STEPS + 1, (point, counts)
    # Killed before the step ran: it runs once, after recovery.
    assert all(set(c.values()) == {1} for c in by_point["before_step"]), by_point
    # Killed after the step's effect but before its checkpoint committed: it runs again.
    assert any(2 in c.values() for c in by_point["before_checkpoint_commit"]), by_point


POISON = """
import os, signal
from durable_cluster import hookimpl

def die(ctx):
    os.kill(os.getpid(), signal.SIGKILL)

@hookimpl
def durable_register_steps(registry):
    registry.add("die", die)
"""


def test_a_step_that_kills_its_worker_fails_its_instance(
    start_cluster: Any, make_role: RoleFactory, tmp_path: Path
) -> None:
    plugins = tmp_path / "poison"
    plugins.mkdir()
    (plugins / "die.py").write_text(POISON)
    cluster = start_cluster(workers=1, args=("--plugins-dir", str(plugins), "--poison-threshold", "3"))
    role = make_role("poison")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        healthy = conn.execute("SELECT df.start(df.sleep(1) ~> 'SELECT 1')").fetchone()
        poison = conn.execute("SELECT df.start('SELECT 1' ~> df.step('die'))").fetchone()
        assert healthy is not None
        assert poison is not None
        assert conn.execute("SELECT df.await_instance(%s, 120)", (poison[0],)).fetchone() == ("failed",)
        error = root_error(conn, poison[0])
        assert (
            error
            == (
                "step 'die' (node "
                + conn.execute(
                    "SELECT id FROM df.nodes WHERE instance_id = %s AND node_type = 'STEP'", (poison[0],)
                ).fetchone()[0]  # type: ignore[index]
                + ") was running when its worker died 3 times in a row; failed instead of crashing more"
                " workers (--poison-threshold 3)"
            )
        )
        assert conn.execute("SELECT df.await_instance(%s, 60)", (healthy[0],)).fetchone() == ("completed",)
    assert cluster.log().count("was killed by SIGKILL") == 3
    cluster.check_alive()


def test_a_sql_step_queued_for_an_execution_slot_is_not_blamed_for_crashes(
    start_cluster: Any, make_role: RoleFactory
) -> None:
    """Poison detection counts a SQL step only once it holds an execution slot.

    One slot: the long step holds it, the short one queues behind it. Two kills
    later the long step is poison (threshold 2); the short one never ran, so it
    completes.
    """
    cluster = start_cluster(workers=1, args=("--max-user-connections", "1", "--poison-threshold", "2"))
    role = make_role("queued")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:

        def sleeping_backends() -> set[int]:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename = %s AND query = 'SELECT pg_sleep(60)'"
                " AND state = 'active'",
                (role,),
            ).fetchall()
            return {int(r[0]) for r in rows}

        long = conn.execute("SELECT df.start('SELECT pg_sleep(60)')").fetchone()
        assert long is not None
        wait_for(sleeping_backends, 30, message="the long step to run")
        short = conn.execute("SELECT df.start('SELECT 42')").fetchone()
        assert short is not None
        seen: set[int] = set()

        def new_sleepers() -> set[int]:
            return sleeping_backends() - seen

        for _ in range(2):
            seen.update(wait_for(new_sleepers, 30, message="the long step to run (again)"))
            wait_for(
                lambda: (
                    conn.execute("SELECT status FROM df.instances WHERE id = %s", (short[0],)).fetchone()
                    == ("running",)
                ),
                30,
                message="the short step to be taken up",
            )
            cluster.kill_worker(signal.SIGKILL)
        assert conn.execute("SELECT df.await_instance(%s, 60)", (short[0],)).fetchone() == ("completed",)
        result = conn.execute("SELECT df.result(%s)::jsonb", (short[0],)).fetchone()
        assert result == ({"rows": [{"?column?": 42}], "row_count": 1},)
        assert conn.execute("SELECT df.await_instance(%s, 60)", (long[0],)).fetchone() == ("failed",)
        error = root_error(conn, long[0])
        assert "was running when its worker died 2 times in a row" in error
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (sorted(seen),))
