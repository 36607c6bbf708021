"""Identity (spec §3.1, §3.4, §2.3): who a step runs as, and what happens when that role changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from tests.fix_cluster import wait_for
from tests.security.conftest import (
    await_status,
    failures,
    ident,
    idle_step_connections,
    node_done,
    wait_parked,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory
    from tests.security.conftest import Conn, User

pytestmark = [pytest.mark.timeout(180)]

WHO = (
    "'SELECT session_user::text AS s, current_user::text AS c,"
    " (SELECT usename::text FROM pg_stat_activity WHERE pid = pg_backend_pid()) AS login,"
    " (SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()) AS app,"
    " current_setting(''df.in_workflow'') AS in_workflow'"
)


def who(role: str) -> dict[str, object]:
    row = {"s": role, "c": role, "login": role, "app": "durable-cluster step", "in_workflow": "true"}
    return {"rows": [row], "row_count": 1}


def superuser_name(conn: Conn) -> str:
    row = conn.execute("SELECT current_user::text").fetchone()
    assert row is not None
    return str(row[0])


def test_steps_run_on_a_login_as_the_submitter(
    cluster: Cluster, conn: Conn, users: Callable[..., User], make_role: RoleFactory
) -> None:
    alice, bob = users("alice"), users("bob")
    # df.start records current_user, and the step logs in as it.
    instance = alice.start(WHO)
    assert alice.scalar("SELECT submitted_by::text FROM df.instances WHERE id = %s", instance) == alice.role
    assert alice.await_(instance) == "completed"
    assert alice.result(instance) == who(alice.role)
    # SET ROLE before df.start: the instance is the new role's, and runs as it.
    conn.execute(sql.SQL("GRANT {} TO {}").format(ident(bob.role), ident(alice.role)))
    alice.conn.execute(sql.SQL("SET ROLE {}").format(ident(bob.role)))
    as_bob = alice.start(WHO)
    alice.conn.execute("RESET ROLE")
    assert bob.await_(as_bob) == "completed"
    assert bob.result(as_bob) == who(bob.role)
    assert alice.scalar("SELECT df.status(%s)", as_bob) is None
    # A NOLOGIN role cannot submit (its steps could never log in).
    group = make_role("nologin", login=False)
    conn.execute(sql.SQL("GRANT {} TO {}").format(ident(group), ident(alice.role)))
    alice.conn.execute(sql.SQL("SET ROLE {}").format(ident(group)))
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match=f'"{group}" does not have LOGIN privilege'
    ):
        alice.conn.execute("SELECT df.start('SELECT 1')")
    alice.conn.execute("RESET ROLE")


def test_security_definer_submissions_run_as_the_definer(
    cluster: Cluster, conn: Conn, users: Callable[..., User]
) -> None:
    alice, bob = users("alice"), users("bob")
    bob.conn.execute(
        "CREATE FUNCTION public.bob_start() RETURNS text LANGUAGE sql SECURITY DEFINER"
        " SET search_path = pg_catalog AS $$ SELECT df.start('SELECT session_user::text AS s') $$"
    )
    bob.conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION public.bob_start() TO {}").format(ident(alice.role)))
    instance = alice.scalar("SELECT public.bob_start()")
    assert bob.await_(instance) == "completed"
    assert bob.result(instance) == {"rows": [{"s": bob.role}], "row_count": 1}
    assert alice.scalar("SELECT df.status(%s)", instance) is None
    # A superuser's definer function is a superuser submission: refused.
    conn.execute(
        "CREATE FUNCTION public.root_start() RETURNS text LANGUAGE sql SECURITY DEFINER"
        " SET search_path = pg_catalog AS $$ SELECT df.start('SELECT 1') $$"
    )
    conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION public.root_start() TO {}").format(ident(alice.role)))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="superuser instances are disabled"):
        alice.conn.execute("SELECT public.root_start()")


def test_superuser_gate(cluster: Cluster, conn: Conn, users: Callable[..., User]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute("SELECT df.start('SELECT 1')")
    assert str(caught.value).startswith(
        f'pg_durable: superuser instances are disabled. current_user "{superuser_name(conn)}" is a superuser'
    )
    # A role made superuser after starting is refused when its instance is loaded again.
    alice = users("alice")
    instance = alice.start("df.wait_for_signal('go') ~> 'SELECT 1'")
    wait_parked(conn, instance)
    conn.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(ident(alice.role)))
    try:
        conn.execute("SELECT df.signal(%s, 'go')", (instance,))
        assert await_status(conn, instance) == "failed"
    finally:
        conn.execute(sql.SQL("ALTER ROLE {} NOSUPERUSER").format(ident(alice.role)))
    assert failures(conn, instance) == (
        f'pg_durable blocked instance {instance}: submitted_by role "{alice.role}" is a superuser, '
        "but pg_durable.enable_superuser_instances is off"
    )


def test_superuser_instances_when_enabled(start_cluster: Callable[..., Cluster], conn: Conn) -> None:
    start_cluster(args=("--enable-superuser-instances",))
    instance = conn.execute("SELECT df.start('SELECT session_user::text AS s')").fetchone()
    assert instance is not None
    assert await_status(conn, instance[0]) == "completed"
    result = conn.execute("SELECT df.result(%s)::jsonb", (instance[0],)).fetchone()
    assert result == ({"rows": [{"s": superuser_name(conn)}], "row_count": 1},)


def test_login_revoked_between_two_steps(
    start_cluster: Callable[..., Cluster], conn: Conn, users: Callable[..., User]
) -> None:
    """A pooled connection outlives ALTER ROLE ... NOLOGIN: the checkpoint refuses it (0007)."""
    start_cluster(workers=1)
    alice = users("alice")
    alice.conn.execute("CREATE TABLE public.after_nologin (x int)")
    instance = alice.start(
        "'SELECT 1' ~> df.wait_for_signal('go') ~> 'INSERT INTO public.after_nologin VALUES (1)'"
    )
    wait_for(lambda: node_done(conn, instance, "SELECT 1"), 30, message="the first step")
    wait_for(lambda: idle_step_connections(conn, alice.role) >= 1, 30, message="a pooled connection")
    conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident(alice.role)))
    conn.execute("SELECT df.signal(%s, 'go')", (instance,))
    assert await_status(conn, instance) == "failed"
    message = failures(conn, instance)
    assert f'role "{alice.role}" may no longer run steps of instance {instance}' in message
    assert "no longer has the LOGIN privilege" in message
    assert conn.execute("SELECT count(*) FROM public.after_nologin").fetchone() == (0,)
    # Without a pooled connection the login itself is refused.
    bob = users("bob")
    fresh = bob.start("df.wait_for_signal('go') ~> 'SELECT 1'")
    wait_parked(conn, fresh)
    conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident(bob.role)))
    conn.execute("SELECT df.signal(%s, 'go')", (fresh,))
    assert await_status(conn, fresh) == "failed"
    assert f'role "{bob.role}" is not permitted to log in' in failures(conn, fresh)


def test_dropped_role_fails_at_load(
    cluster: Cluster, conn: Conn, users: Callable[..., User], make_role: RoleFactory
) -> None:
    alice = users("alice")
    instance = alice.start("df.wait_for_signal('go') ~> 'SELECT 1'")
    wait_parked(conn, instance)
    alice.close()
    conn.execute(sql.SQL("DROP OWNED BY {}").format(ident(alice.role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(ident(alice.role)))
    make_role.created.remove(alice.role)
    conn.execute("SELECT df.signal(%s, 'go')", (instance,))
    assert await_status(conn, instance) == "failed"
    assert failures(conn, instance) == f"Instance {instance}: submitted_by role no longer exists in pg_roles"


def test_role_dropped_during_a_step(
    cluster: Cluster, dsn: str, conn: Conn, users: Callable[..., User], make_role: RoleFactory
) -> None:
    """The step's effects roll back: its checkpoint names the vanished role (0007)."""
    # Usage through PUBLIC (a legacy install), so only the role itself goes away.
    conn.execute("SELECT df.grant_usage('PUBLIC')")
    alice = users("alice", grant=False)
    conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(ident(alice.role)))
    conn.execute("CREATE TABLE public.effects (x int)")
    conn.execute("GRANT INSERT ON public.effects TO PUBLIC")
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")
        instance = alice.start(
            "'INSERT INTO public.effects SELECT 1 FROM (SELECT pg_advisory_xact_lock(4242)) l'"
        )
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted"
                ).fetchone()
                == (1,)
            ),
            30,
            message="the step to wait for the lock",
        )
        alice.close()
        conn.execute(sql.SQL("DROP ROLE {}").format(ident(alice.role)))
        make_role.created.remove(alice.role)
        holder.execute("SELECT pg_advisory_unlock(4242)")
        assert await_status(conn, instance) == "failed"
    message = failures(conn, instance)
    assert f"may no longer run steps of instance {instance}" in message
    assert "dropped" in message or "no longer exists" in message
    assert conn.execute("SELECT count(*) FROM public.effects").fetchone() == (0,)


