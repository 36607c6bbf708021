"""df.start(..., transaction_mode => 'new'): the start survives the caller's rollback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest

if TYPE_CHECKING:
    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.timeout(120)]


def test_new_mode_survives_a_rollback_and_runs(cluster: Cluster, make_role: RoleFactory) -> None:
    role = make_role("newmode")
    with psycopg.connect(make_role.dsn(role)) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.commit()
        with conn.transaction(force_rollback=True):
            row = conn.execute("SELECT df.start('INSERT INTO t VALUES (7)', 'kept', NULL, 'new')").fetchone()
            assert row is not None
            kept = str(row[0])
            lost = conn.execute("SELECT df.start('INSERT INTO t VALUES (8)')").fetchone()
            assert lost is not None
        conn.autocommit = True
        assert conn.execute("SELECT df.await_instance(%s)", (kept,)).fetchone() == ("completed",)
        assert conn.execute("SELECT label FROM df.instances WHERE id = %s", (kept,)).fetchone() == ("kept",)
        assert conn.execute("SELECT count(*) FROM df.instances WHERE id = %s", (lost[0],)).fetchone() == (0,)
        assert conn.execute("SELECT array_agg(x) FROM t").fetchone() == ([7],)


def test_new_mode_launch_limit(
    cluster: Cluster, make_role: RoleFactory, conn: psycopg.Connection[Any]
) -> None:
    role = make_role("slots")
    # Occupy both launch slots from another session.
    for slot in (1, 2):
        assert conn.execute("SELECT pg_try_advisory_lock(1346847814, %s)", (slot,)).fetchone() == (True,)
    with psycopg.connect(make_role.dsn(role), autocommit=True) as user:
        with pytest.raises(psycopg.errors.RaiseException) as raised:
            user.execute("SELECT df.start('SELECT 1', NULL, NULL, 'new')")
        assert str(raised.value).splitlines()[0] == (
            "pg_durable: transaction_mode => 'new' launch limit reached (max_new_transaction_starts=2). "
            "Timed out after 5s waiting for a launch slot before opening the loopback session."
        )
        assert user.execute("SELECT count(*) FROM df.instances").fetchone() == (0,)
        with pytest.raises(psycopg.errors.RaiseException, match='invalid transaction_mode "later"'):
            user.execute("SELECT df.start('SELECT 1', NULL, NULL, 'later')")


def test_new_mode_is_refused_inside_a_workflow(cluster: Cluster, make_role: RoleFactory) -> None:
    role = make_role("nested")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as conn:
        row = conn.execute("SELECT df.start('SELECT df.start(''SELECT 1'', NULL, NULL, ''new'')')").fetchone()
        assert row is not None
        assert conn.execute("SELECT df.await_instance(%s)", (row[0],)).fetchone() == ("failed",)
        error = conn.execute(
            "SELECT n.result #>> '{}' FROM df.nodes n JOIN df.instances i ON i.root_node = n.id"
            " AND i.id = n.instance_id WHERE i.id = %s",
            (row[0],),
        ).fetchone()
        assert error is not None
        assert "transaction_mode => 'new' cannot be called inside a workflow" in error[0]
