"""A database role as a workflow client: start instances, await them, read results and errors.

Shared by the acceptance, chaos and security tests; each module adds what
only it needs (notices, its own ``scalar``) in a subclass.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from tests.fix_db import RoleFactory


def root_error(conn: psycopg.Connection[Any], instance: str) -> str:
    """A failed instance's error: the result of its root node."""
    row = conn.execute(
        "SELECT n.result #>> '{}' FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id"
        " AND i.root_node = n.id WHERE i.id = %s",
        (instance,),
    ).fetchone()
    assert row is not None
    return str(row[0])


class User:
    """A login role with its own autocommit connection to the test database."""

    def __init__(self, role: str, dsn: str) -> None:
        self.role = role
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)

    @classmethod
    def made(cls, make_role: RoleFactory, prefix: str) -> User:
        """A new role from ``make_role`` (named after ``prefix``), connected."""
        role = make_role(prefix)
        return cls(role, make_role.dsn(role))

    def start(self, graph: str, *params: Any, label: str | None = None) -> str:
        """``SELECT df.start(<graph>[, label])``: graph is SQL text (operators and df calls)."""
        if label is None:
            query = sql.SQL("SELECT df.start({})").format(sql.SQL(graph))
        else:
            query = sql.SQL("SELECT df.start({}, {})").format(sql.SQL(graph), sql.Literal(label))
        row = self.conn.execute(query, params or None).fetchone()
        assert row is not None
        return str(row[0])

    def run(self, graph: str, *params: Any, label: str | None = None, timeout: int = 60) -> tuple[str, Any]:
        """Start, await: (status, result)."""
        instance = self.start(graph, *params, label=label)
        return self.await_(instance, timeout), self.result(instance)

    def await_(self, instance: str, timeout: int = 60) -> str:
        row = self.conn.execute("SELECT df.await_instance(%s, %s)", (instance, timeout)).fetchone()
        assert row is not None
        return str(row[0])

    def result(self, instance: str) -> Any:
        row = self.conn.execute("SELECT df.result(%s)", (instance,)).fetchone()
        return json.loads(row[0]) if row and row[0] is not None else None

    def status(self, instance: str) -> str:
        row = self.conn.execute("SELECT df.status(%s)", (instance,)).fetchone()
        assert row is not None
        return str(row[0])

    def error(self, instance: str) -> str:
        return root_error(self.conn, instance)

    def fails(self, graph: str, timeout: int = 60) -> str:
        """Start, await ``failed``, return the error."""
        instance = self.start(graph)
        assert self.await_(instance, timeout) == "failed"
        return self.error(instance)

    def close(self) -> None:
        self.conn.close()