def test_revoke_usage_mid_run(cluster: Cluster, conn: Conn, users: Callable[..., User]) -> None:
    alice = users("alice")
    conn.execute("CREATE TABLE public.after_revoke (x int)")
    conn.execute(sql.SQL("GRANT INSERT ON public.after_revoke TO {}").format(ident(alice.role)))
    instance = alice.start("df.wait_for_signal('go') ~> 'INSERT INTO public.after_revoke VALUES (1)'")
    wait_parked(conn, instance)
    conn.execute("SELECT df.revoke_usage(%s)", (alice.role,))
    conn.execute("SELECT df.signal(%s, 'go')", (instance,))
    assert await_status(conn, instance) == "failed"
    message = failures(conn, instance)
    assert "permission denied for schema df" in message or "may no longer run steps" in message
    assert conn.execute("SELECT count(*) FROM public.after_revoke").fetchone() == (0,)


def test_the_graph_is_frozen_at_start(cluster: Cluster, conn: Conn, users: Callable[..., User]) -> None:
    """Edits to df rows after start (here by a superuser) change neither what runs nor as whom."""
    alice, bob = users("alice"), users("bob")
    alice.conn.execute("SELECT df.setvar('v', 'original')")
    instance = alice.start("df.wait_for_signal('go') ~> 'SELECT current_user::text AS who, ''{v}'' AS v'")
    wait_parked(conn, instance)
    with conn.transaction():
        conn.execute(
            "UPDATE df.nodes SET query = 'SELECT ''tampered''::text AS who, ''x'' AS v'"
            " WHERE instance_id = %s AND node_type = 'SQL'",
            (instance,),
        )
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        conn.execute("UPDATE df.instances SET submitted_by = %s::regrole WHERE id = %s", (bob.role, instance))
        conn.execute(
            "UPDATE df.nodes SET submitted_by = %s::regrole WHERE instance_id = %s", (bob.role, instance)
        )
    alice.conn.execute("SELECT df.setvar('v', 'changed')")
    conn.execute("SELECT df.signal(%s, 'go')", (instance,))
    assert await_status(conn, instance) == "completed"
    result = conn.execute("SELECT df.result(%s)::jsonb", (instance,)).fetchone()
    assert result == ({"rows": [{"who": alice.role, "v": "original"}], "row_count": 1},)


