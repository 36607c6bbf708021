"""Helpers for the security tests: roles with their own connections, instance probes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from tests import dfclient
from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.fix_db import RoleFactory

Conn = psycopg.Connection[tuple[Any, ...]]


class User(dfclient.User):
    """A login role with its own autocommit connection, and the notices it received."""

    def __init__(self, role: str, dsn: str) -> None:
        super().__init__(role, dsn)
        self.notices: list[str] = []
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))

    def scalar(self, query: str, *params: Any) -> Any:
        row = self.conn.execute(query.encode(), params or None).fetchone()
        return row[0] if row else None


@pytest.fixture
def users(make_role: RoleFactory) -> Iterator[Callable[..., User]]:
    """``users(prefix, **make_role_options)`` makes a role and a connection as it."""
    made: list[User] = []

    def make(prefix: str = "user", **options: Any) -> User:
        role = make_role(prefix, **options)
        person = User(role, make_role.dsn(role))
        made.append(person)
        return person

    yield make
    for person in made:
        person.close()


def failures(conn: Conn, instance: str) -> str:
    """Every failed node's message of ``instance`` (read as superuser), one per line."""
    rows = conn.execute(
        "SELECT n.result #>> '{}' FROM df.nodes n WHERE n.instance_id = %s AND n.status = 'failed'"
        " ORDER BY n.updated_at",
        (instance,),
    ).fetchall()
    return "\n".join(str(r[0]) for r in rows)


def status(conn: Conn, instance: str) -> str | None:
    row = conn.execute("SELECT status FROM df.instances WHERE id = %s", (instance,)).fetchone()
    return str(row[0]) if row else None


def await_status(conn: Conn, instance: str, timeout: float = 60.0) -> str:
    """Wait (as superuser) until ``instance`` is terminal; return its status."""
    done = wait_for(
        lambda: status(conn, instance) in {"completed", "failed", "cancelled"},
        timeout,
        message=f"instance {instance} to finish",
    )
    assert done
    value = status(conn, instance)
    assert value is not None
    return value


def node_done(conn: Conn, instance: str, query: str) -> bool:
    """True when the SQL node of ``instance`` whose query is ``query`` has completed."""
    row = conn.execute(
        "SELECT status FROM df.nodes WHERE instance_id = %s AND node_type = 'SQL' AND query = %s",
        (instance, query),
    ).fetchone()
    return bool(row and row[0] == "completed")


def parked(conn: Conn, instance: str) -> bool:
    """True when ``instance`` waits for a signal out of every worker's memory (durable.runs.wake_at NULL)."""
    row = conn.execute(
        "SELECT r.wake_at IS NULL FROM durable.runs r JOIN df.instances i ON i.id = r.instance_id"
        " WHERE r.instance_id = %s AND i.status = 'running'",
        (instance,),
    ).fetchone()
    return bool(row and row[0])


def wait_parked(conn: Conn, instance: str, timeout: float = 30.0) -> None:
    wait_for(lambda: parked(conn, instance), timeout, message=f"instance {instance} to wait for its signal")


def idle_step_connections(conn: Conn, role: str) -> int:
    """Connections the workers logged in as ``role`` for SQL steps, idle in a pool."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
        " AND application_name = 'durable-cluster step' AND state = 'idle'",
        (role,),
    ).fetchone()
    return int(row[0]) if row else 0


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)
