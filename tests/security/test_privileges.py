"""Privileges (spec §3.2): nothing to PUBLIC, grant_usage/revoke_usage grant exactly the bundle."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.fix_db import RoleFactory, Server
    from tests.security.conftest import Conn, User

SENSITIVE = (
    "df.http(text,text,text,jsonb,integer)",
    "df.http_multipart(text,text,jsonb,jsonb,integer)",
    "df.metrics()",
    "df.grant_usage(text,boolean,boolean)",
    "df.revoke_usage(text)",
)
HTTP = SENSITIVE[:2]
ADMIN = SENSITIVE[2:]
INSTANCE_INSERT = ("id", "label", "root_node", "submitted_by", "database")
NODE_INSERT = (
    "id",
    "instance_id",
    "node_type",
    "query",
    "result_name",
    "left_node",
    "right_node",
    "submitted_by",
    "database",
)

# Every privilege held by a grantee (0 = PUBLIC) on the objects of df, durable
# and _duroxide: (object, privilege, grantable).
PRIVILEGES = """
WITH target AS (SELECT %(grantee)s::oid AS grantee),
schemas AS (
    SELECT 'schema ' || n.nspname AS object, a.privilege_type, a.is_grantable
      FROM pg_namespace n, aclexplode(n.nspacl) a, target t
     WHERE n.nspname IN ('df', 'durable', '_duroxide') AND a.grantee = t.grantee),
relations AS (
    SELECT c.oid::regclass::text, a.privilege_type, a.is_grantable
      FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a, target t
     WHERE c.relnamespace IN ('df'::regnamespace, 'durable'::regnamespace, '_duroxide'::regnamespace)
       AND c.relkind IN ('r', 'v', 'S', 'p', 'f') AND a.grantee = t.grantee),
columns AS (
    SELECT c.oid::regclass::text || '.' || att.attname, a.privilege_type, a.is_grantable
      FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a, target t
     WHERE c.relnamespace IN ('df'::regnamespace, 'durable'::regnamespace, '_duroxide'::regnamespace)
       AND a.grantee = t.grantee),
functions AS (
    SELECT p.oid::regprocedure::text, a.privilege_type, a.is_grantable
      FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a, target t
     WHERE p.pronamespace IN ('df'::regnamespace, 'durable'::regnamespace) AND a.grantee = t.grantee),
wrappers AS (
    SELECT 'fdw ' || w.fdwname, a.privilege_type, a.is_grantable
      FROM pg_foreign_data_wrapper w, aclexplode(coalesce(w.fdwacl, acldefault('F', w.fdwowner))) a, target t
     WHERE a.grantee = t.grantee)
SELECT * FROM schemas UNION ALL SELECT * FROM relations UNION ALL SELECT * FROM columns
UNION ALL SELECT * FROM functions UNION ALL SELECT * FROM wrappers
"""


def privileges(conn: Conn, role: str | None) -> set[tuple[str, str, bool]]:
    """(object, privilege, grantable) held by ``role`` (None: PUBLIC)."""
    if role is None:
        grantee = 0
    else:
        row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        assert row is not None
        grantee = int(row[0])
    rows = conn.execute(PRIVILEGES, {"grantee": grantee}).fetchall()
    return {(str(o), str(p), bool(g)) for o, p, g in rows}


def bundle(*, include_http: bool = False, with_grant: bool = False) -> set[tuple[str, str, bool]]:
    """The spec's grant_usage bundle (§3.2)."""
    g = with_grant
    expected = {
        ("schema df", "USAGE", g),
        ("df.instances", "SELECT", g),
        ("df.instances.status", "UPDATE", g),
        ("df.instances.updated_at", "UPDATE", g),
        ("df.nodes", "SELECT", g),
        *(("df.vars", p, g) for p in ("SELECT", "INSERT", "UPDATE", "DELETE")),
        *((f"df.instances.{c}", "INSERT", g) for c in INSTANCE_INSERT),
        *((f"df.nodes.{c}", "INSERT", g) for c in NODE_INSERT),
    }
    if include_http:
        expected |= {(f, "EXECUTE", g) for f in HTTP}
    if with_grant:
        expected |= {(f, "EXECUTE", g) for f in ADMIN}
    return expected


