"""Escalation attempts from inside steps; the search_path pinning that defeats hijacks (spec §3.1, §3.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from tests.security.conftest import failures, ident

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.fix_cluster import Cluster
    from tests.security.conftest import Conn, User

pytestmark = [pytest.mark.timeout(180)]


def run(user: User, step: str, timeout: int = 60) -> tuple[str, str]:
    """Run one SQL step as ``user``; return (status, instance id)."""
    instance = user.start(sql.Literal(step).as_string(user.conn))
    return user.await_(instance, timeout), instance


def test_role_changes_inside_steps_gain_nothing(
    cluster: Cluster, conn: Conn, users: Callable[..., User]
) -> None:
    alice, bob = users("alice"), users("bob")
    runtime = conn.execute("SELECT current_user::text").fetchone()
    assert runtime is not None
    superuser = ident(str(runtime[0])).as_string(conn)
    alice.conn.execute("CREATE TABLE public.probe (what text, cur text, sess text, super boolean)")
    record = (
        "INSERT INTO public.probe SELECT '{what}', current_user, session_user,"
        " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    )
    for what, change in (
        ("reset role", "RESET ROLE"),
        ("session default", "SET SESSION AUTHORIZATION DEFAULT"),
        ("reset all", "RESET ALL"),
    ):
        status, instance = run(alice, f"DO $$BEGIN {change}; {record.format(what=what)}; END$$")
        assert status == "completed", failures(conn, instance)
    assert alice.scalar("SELECT array_agg(DISTINCT (cur, sess, super)::text) FROM public.probe") == [
        f"({alice.role},{alice.role},f)"
    ]
    assert alice.scalar("SELECT count(*) FROM public.probe") == 3
    for step, message in (
        (f"SET ROLE {superuser}", f'permission denied to set role "{runtime[0]}"'),
        (f"SET ROLE {ident(bob.role).as_string(conn)}", f'permission denied to set role "{bob.role}"'),
        (f"SET SESSION AUTHORIZATION {superuser}", "permission denied to set session authorization"),
        (
            f"SELECT set_config('role', {sql.Literal(str(runtime[0])).as_string(conn)}, false)",
            "permission denied to set role",
        ),
        ("ALTER ROLE CURRENT_USER SUPERUSER", "ALTER ROLE"),
    ):
        status, instance = run(alice, step)
        assert status == "failed"
        if message == "ALTER ROLE":  # the wording changed in PostgreSQL 16
            assert "permission denied to alter role" in failures(conn, instance) or "must be superuser" in (
                failures(conn, instance)
            )
        else:
            assert message in failures(conn, instance), step
    assert alice.scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False


def test_steps_cannot_forge_checkpoints_or_write_runtime_tables(
    cluster: Cluster, conn: Conn, users: Callable[..., User]
) -> None:
    alice, bob = users("alice"), users("bob")
    victim = bob.start("df.wait_for_signal('go') ~> 'SELECT 1'")
    alice.conn.execute("CREATE TABLE public.forged (partition int, epoch int)")
    # Every partition, several epochs, the instance's own id and the victim's: the
    # fence needs the worker's per-claim secret, which no step sees.
    guess = (
        "DO $$DECLARE p int; e int; i text; BEGIN"
        " FOREACH i IN ARRAY ARRAY['{sys_instance_id}', '" + victim + "'] LOOP"
        " FOR p IN 0..7 LOOP FOR e IN 0..20 LOOP BEGIN"
        "  PERFORM df._checkpoint_v1(i, p, e, ''::bytea, 'forged', '{}'::jsonb, 'exactly-once');"
        "  INSERT INTO public.forged VALUES (p, e);"
        " EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END LOOP; END LOOP; END$$"
    )
    status, instance = run(alice, guess)
    assert status == "completed", failures(conn, instance)
    assert alice.scalar("SELECT count(*) FROM public.forged") == 0
    assert conn.execute("SELECT count(*) FROM durable.journal WHERE step_key = 'forged'").fetchone() == (0,)
    attempts = (
        ("SELECT * FROM durable.partitions", "permission denied for schema durable"),
        (
            "INSERT INTO durable.journal (instance_id, step_key, kind)"
            " VALUES ('{sys_instance_id}', 'x', 'step')",
            "permission denied for schema durable",
        ),
        ("SELECT durable.fence_v1(0, 1, ''::bytea)", "permission denied for schema durable"),
        (
            "UPDATE df.nodes SET result = '\"forged\"' WHERE instance_id = '{sys_instance_id}'",
            "permission denied for table nodes",
        ),
        (
            "UPDATE df.instances SET status = 'completed' WHERE id = '{sys_instance_id}'",
            "only the runtime sets an instance's status",
        ),
        ("DELETE FROM df.instances WHERE id = '{sys_instance_id}'", "permission denied for table instances"),
        ("SELECT df._submit_v1('" + victim + "')", "was not created by this transaction"),
        ("SELECT df._signal_v1('" + victim + "', 'go', '{}')", "was not touched by this transaction"),
        ("SELECT df._cancelled_v1('" + victim + "', 'x')", "was not cancelled by this transaction"),
        ("SELECT * FROM df._worker_epoch", "permission denied for table _worker_epoch"),
    )
    for step, message in attempts:
        status, instance = run(alice, step)
        assert status == "failed", step
        assert message in failures(conn, instance), step
    # A step sees only its role's rows.
    status, instance = run(alice, "SELECT count(*) AS n FROM df.instances WHERE id = '" + victim + "'")
    assert alice.result(instance) == {"rows": [{"n": 0}], "row_count": 1}
    assert bob.scalar("SELECT df.signal(%s, 'go')", victim) == "OK"
    assert bob.await_(victim) == "completed"


def test_search_path_tricks_do_not_reach_definer_functions(
    cluster: Cluster, conn: Conn, users: Callable[..., User]
) -> None:
    """Operators and functions planted ahead of pg_catalog never run inside df or durable functions."""
    alice = users("alice")
    alice.conn.execute("CREATE TABLE public.hijacked (cur text)")
    alice.conn.execute("GRANT INSERT ON public.hijacked TO PUBLIC")
    body = "BEGIN INSERT INTO public.hijacked VALUES (current_user); RETURN {}; END"
    plants = [
        ("eq_text", "a text, b text", "boolean", "a OPERATOR(pg_catalog.=) b"),
        ("eq_oid", "a oid, b oid", "boolean", "a OPERATOR(pg_catalog.=) b"),
        ("eq_int", "a integer, b integer", "boolean", "a OPERATOR(pg_catalog.=) b"),
        ("eq_bigint", "a bigint, b bigint", "boolean", "a OPERATOR(pg_catalog.=) b"),
        ("eq_bytea", "a bytea, b bytea", "boolean", "a OPERATOR(pg_catalog.=) b"),
    ]
    for name, args, returns, value in plants:
        alice.conn.execute(
            f"CREATE FUNCTION public.{name}({args}) RETURNS {returns} LANGUAGE plpgsql"
            f" AS $f${body.format(value)}$f$".encode()
        )
        left, right = (a.split()[1] for a in args.split(", "))
        operator = (
            f"CREATE OPERATOR public.= (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = public.{name})"
        )
        alice.conn.execute(operator.encode())
    for name, args, returns, value in (
        ("sha256", "bytea", "bytea", "pg_catalog.sha256($1)"),
        ("now", "", "timestamptz", "pg_catalog.now()"),
    ):
        alice.conn.execute(
            f"CREATE FUNCTION public.{name}({args}) RETURNS {returns} LANGUAGE plpgsql"
            f" AS $f${body.format(value)}$f$".encode()
        )
    # The planted objects do work for a caller who puts public first...
    with alice.conn.transaction():
        alice.conn.execute("SET LOCAL search_path = public, pg_catalog")
        assert alice.scalar("SELECT 'a'::text = 'a'::text") is True
    assert alice.scalar("SELECT count(*) FROM public.hijacked") == 1
    alice.conn.execute("TRUNCATE public.hijacked")
    # ...but not inside df.start, df._submit_v1 and the rest of the client surface...
    with alice.conn.transaction():
        alice.conn.execute("SET LOCAL search_path = public, pg_catalog")
        instance = alice.start("'SELECT 1' ~> 'SELECT 2'")
        alice.conn.execute("SELECT df.setvar('x', 'y')")
        alice.conn.execute("SELECT df.status(%s)", (instance,))
        alice.conn.execute("SELECT df.explain(%s)", (instance,))
    assert alice.scalar("SELECT count(*) FROM public.hijacked") == 0
    # ...nor in the checkpoint that runs in a step's own transaction, after the step
    # moved public ahead of pg_catalog for that transaction.
    step = "SELECT set_config('search_path', 'public, pg_catalog', true) AS path"
    status, run_id = run(alice, step)
    assert status == "completed", failures(conn, run_id)
    assert conn.execute(
        "SELECT status_details->>'guarantee' FROM df.nodes WHERE instance_id = %s", (run_id,)
    ).fetchone() == ("exactly-once",)
    assert alice.await_(instance) == "completed"
    assert conn.execute("SELECT count(*) FROM public.hijacked").fetchone() == (0,)


def test_every_function_pins_search_path(conn: Conn) -> None:
    """pg_proc.proconfig of every df and durable function (extension C functions aside)."""
    unpinned = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " WHERE p.pronamespace IN ('df'::regnamespace, 'durable'::regnamespace)"
        "   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass"
        "                    AND d.objid = p.oid AND d.deptype = 'e')"
        "   AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)"
    ).fetchall()
    assert unpinned == []
    definers = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " WHERE p.pronamespace IN ('df'::regnamespace, 'durable'::regnamespace) AND p.prosecdef"
        "   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass"
        "                    AND d.objid = p.oid AND d.deptype = 'e')"
        " ORDER BY 1"
    ).fetchall()
    # The reviewed SECURITY DEFINER entry points (docs/security.md); a new one needs a review.
    assert [r[0] for r in definers] == sorted(
        [
            "df._cancelled_v1(text,text)",
            "df._checkpoint_v1(text,integer,bigint,bytea,text,jsonb,text)",
            "df._setting(text)",
            "df._signal_v1(text,text,jsonb)",
            "df._start_new_v1(text,text,text,text)",
            "df._submit_v1(text)",
            "df.metrics()",
            "df.version()",
        ]
    )


def test_table_expressions_use_only_trusted_schemas(conn: Conn) -> None:
    """Policies, constraints, defaults and triggers on df tables reference pg_catalog, df or durable only."""
    foreign = conn.execute(
        "SELECT d.classid::regclass::text, d.refclassid::regclass::text,"
        "       coalesce(p.oid::regprocedure::text, o.oid::regoperator::text)"
        "  FROM pg_depend d"
        "  LEFT JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid"
        "  LEFT JOIN pg_operator o ON d.refclassid = 'pg_operator'::regclass AND o.oid = d.refobjid"
        " WHERE d.classid IN ('pg_policy'::regclass, 'pg_constraint'::regclass, 'pg_attrdef'::regclass,"
        "                     'pg_trigger'::regclass)"
        "   AND d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass)"
        "   AND coalesce(p.pronamespace, o.oprnamespace) NOT IN"
        "       ('pg_catalog'::regnamespace, 'df'::regnamespace, 'durable'::regnamespace)"
    ).fetchall()
    assert foreign == []
    policies = conn.execute(
        "SELECT polrelid::regclass::text, pg_get_expr(polqual, polrelid) FROM pg_policy"
        " WHERE polrelid IN ('df.instances'::regclass, 'df.nodes'::regclass, 'df.vars'::regclass)"
    ).fetchall()
    assert len(policies) == 3
    for table, expression in policies:
        assert "quote_ident((CURRENT_USER)::text)" in expression, table


def test_step_connections_are_not_shared_between_roles(
    cluster: Cluster, conn: Conn, users: Callable[..., User]
) -> None:
    alice, bob = users("alice"), users("bob")
    step = "SELECT session_user::text AS s, current_user::text AS c"
    for _ in range(3):
        for user in (alice, bob):
            status, instance = run(user, step)
            assert status == "completed", failures(conn, instance)
            assert user.result(instance) == {"rows": [{"s": user.role, "c": user.role}], "row_count": 1}
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        bob.conn.execute(sql.SQL("SET ROLE {}").format(ident(alice.role)))