def test_pooled_connections_are_reset_between_steps(
    start_cluster: Callable[..., Cluster], conn: Conn, users: Callable[..., User], make_role: RoleFactory
) -> None:
    start_cluster(workers=1)
    alice = users("alice")
    group = make_role("group", login=False)
    conn.execute(sql.SQL("GRANT {} TO {}").format(ident(group), ident(alice.role)))
    alice.conn.execute("CREATE TABLE public.pids (pid int)")
    alice.conn.execute(sql.SQL("GRANT INSERT ON public.pids TO {}").format(ident(group)))
    dirty = (
        "DO $$BEGIN INSERT INTO public.pids VALUES (pg_backend_pid());"
        f" SET ROLE {ident(group).as_string(conn)}; SET app.leak = 'x'; SET search_path = nowhere;"
        " CREATE TEMP TABLE leak (x int); PERFORM pg_advisory_lock(99); END$$"
    )
    probe = (
        "SELECT current_user::text AS c, current_setting('app.leak', true) AS g,"
        " current_setting('search_path') AS p, to_regclass('pg_temp.leak') IS NULL AS no_temp,"
        " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,"
        " pg_backend_pid() AS pid"
    )
    graph = sql.SQL("{} ~> {}").format(sql.Literal(dirty), sql.Literal(probe)).as_string(conn)
    instance = alice.start(graph)
    assert alice.await_(instance) == "completed", failures(conn, instance)
    (row,) = alice.result(instance)["rows"]
    pid = row.pop("pid")
    assert row == {"c": alice.role, "g": "", "p": '"$user", public', "no_temp": True, "locks": 0}
    # The same server process ran both steps: the reset, not a new login, cleaned it.
    assert alice.scalar("SELECT array_agg(pid) FROM public.pids") == [pid]


def test_login_revoked_before_an_autocommit_step(
    start_cluster: Callable[..., Cluster], conn: Conn, users: Callable[..., User]
) -> None:
    start_cluster(workers=1)
    alice = users("alice")
    alice.conn.execute("CREATE TABLE public.committed (x int)")
    alice.conn.execute(
        "CREATE PROCEDURE public.commit_one() LANGUAGE plpgsql"
        " AS $$BEGIN INSERT INTO public.committed VALUES (1); COMMIT; END$$"
    )
    instance = alice.start("'SELECT 1' ~> df.wait_for_signal('go') ~> 'CALL public.commit_one()'")
    wait_for(lambda: node_done(conn, instance, "SELECT 1"), 30, message="the first step")
    wait_for(lambda: idle_step_connections(conn, alice.role) >= 1, 30, message="a pooled connection")
    conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident(alice.role)))
    conn.execute("SELECT df.signal(%s, 'go')", (instance,))
    outcome = await_status(conn, instance)
    assert conn.execute("SELECT count(*) FROM public.committed").fetchone() == (0,)
    assert outcome == "failed"