def public_functions(conn: Conn) -> set[str]:
    return {o for o, p, _ in privileges(conn, None) if p == "EXECUTE"}


def test_init_grants_nothing_to_public(pg_server: Server, tmp_path: Any) -> None:
    """`durable-cluster init` on an empty database: PUBLIC gets only the readiness probe."""
    name = f"sec_init_{uuid.uuid4().hex[:8]}"
    with pg_server.admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = pg_server.db_dsn(name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
        done = subprocess.run(
            [sys.executable, "-m", "durable_cluster", "init", "--dsn", dsn],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        with psycopg.connect(dsn, autocommit=True) as conn:
            granted = privileges(conn, None)
            # df functions keep PostgreSQL's default EXECUTE (pg_durable does too):
            # without USAGE on schema df nobody can name them (test below).
            not_df_functions = {
                (o, p, g) for o, p, g in granted if not (p == "EXECUTE" and o.startswith("df."))
            }
            assert not_df_functions == {
                ("schema _duroxide", "USAGE", False),
                ("_duroxide._worker_ready", "SELECT", False),
            }
            assert not set(SENSITIVE) & public_functions(conn)
            default_acls = conn.execute(
                "SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a WHERE a.grantee = 0"
            ).fetchone()
            assert default_acls == (0,)
    finally:
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_sensitive_functions_are_not_executable_by_public(conn: Conn) -> None:
    executable = public_functions(conn)
    for signature in SENSITIVE:
        assert signature not in executable
        assert conn.execute(
            "SELECT has_function_privilege('public', %s::regprocedure, 'EXECUTE')", (signature,)
        ).fetchone() == (False,)
    # Nothing in the private schema, the dblink functions installed there included.
    assert {f for f in executable if f.startswith("durable.")} == set()
    assert conn.execute(
        "SELECT count(*) FROM pg_proc"
        " WHERE pronamespace = 'durable'::regnamespace AND proname LIKE 'dblink%%'"
    ).fetchone() != (0,), "dblink is expected in schema durable (0006)"


def _calls(conn: Conn) -> list[str]:
    """A call with NULL arguments for every function in schema df."""
    rows = conn.execute(
        "SELECT p.proname, array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t)"
        " FROM pg_proc p WHERE p.pronamespace = 'df'::regnamespace AND p.prokind = 'f' ORDER BY 1"
    ).fetchall()
    calls = []
    for name, types in rows:
        args = ", ".join(f"NULL::{t}" for t in types)
        calls.append(f"SELECT df.{sql.Identifier(name).as_string(conn)}({args})")
    return calls


def test_a_role_without_usage_reaches_nothing(conn: Conn, users: Callable[..., User]) -> None:
    outsider = users("outsider", grant=False)
    calls = _calls(conn)
    assert len(calls) > 80
    for call in calls:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for schema df"):
            outsider.conn.execute(call.encode())
    for table in ("df.instances", "df.nodes", "df.vars", "df._worker_epoch"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            outsider.conn.execute(f"SELECT * FROM {table}".encode())
    for table in (
        "durable.runs",
        "durable.journal",
        "durable.partitions",
        "durable.signals",
        "durable.settings",
    ):
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="permission denied for schema durable"
        ):
            outsider.conn.execute(f"SELECT * FROM {table}".encode())
    # The operators live in pg_catalog (as in pg_durable); their functions still need df.
    operators = conn.execute(
        "SELECT o.oprname, o.oprkind, p.prosecdef FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode"
        " WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND p.pronamespace = 'df'::regnamespace"
    ).fetchall()
    assert len(operators) == 7
    for name, kind, definer in operators:
        assert not definer
        expression = f"OPERATOR(pg_catalog.{name}) 'SELECT 1'"
        if kind == "b":
            expression = "'SELECT 1' " + expression
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for schema df"):
            outsider.conn.execute(f"SELECT {expression}".encode())
    # pg_durable's readiness probe stays readable by everyone.
    outsider.conn.execute("SELECT * FROM _duroxide._worker_ready")


def test_grant_usage_grants_exactly_the_bundle(conn: Conn, make_role: RoleFactory) -> None:
    plain = make_role("plain", grant=False)
    http = make_role("http", grant=False)
    admin = make_role("admin", grant=False)
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("SELECT df.grant_usage(%s)", (plain,))
    conn.execute("SELECT df.grant_usage(%s, include_http => true)", (http,))
    conn.execute("SELECT df.grant_usage(%s, true, true)", (admin,))
    assert privileges(conn, plain) == bundle()
    assert privileges(conn, http) == bundle(include_http=True)
    assert privileges(conn, admin) == bundle(include_http=True, with_grant=True)
    assert notices == [f'pg_durable: granted df usage privileges to "{r}"' for r in (plain, http, admin)]
    # A plain grant gives neither HTTP nor metrics nor the right to grant.
    with psycopg.connect(make_role.dsn(plain), autocommit=True) as user:
        for call in (
            "SELECT * FROM df.metrics()",
            "SELECT df.grant_usage('x')",
            "SELECT df.revoke_usage('x')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
                user.execute(call.encode())
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function http"):
            user.execute("SELECT df.http('https://example.com')")


def test_revoke_usage_revokes_the_bundle(conn: Conn, make_role: RoleFactory) -> None:
    role = make_role("revoked", grant=False)
    conn.execute("SELECT df.grant_usage(%s, true, true)", (role,))
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("SELECT df.revoke_usage(%s)", (role,))
    assert privileges(conn, role) == set()
    superuser = conn.execute("SELECT current_user").fetchone()
    assert superuser is not None
    assert notices[-1] == f'pg_durable: revoked df usage privileges granted by "{superuser[0]}" from "{role}"'
    with (
        psycopg.connect(make_role.dsn(role), autocommit=True) as user,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for schema df"),
    ):
        user.execute("SELECT df.start('SELECT 1')")


def test_delegated_admins(conn: Conn, users: Callable[..., User]) -> None:
    admin = users("admin", grant=False)
    conn.execute("SELECT df.grant_usage(%s, false, true)", (admin.role,))
    carol = users("carol", grant=False)
    sub = users("subadmin", grant=False)
    erin = users("erin", grant=False)
    # An admin grants the bundle; the grantee can start, not grant.
    admin.conn.execute("SELECT df.grant_usage(%s)", (carol.role,))
    assert admin.notices[-1] == f'pg_durable: granted df usage privileges to "{carol.role}"'
    assert privileges(conn, carol.role) == bundle()
    carol.start("'SELECT 1'")
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match="permission denied for function grant_usage"
    ):
        carol.conn.execute("SELECT df.grant_usage(%s)", (erin.role,))
    # It cannot hand out HTTP, which it does not hold with grant option.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function http"):
        admin.conn.execute("SELECT df.grant_usage(%s, include_http => true)", (erin.role,))
    assert privileges(conn, erin.role) == set()
    # It can make sub-admins, who can grant in turn; metrics come with with_grant.
    admin.conn.execute("SELECT df.grant_usage(%s, false, true)", (sub.role,))
    sub.conn.execute("SELECT df.grant_usage(%s)", (erin.role,))
    assert privileges(conn, erin.role) == bundle()
    assert sub.scalar("SELECT total_instances FROM df.metrics()") >= 1
    # A delegated admin revokes only what it granted; self-revoke is harmless.
    sub.conn.execute("SELECT df.revoke_usage(%s)", (carol.role,))
    assert privileges(conn, carol.role) == bundle()
    admin.conn.execute("SELECT df.revoke_usage(%s)", (admin.role,))
    assert privileges(conn, admin.role) == bundle(with_grant=True)
    admin.conn.execute("SELECT df.revoke_usage(%s)", (carol.role,))
    assert admin.notices[-1] == (
        f'pg_durable: revoked df usage privileges granted by "{admin.role}" from "{carol.role}"'
    )
    assert privileges(conn, carol.role) == set()
    # Revoking an admin cascades to everything granted through it.
    conn.execute("SELECT df.revoke_usage(%s)", (admin.role,))
    for role in (admin.role, sub.role, erin.role):
        assert privileges(conn, role) == set()
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for schema df"):
        erin.conn.execute("SELECT df.start('SELECT 1')")
