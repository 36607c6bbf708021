"""Monitoring (migration 0005): df.instance_nodes and inferred node status,
df.list_instances, df.instance_info and df.instance_executions, against spec
§1.8, §2.19 and §2.21.

No cluster runs here: instances are started with df.start as a user role, then
the runtime is simulated by writing what the worker writes (df.nodes status,
result, status_details and updated_at; df.instances status) as the superuser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from durable_cluster.values import condition_value

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fix_db import RoleFactory

Conn = psycopg.Connection[tuple[Any, ...]]

FUNCTION_NAME = "pg_durable::orchestration::execute-function-graph"
T0 = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


# -- helpers ----------------------------------------------------------------------


@dataclass
class Graph:
    """The df.nodes rows of one instance, to find nodes by what they are."""

    id: str
    root: str
    rows: dict[str, dict[str, Any]]

    def find(self, node_type: str, query: str | None = None) -> str:
        found = [
            k
            for k, r in self.rows.items()
            if r["node_type"] == node_type and (query is None or r["query"] == query)
        ]
        assert len(found) == 1, (node_type, query, found)
        return found[0]

    def sql(self, query: str) -> str:
        return self.find("SQL", query)

    def left(self, node: str) -> str:
        return str(self.rows[node]["left_node"])

    def right(self, node: str) -> str:
        return str(self.rows[node]["right_node"])

    def cond(self, node: str) -> str:
        return str(json.loads(self.rows[node]["query"])["condition_node"])

    def scope(self, *parts: object) -> str:
        """An execution scope: ``scope(1)`` is the root scope, ``scope(1, loop, 2)`` ..."""
        return "::".join([self.id, *(str(p) for p in parts)])


@pytest.fixture
def user(make_role: RoleFactory) -> str:
    return make_role("mon")


@pytest.fixture
def uconn(make_role: RoleFactory, user: str) -> Iterator[Conn]:
    """An autocommit connection as ``user`` (UTC, for exact cursors)."""
    with psycopg.connect(make_role.dsn(user), autocommit=True) as connection:
        connection.execute("SET TIME ZONE 'UTC'")
        yield connection


def start(uconn: Conn, conn: Conn, expr: str, label: str | None = None) -> Graph:
    """``df.start(<expr>, label)`` as the user; the graph as stored."""
    row = uconn.execute(f"SELECT df.start({expr}, %s)", (label,)).fetchone()
    assert row is not None
    iid = str(row[0])
    root = conn.execute("SELECT root_node FROM df.instances WHERE id = %s", (iid,)).fetchone()
    assert root is not None
    cur = conn.execute(
        "SELECT id, node_type, query, result_name, left_node, right_node"
        " FROM df.nodes WHERE instance_id = %s",
        (iid,),
    )
    names = [d.name for d in cur.description or []]
    rows = {str(r[0]): dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    return Graph(iid, str(root[0]), rows)


def stamp(
    conn: Conn,
    g: Graph,
    node: str,
    status: str,
    result: Any = None,
    *,
    scope: str | None = None,
    at: datetime | None = None,
    guarantee: str | None = None,
) -> None:
    """What the worker writes when it stamps a node (sql/queries.sql stamp_nodes)."""
    details = {"guarantee": guarantee} if guarantee else None
    conn.execute(
        "UPDATE df.nodes SET status = %s, result = %s,"
        " status_details = jsonb_build_object('execution_id', %s::text) || coalesce(%s::jsonb, '{}'),"
        " updated_at = coalesce(%s, now())"
        " WHERE instance_id = %s AND id = %s",
        (
            status,
            None if result is None else Jsonb(result),
            scope or g.scope(1),
            None if details is None else Jsonb(details),
            at,
            g.id,
            node,
        ),
    )


def set_status(conn: Conn, g: Graph, status: str) -> None:
    """Move an instance to ``status`` the way the worker does (pending -> running -> terminal)."""
    conn.execute("UPDATE df.instances SET status = 'running' WHERE id = %s AND status = 'pending'", (g.id,))
    if status != "running":
        conn.execute(
            "UPDATE df.instances SET status = %s,"
            " completed_at = CASE WHEN %s = 'completed' THEN now() END WHERE id = %s",
            (status, status, g.id),
        )


def inferred(c: Conn, g: Graph) -> dict[str, tuple[str, str | None]]:
    rows = c.execute(
        "SELECT node_id, inferred_status, inferred_status_from_ancestor_id FROM df.instance_nodes(%s)",
        (g.id,),
    ).fetchall()
    return {str(r[0]): (str(r[1]), r[2]) for r in rows}


def fails(c: Conn, query: str, params: tuple[Any, ...], message: str) -> None:
    with pytest.raises(psycopg.Error) as info:
        c.execute(query, params)
    assert info.value.diag.message_primary == message


def rows_of(c: Conn, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return c.execute(query, params).fetchall()


SQL_RESULT_1 = {"rows": [{"?column?": 1}], "row_count": 1}


# -- df.instance_nodes: shape ---------------------------------------------------------


def test_instance_nodes_columns(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1' ~> 'SELECT 2'")
    cur = uconn.execute("SELECT * FROM df.instance_nodes(%s)", (g.id,))
    assert [(d.name, d.type_code) for d in cur.description or []] == [
        ("node_id", 25),
        ("node_type", 25),
        ("query", 25),
        ("result_name", 25),
        ("left_node", 25),
        ("right_node", 25),
        ("status", 25),
        ("result", 25),
        ("status_details", 25),
        ("inferred_status", 25),
        ("inferred_status_from_ancestor_id", 25),
        ("updated_at", 1184),
    ]
    rows = cur.fetchall()
    # pre-order from the root, as df.start numbered them
    assert [r[0] for r in rows] == [g.root, g.left(g.root), g.right(g.root)]
    assert [r[1:7] for r in rows] == [
        ("THEN", None, None, g.left(g.root), g.right(g.root), "pending"),
        ("SQL", "SELECT 1", None, None, None, "pending"),
        ("SQL", "SELECT 2", None, None, None, "pending"),
    ]
    assert all(r[7:11] == (None, None, "pending", None) for r in rows)


def test_instance_nodes_raw_columns(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1' |=> 'one'")
    stamp(conn, g, g.root, "completed", SQL_RESULT_1, guarantee="exactly-once", at=T0)
    row = uconn.execute(
        "SELECT node_id, result_name, status, result, status_details, inferred_status, updated_at"
        " FROM df.instance_nodes(%s)",
        (g.id,),
    ).fetchone()
    assert row is not None
    assert row[:3] == (g.root, "one", "completed")
    assert json.loads(row[3]) == SQL_RESULT_1
    assert json.loads(row[4]) == {"execution_id": f"{g.id}::1", "guarantee": "exactly-once"}
    assert row[5:] == ("completed", T0)


def test_instance_nodes_legacy_overload(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1' ~> 'SELECT 2'")
    stamp(conn, g, g.sql("SELECT 1"), "failed", "SQL execution failed: boom", at=T0)
    cur = uconn.execute("SELECT * FROM df.instance_nodes(%s, 10)", (g.id,))
    assert [(d.name, d.type_code) for d in cur.description or []] == [
        ("execution_id", 20),
        ("node_id", 25),
        ("node_type", 25),
        ("query", 25),
        ("result_name", 25),
        ("left_node", 25),
        ("right_node", 25),
        ("status", 25),
        ("result", 25),
        ("updated_at", 1184),
    ]
    rows = cur.fetchall()
    assert [r[0] for r in rows] == [1, 1, 1]
    assert rows[1][1:] == (
        g.sql("SELECT 1"),
        "SQL",
        "SELECT 1",
        None,
        None,
        None,
        "failed",
        '"SQL execution failed: boom"',
        T0,
    )


def test_unknown_instance_has_no_nodes(uconn: Conn) -> None:
    assert rows_of(uconn, "SELECT * FROM df.instance_nodes('00000000')") == []
    assert rows_of(uconn, "SELECT * FROM df.instance_nodes('00000000', 1)") == []


# -- inferred status (spec §2.19) --------------------------------------------------------


def test_fresh_instance_is_all_pending(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1' ~> ('SELECT true' ?> 'SELECT 2' !> 'SELECT 3')")
    assert set(inferred(uconn, g).values()) == {("pending", None)}
    assert len(inferred(uconn, g)) == 6


def test_completed_sequence_has_no_skipped_nodes(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1' ~> 'SELECT 2' ~> 'SELECT 3'")
    for node in g.rows:
        stamp(conn, g, node, "completed", SQL_RESULT_1)
    set_status(conn, g, "completed")
    assert set(inferred(uconn, g).values()) == {("completed", None)}


def test_running_sequence(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1' ~> 'SELECT 2'")
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, g.sql("SELECT 1"), "completed", SQL_RESULT_1)
    stamp(conn, g, g.sql("SELECT 2"), "running")
    assert inferred(uconn, g) == {
        g.root: ("running", None),
        g.sql("SELECT 1"): ("completed", None),
        g.sql("SELECT 2"): ("running", None),
    }


IF_EXPR = "('SELECT true' ?> 'SELECT ''a''') !> 'SELECT ''b'''"


def test_untaken_if_arm_is_skipped(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, IF_EXPR)
    cond, then_, else_ = g.cond(g.root), g.left(g.root), g.right(g.root)
    stamp(conn, g, cond, "completed", {"rows": [{"bool": True}], "row_count": 1})
    stamp(conn, g, then_, "completed", {"rows": [{"?column?": "a"}], "row_count": 1})
    stamp(conn, g, g.root, "completed", {"rows": [{"?column?": "a"}], "row_count": 1})
    set_status(conn, g, "completed")
    got = inferred(uconn, g)
    assert got == {
        g.root: ("completed", None),
        cond: ("completed", None),
        then_: ("completed", None),
        else_: ("skipped", g.root),
    }
    assert [s for s, _ in got.values()].count("skipped") == 1


def test_untaken_arm_is_known_while_the_taken_one_runs(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, IF_EXPR)
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, g.cond(g.root), "completed", {"rows": [], "row_count": 0})
    stamp(conn, g, g.right(g.root), "running")
    got = inferred(uconn, g)
    assert got[g.left(g.root)] == ("skipped", g.root)
    assert got[g.right(g.root)] == ("running", None)


@pytest.mark.parametrize(
    "result",
    [
        {"rows": [{"b": True}], "row_count": 1},
        {"rows": [{"b": False}], "row_count": 1},
        {"rows": [], "row_count": 0},
        {"rows": [{"x": None}], "row_count": 1},
        {"rows": [{"x": "no"}], "row_count": 1},
        {"rows": [{"x": " YES "}], "row_count": 1},
        {"rows": [{"x": "F"}], "row_count": 1},
        {"rows": [{"x": " 0.00 "}], "row_count": 1},
        {"rows": [{"x": "-0e5"}], "row_count": 1},
        {"rows": [{"x": "+.5"}], "row_count": 1},
        {"rows": [{"x": "1e-400"}], "row_count": 1},
        {"rows": [{"x": "1e400"}], "row_count": 1},
        {"rows": [{"x": "1e999999"}], "row_count": 1},
        {"rows": [{"x": "."}], "row_count": 1},
        {"rows": [{"x": "0x10"}], "row_count": 1},
        {"rows": [{"x": "   "}], "row_count": 1},
        {"rows": [{"x": "abc"}], "row_count": 1},
        {"rows": [{"x": 0}], "row_count": 1},
        {"rows": [{"x": 0.5}], "row_count": 1},
        {"rows": [{"x": []}], "row_count": 1},
        {"rows": [{"x": {"a": 1}}], "row_count": 1},
        {"rows": [{}], "row_count": 1},
        {"rows": [{"a": 1, "b": "t"}], "row_count": 1},
        {"rows": [{"a": 0, "b": "no"}], "row_count": 1},
        "yes",
        "",
        0,
        2.5,
        [],
        [0],
        {},
        {"slept": True, "seconds": 0},
        None,
    ],
)
def test_if_condition_truthiness(conn: Conn, uconn: Conn, result: Any) -> None:
    """The arm decided from the condition's stamped result matches the runtime's truthiness."""
    g = start(uconn, conn, IF_EXPR)
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, g.cond(g.root), "completed", result)
    if result is None:  # a JSON null result
        conn.execute(
            "UPDATE df.nodes SET result = 'null'::jsonb WHERE instance_id = %s AND id = %s",
            (g.id, g.cond(g.root)),
        )
    got = inferred(uconn, g)
    untaken = g.right(g.root) if condition_value(result) else g.left(g.root)
    taken = g.left(g.root) if condition_value(result) else g.right(g.root)
    assert got[untaken] == ("skipped", g.root)
    assert got[taken] == ("pending", None)


def test_if_with_undecidable_condition_skips_nothing(conn: Conn, uconn: Conn) -> None:
    # jsonb keeps no column order: with columns that disagree the first column is unknown
    g = start(uconn, conn, IF_EXPR)
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, g.cond(g.root), "completed", {"rows": [{"a": 1, "b": 0}], "row_count": 1})
    got = inferred(uconn, g)
    assert got[g.left(g.root)] == ("pending", None)
    assert got[g.right(g.root)] == ("pending", None)
    # ... until an arm is stamped
    stamp(conn, g, g.right(g.root), "running")
    assert inferred(uconn, g)[g.left(g.root)] == ("skipped", g.root)


def test_if_rows_untaken_arm(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "('SELECT 1' |=> 'r') ~> df.if_rows('r', 'SELECT 2', 'SELECT 3')")
    if_ = g.find("IF")
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, g.sql("SELECT 1"), "completed", SQL_RESULT_1)
    stamp(conn, g, if_, "running")
    # nothing tells which arm yet
    assert inferred(uconn, g)[g.sql("SELECT 3")] == ("pending", None)
    stamp(conn, g, g.sql("SELECT 2"), "running")
    got = inferred(uconn, g)
    assert got[g.sql("SELECT 3")] == ("skipped", if_)
    assert got[g.sql("SELECT 2")] == ("running", None)


def test_right_side_of_failed_then_is_skipped(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1/0' ~> 'SELECT 2' ~> 'SELECT 3'")
    inner = g.left(g.root)
    error = "SQL execution failed: division by zero"
    stamp(conn, g, g.sql("SELECT 1/0"), "failed", error)
    stamp(conn, g, inner, "failed", error)
    stamp(conn, g, g.root, "failed", error)
    set_status(conn, g, "failed")
    assert inferred(uconn, g) == {
        g.root: ("failed", None),
        inner: ("failed", None),
        g.sql("SELECT 1/0"): ("failed", None),
        g.sql("SELECT 2"): ("skipped", inner),
        g.sql("SELECT 3"): ("skipped", g.root),
    }


def test_right_side_of_failed_left_is_skipped_before_the_then_is_stamped(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1/0' ~> 'SELECT 2'")
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, g.sql("SELECT 1/0"), "failed", "SQL execution failed: division by zero")
    assert inferred(uconn, g)[g.sql("SELECT 2")] == ("skipped", g.root)


def test_race_loser_is_skipped(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1' | (df.sleep(10) ~> 'SELECT 2')")
    left, right = g.left(g.root), g.right(g.root)
    sleep = g.find("SLEEP")
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, left, "running", scope=g.scope(1, left, 1))
    stamp(conn, g, right, "running", scope=g.scope(1, right, 1))
    stamp(conn, g, sleep, "running", scope=g.scope(1, right, 1))
    assert inferred(uconn, g) == {
        g.root: ("running", None),
        left: ("running", None),
        right: ("running", None),
        sleep: ("running", None),
        g.sql("SELECT 2"): ("pending", None),
    }
    stamp(conn, g, left, "completed", SQL_RESULT_1, scope=g.scope(1, left, 1))
    stamp(conn, g, g.root, "completed", SQL_RESULT_1)
    set_status(conn, g, "completed")
    assert inferred(uconn, g) == {
        g.root: ("completed", None),
        left: ("completed", None),
        right: ("skipped", g.root),
        sleep: ("skipped", g.root),
        g.sql("SELECT 2"): ("skipped", g.root),
    }


def test_join_branches_run_in_branch_scopes(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "df.join3('SELECT 1', 'SELECT 2', 'SELECT 3')")
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    for q in ("SELECT 1", "SELECT 2", "SELECT 3"):
        node = g.sql(q)
        stamp(conn, g, node, "completed", SQL_RESULT_1, scope=g.scope(1, node, 1))
    assert set(inferred(uconn, g).values()) == {("running", None), ("completed", None)}


def test_superseded_loop_iteration_reads_pending(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 0' ~> df.loop('SELECT 1' ~> 'SELECT 2') ~> 'SELECT 3'")
    loop = g.find("LOOP")
    body = g.left(loop)
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, g.left(g.root), "running")
    stamp(conn, g, g.sql("SELECT 0"), "completed", SQL_RESULT_1)
    stamp(conn, g, loop, "running")
    # iteration 1 ran the whole body; iteration 2 has run its first step
    stamp(conn, g, g.sql("SELECT 2"), "completed", SQL_RESULT_1, scope=g.scope(1, loop, 1))
    stamp(conn, g, body, "running", scope=g.scope(1, loop, 2))
    stamp(conn, g, g.sql("SELECT 1"), "completed", SQL_RESULT_1, scope=g.scope(1, loop, 2))
    assert inferred(uconn, g) == {
        g.root: ("running", None),
        g.left(g.root): ("running", None),
        g.sql("SELECT 0"): ("completed", None),
        loop: ("running", None),
        body: ("running", None),
        g.sql("SELECT 1"): ("completed", None),
        g.sql("SELECT 2"): ("pending", loop),
        g.sql("SELECT 3"): ("pending", None),
    }


def test_superseded_root_loop_generation_reads_pending(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "@> ('SELECT 1' ~> 'SELECT 2')")
    body = g.left(g.root)
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, g.sql("SELECT 2"), "completed", SQL_RESULT_1, scope=g.scope(2))
    stamp(conn, g, body, "running", scope=g.scope(3))
    stamp(conn, g, g.sql("SELECT 1"), "completed", SQL_RESULT_1, scope=g.scope(3))
    assert inferred(uconn, g) == {
        g.root: ("running", None),
        body: ("running", None),
        g.sql("SELECT 1"): ("completed", None),
        g.sql("SELECT 2"): ("pending", g.root),
    }


def test_nested_loops_superseded_by_the_outer_loop(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 0' ~> df.loop(df.loop('SELECT 1' ~> df.break()) ~> 'SELECT 2')")
    outer = g.right(g.root)
    inner = g.left(g.left(outer))
    brk = g.find("BREAK")
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, outer, "running")
    # outer iteration 1: the inner loop ran twice and broke; SELECT 2 ran
    old = g.scope(1, outer, 1)
    stamp(conn, g, inner, "completed", None, scope=old)
    stamp(conn, g, brk, "completed", None, scope=f"{old}::{inner}::2")
    stamp(conn, g, g.sql("SELECT 2"), "completed", SQL_RESULT_1, scope=old)
    # outer iteration 2: the inner loop's first iteration runs SELECT 1
    new = g.scope(1, outer, 2)
    stamp(conn, g, g.left(outer), "running", scope=new)
    stamp(conn, g, inner, "running", scope=new)
    stamp(conn, g, g.left(inner), "running", scope=f"{new}::{inner}::1")
    stamp(conn, g, g.sql("SELECT 1"), "running", scope=f"{new}::{inner}::1")
    got = inferred(uconn, g)
    assert got[g.sql("SELECT 1")] == ("running", None)
    assert got[brk] == ("pending", outer)
    assert got[g.sql("SELECT 2")] == ("pending", outer)
    assert got[inner] == ("running", None)


def test_nodes_after_a_break_are_skipped_when_the_loop_ends(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "df.loop('SELECT 1' ~> df.break('done') ~> 'SELECT 2') ~> 'SELECT 3'")
    loop = g.find("LOOP")
    body, first = g.left(loop), g.left(g.left(loop))
    scope = g.scope(1, loop, 1)
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, loop, "completed", "done")
    stamp(conn, g, body, "completed", "done", scope=scope)
    stamp(conn, g, first, "completed", "done", scope=scope)
    stamp(conn, g, g.sql("SELECT 1"), "completed", SQL_RESULT_1, scope=scope)
    stamp(conn, g, g.find("BREAK"), "completed", "done", scope=scope)
    got = inferred(uconn, g)
    assert got[g.sql("SELECT 2")] == ("skipped", body)
    assert got[g.sql("SELECT 3")] == ("pending", None)


def test_retry_attempts(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "df.retry('SELECT 1' ~> 'SELECT 2', 3)")
    body = g.left(g.root)
    error = "SQL execution failed: boom"
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    first = g.scope(1, g.root, 1)
    stamp(conn, g, g.sql("SELECT 1"), "completed", SQL_RESULT_1, scope=first)
    stamp(conn, g, g.sql("SELECT 2"), "failed", error, scope=first)
    stamp(conn, g, body, "failed", error, scope=first)
    assert inferred(uconn, g)[g.sql("SELECT 2")] == ("failed", None)
    second = g.scope(1, g.root, 2)
    stamp(conn, g, body, "running", scope=second)
    stamp(conn, g, g.sql("SELECT 1"), "running", scope=second)
    assert inferred(uconn, g) == {
        g.root: ("running", None),
        body: ("running", None),
        g.sql("SELECT 1"): ("running", None),
        g.sql("SELECT 2"): ("pending", g.root),
    }


def test_timed_out_body_is_skipped(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "df.timeout(df.sleep(60) ~> 'SELECT 1', 5)")
    body = g.left(g.root)
    set_status(conn, g, "running")
    stamp(conn, g, body, "running")
    stamp(conn, g, g.find("SLEEP"), "running")
    stamp(conn, g, g.root, "failed", "df.timeout: did not finish within 5 seconds")
    got = inferred(uconn, g)
    assert got[body] == ("skipped", g.root)
    assert got[g.find("SLEEP")] == ("skipped", g.root)
    assert got[g.sql("SELECT 1")] == ("skipped", g.root)


def test_cancelled_instance_skips_what_did_not_finish(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1' ~> df.sleep(100) ~> 'SELECT 2'")
    inner = g.left(g.root)
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running")
    stamp(conn, g, inner, "running")
    stamp(conn, g, g.sql("SELECT 1"), "completed", SQL_RESULT_1)
    stamp(conn, g, g.find("SLEEP"), "running")
    assert uconn.execute("SELECT df.cancel(%s)", (g.id,)).fetchone() == (
        f"Instance {g.id} cancelled: Cancelled by user",
    )
    assert inferred(uconn, g) == {
        g.root: ("skipped", None),
        inner: ("skipped", g.root),
        g.sql("SELECT 1"): ("completed", None),
        g.find("SLEEP"): ("skipped", g.root),
        g.sql("SELECT 2"): ("skipped", g.root),
    }


def test_failed_instance_that_never_ran(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1' ~> 'SELECT 2'")
    set_status(conn, g, "failed")  # e.g. refused at graph load
    assert inferred(uconn, g) == {
        g.root: ("skipped", None),
        g.sql("SELECT 1"): ("skipped", g.root),
        g.sql("SELECT 2"): ("skipped", g.root),
    }


def test_deep_graph_is_walked_iteratively(conn: Conn, uconn: Conn) -> None:
    # 255 nested loops around a SQL leaf: 256 deep, each loop one iteration in
    uconn.execute(
        "DO $$ DECLARE g text := 'SELECT 0'; BEGIN FOR i IN 1..255 LOOP g := df.loop(g); END LOOP;"
        " PERFORM set_config('test.graph', g, false); END $$"
    )
    g = start(uconn, conn, "current_setting('test.graph')")
    set_status(conn, g, "running")
    node, scope = g.root, g.scope(1)
    while g.rows[node]["node_type"] == "LOOP":
        stamp(conn, g, node, "running", scope=scope)
        scope = g.id + "::1" if node == g.root else f"{scope}::{node}::1"
        node = g.left(node)
    stamp(conn, g, node, "running", scope=scope)
    got = inferred(uconn, g)
    assert len(got) == 256
    assert set(got.values()) == {("running", None)}
    # the same leaf stamped in an older iteration of the outermost non-root loop
    outer = g.left(g.root)
    stamp(conn, g, node, "completed", SQL_RESULT_1, scope=scope.replace(f"::{outer}::1", f"::{outer}::0", 1))
    assert inferred(uconn, g)[node] == ("pending", outer)


# -- df.list_instances (spec §1.8) ----------------------------------------------------------


def cursor_of(created_at: datetime, iid: str) -> str:
    return f"v1|{created_at.strftime('%Y-%m-%dT%H:%M:%S.%f')}+00|{iid}".encode().hex()


@pytest.fixture
def five(conn: Conn, uconn: Conn) -> list[tuple[str, datetime]]:
    """Five instances, newest first, two of them created at the same instant."""
    made = []
    times = [T0 + timedelta(seconds=s) for s in (50, 40, 40, 20, 10)]
    labels = ["nightly", "adhoc", "nightly", None, "nightly"]
    for at, label in zip(times, labels, strict=True):
        g = start(uconn, conn, "'SELECT 1'", label)
        conn.execute("UPDATE df.instances SET created_at = %s WHERE id = %s", (at, g.id))
        made.append((g.id, at))
    # order: created_at DESC, then id ASC among equal created_at
    made.sort(key=lambda m: (-m[1].timestamp(), m[0]))
    return made


def test_list_instances_columns(conn: Conn, uconn: Conn) -> None:
    start(uconn, conn, "'SELECT 1'")
    cur = uconn.execute("SELECT * FROM df.list_instances()")
    assert [(d.name, d.type_code) for d in cur.description or []] == [
        ("instance_id", 25),
        ("label", 25),
        ("function_name", 25),
        ("status", 25),
        ("execution_count", 20),
        ("output", 25),
    ]
    cur = uconn.execute("SELECT * FROM df.list_instances(NULL, 10, NULL)")
    assert [(d.name, d.type_code) for d in cur.description or []] == [
        ("instance_id", 25),
        ("label", 25),
        ("function_name", 25),
        ("status", 25),
        ("execution_count", 20),
        ("output", 25),
        ("created_at", 1184),
        ("completed_at", 1184),
        ("next_cursor", 25),
    ]


def test_list_instances_two_arg(conn: Conn, uconn: Conn, five: list[tuple[str, datetime]]) -> None:
    ids = [i for i, _ in five]
    assert rows_of(uconn, "SELECT instance_id FROM df.list_instances()") == [(i,) for i in ids]
    assert rows_of(uconn, "SELECT instance_id FROM df.list_instances(NULL, 2)") == [(i,) for i in ids[:2]]
    rows = rows_of(uconn, "SELECT * FROM df.list_instances('pending', 1)")
    assert rows == [(ids[0], "nightly", FUNCTION_NAME, "pending", 1, None)]
    assert rows_of(uconn, "SELECT * FROM df.list_instances('running')") == []


def test_list_instances_pages_with_cursors(conn: Conn, uconn: Conn, five: list[tuple[str, datetime]]) -> None:
    query = "SELECT instance_id, created_at, next_cursor FROM df.list_instances(NULL, 2, NULL, %s)"
    seen: list[str] = []
    cursor = None
    pages = []
    while True:
        rows = rows_of(uconn, query, (cursor,))
        pages.append(len(rows))
        seen.extend(r[0] for r in rows)
        cursors = {r[2] for r in rows}
        assert len(cursors) == 1  # the same on every row of a page
        cursor = cursors.pop()
        if cursor is None:
            break
        last_id, last_at = rows[-1][0], rows[-1][1]
        assert cursor == cursor_of(last_at, last_id)
        assert bytes.fromhex(cursor).decode().startswith("v1|")
    assert pages == [2, 2, 1]
    assert seen == [i for i, _ in five]
    # a page that ends exactly at the last row has no next cursor
    rows = rows_of(uconn, "SELECT next_cursor FROM df.list_instances(NULL, 5, NULL)")
    assert rows == [(None,)] * 5
    # the cursor works from another time zone (it carries the offset)
    uconn.execute("SET TIME ZONE 'Asia/Kolkata'")
    first = rows_of(uconn, "SELECT next_cursor FROM df.list_instances(NULL, 2, NULL)")[0][0]
    local = (five[1][1] + timedelta(hours=5, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S.%f")
    assert bytes.fromhex(first).decode() == f"v1|{local}+05:30|{five[1][0]}"
    uconn.execute("SET TIME ZONE 'UTC'")
    assert rows_of(uconn, "SELECT instance_id FROM df.list_instances(NULL, 10, NULL, %s)", (first,)) == [
        (i,) for i, _ in five[2:]
    ]


def test_list_instances_filters(conn: Conn, uconn: Conn, five: list[tuple[str, datetime]]) -> None:
    labels = dict(rows_of(uconn, "SELECT instance_id, label FROM df.list_instances(NULL, 10, NULL)"))
    nightly = [i for i, _ in five if labels[i] == "nightly"]
    assert len(nightly) == 3
    rows = rows_of(uconn, "SELECT instance_id, next_cursor FROM df.list_instances(NULL, 2, 'nightly')")
    assert [r[0] for r in rows] == nightly[:2]
    rows = rows_of(
        uconn, "SELECT instance_id, next_cursor FROM df.list_instances(NULL, 2, 'nightly', %s)", (rows[0][1],)
    )
    assert rows == [(nightly[2], None)]
    set_status(conn, Graph(nightly[1], "", {}), "running")
    assert rows_of(uconn, "SELECT instance_id FROM df.list_instances('running', 10, 'nightly')") == [
        (nightly[1],)
    ]
    assert rows_of(uconn, "SELECT instance_id FROM df.list_instances('running', 10, 'adhoc')") == []
    # label_filter matches exactly
    assert rows_of(uconn, "SELECT * FROM df.list_instances(NULL, 10, 'Nightly')") == []


def test_list_instances_excludes_null_created_at(
    conn: Conn, uconn: Conn, five: list[tuple[str, datetime]]
) -> None:
    conn.execute("UPDATE df.instances SET created_at = NULL WHERE id = %s", (five[0][0],))
    assert [r[0] for r in rows_of(uconn, "SELECT instance_id FROM df.list_instances(NULL, 10, NULL)")] == [
        i for i, _ in five[1:]
    ]


def test_list_instances_output_and_timestamps(conn: Conn, uconn: Conn) -> None:
    done = start(uconn, conn, "'SELECT 1'", "a")
    stamp(conn, done, done.root, "completed", SQL_RESULT_1)
    set_status(conn, done, "completed")
    failed = start(uconn, conn, "'SELECT 1/0'", "b")
    stamp(conn, failed, failed.root, "failed", "SQL execution failed: division by zero")
    set_status(conn, failed, "failed")
    running = start(uconn, conn, "'SELECT pg_sleep(9)'", "c")
    set_status(conn, running, "running")
    stamp(conn, running, running.root, "running")
    cancelled = start(uconn, conn, "'SELECT pg_sleep(9)'", "d")
    uconn.execute("SELECT df.cancel(%s)", (cancelled.id,))
    rows = {
        r[0]: r[1:]
        for r in rows_of(
            uconn,
            "SELECT instance_id, status, execution_count, output, completed_at IS NOT NULL"
            " FROM df.list_instances(NULL, 10, NULL)",
        )
    }
    assert rows == {
        done.id: ("completed", 1, '{"rows": [{"?column?": 1}], "row_count": 1}', True),
        failed.id: ("failed", 1, "SQL execution failed: division by zero", False),
        running.id: ("running", 1, None, False),
        cancelled.id: ("cancelled", 1, None, False),
    }
    # the output is df.result's text for a completed instance
    assert uconn.execute("SELECT df.result(%s)", (done.id,)).fetchone() == (rows[done.id][2],)
    two_arg = {r[0]: r[1:] for r in rows_of(uconn, "SELECT * FROM df.list_instances()")}
    assert two_arg[failed.id] == ("b", FUNCTION_NAME, "failed", 1, "SQL execution failed: division by zero")


def test_list_instances_limits(conn: Conn, uconn: Conn) -> None:
    for query in (
        "SELECT * FROM df.list_instances(NULL, 0)",
        "SELECT * FROM df.list_instances(NULL, -5, NULL)",
        "SELECT * FROM df.list_instances(NULL, NULL)",
    ):
        fails(uconn, query, (), "limit_count must be at least 1")
    too_many = (
        "df.list_instances: limit_count (1001) exceeds pg_durable.list_instances_max_limit (1000);"
        " request fewer rows and page through the rest with after_cursor"
    )
    fails(uconn, "SELECT * FROM df.list_instances(NULL, 1001)", (), too_many)
    fails(uconn, "SELECT * FROM df.list_instances(NULL, 1001, 'x')", (), too_many)
    assert rows_of(uconn, "SELECT * FROM df.list_instances(NULL, 1000)") == []
    conn.execute(
        "INSERT INTO durable.settings (name, value) VALUES ('list_instances_max_limit', '5')"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
    )
    fails(
        uconn,
        "SELECT * FROM df.list_instances(NULL, 6, NULL, NULL)",
        (),
        "df.list_instances: limit_count (6) exceeds pg_durable.list_instances_max_limit (5);"
        " request fewer rows and page through the rest with after_cursor",
    )
    assert rows_of(uconn, "SELECT * FROM df.list_instances(NULL, 5)") == []


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "zz",
        "abc",
        "v1|2024-01-02T03:04:05.123456+00|abcdef12",  # not hex-encoded
        "a" * 514,
        "00",
        "ff",
        b"v2|2024-01-02T03:04:05.123456+00|abcdef12".hex(),
        b"v1|2024-01-02 03:04:05+00|abcdef12".hex(),
        b"v1|2024-13-02T03:04:05.123456+00|abcdef12".hex(),
        b"v1|2024-01-02T03:04:05.123456+00|ABCDEF12".hex(),
        b"v1|2024-01-02T03:04:05.123456+00|abcdef12|x".hex(),
        b"v1|2024-01-02T03:04:05.123456+00".hex(),
    ],
)
def test_list_instances_invalid_cursor(uconn: Conn, cursor: str) -> None:
    fails(
        uconn,
        "SELECT * FROM df.list_instances(NULL, 10, NULL, %s)",
        (cursor,),
        "df.list_instances: invalid after_cursor",
    )


def test_list_instances_cursor_length_limit(conn: Conn, uconn: Conn) -> None:
    # 512 characters is the most a cursor may have
    padded = "0" * (512 - len(cursor_of(T0, "abcdef12")))
    fails(
        uconn,
        "SELECT * FROM df.list_instances(NULL, 10, NULL, %s)",
        (cursor_of(T0, "abcdef12") + padded + "00",),
        "df.list_instances: invalid after_cursor",
    )
    assert (
        rows_of(uconn, "SELECT * FROM df.list_instances(NULL, 10, NULL, %s)", (cursor_of(T0, "abcdef12"),))
        == []
    )


# -- df.instance_info ---------------------------------------------------------------------------


def test_instance_info(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1'", "lbl")
    cur = uconn.execute("SELECT * FROM df.instance_info(%s)", (g.id,))
    assert [(d.name, d.type_code) for d in cur.description or []] == [
        ("instance_id", 25),
        ("label", 25),
        ("function_name", 25),
        ("function_version", 25),
        ("current_execution_id", 20),
        ("status", 25),
        ("output", 25),
    ]
    assert cur.fetchall() == [(g.id, "lbl", FUNCTION_NAME, "1.0.0", 1, "pending", None)]
    stamp(conn, g, g.root, "completed", SQL_RESULT_1)
    set_status(conn, g, "completed")
    assert rows_of(uconn, "SELECT status, output FROM df.instance_info(%s)", (g.id,)) == [
        ("completed", '{"rows": [{"?column?": 1}], "row_count": 1}')
    ]
    assert rows_of(uconn, "SELECT * FROM df.instance_info('00000000')") == []


# -- df.instance_executions ---------------------------------------------------------------------


def test_instance_executions_of_a_plain_instance(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1' ~> 'SELECT 2'")
    cur = uconn.execute("SELECT * FROM df.instance_executions(%s)", (g.id,))
    assert [(d.name, d.type_code) for d in cur.description or []] == [
        ("execution_id", 20),
        ("status", 25),
        ("event_count", 20),
        ("duration_ms", 20),
        ("output", 25),
    ]
    assert cur.fetchall() == [(1, "Running", 0, None, None)]
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running", at=T0)
    stamp(conn, g, g.sql("SELECT 1"), "completed", SQL_RESULT_1, at=T0 + timedelta(milliseconds=250))
    assert rows_of(uconn, "SELECT * FROM df.instance_executions(%s)", (g.id,)) == [
        (1, "Running", 2, 250, None)
    ]
    stamp(conn, g, g.sql("SELECT 2"), "failed", "SQL execution failed: no", at=T0 + timedelta(seconds=2))
    stamp(conn, g, g.root, "failed", "SQL execution failed: no", at=T0 + timedelta(seconds=2))
    set_status(conn, g, "failed")
    assert rows_of(uconn, "SELECT * FROM df.instance_executions(%s, 1)", (g.id,)) == [
        (1, "Failed", 3, 1750, "SQL execution failed: no")
    ]


@pytest.mark.parametrize(("status", "word"), [("completed", "Completed"), ("cancelled", "Failed")])
def test_instance_executions_status_words(conn: Conn, uconn: Conn, status: str, word: str) -> None:
    g = start(uconn, conn, "'SELECT 1'")
    if status == "cancelled":
        uconn.execute("SELECT df.cancel(%s)", (g.id,))
    else:
        stamp(conn, g, g.root, "completed", SQL_RESULT_1)
        set_status(conn, g, status)
    assert rows_of(uconn, "SELECT execution_id, status FROM df.instance_executions(%s)", (g.id,)) == [
        (1, word)
    ]


def test_instance_executions_of_a_root_loop(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "@> ('SELECT 1' ~> 'SELECT 2')")
    body = g.left(g.root)
    set_status(conn, g, "running")
    stamp(conn, g, g.root, "running", at=T0)
    stamp(
        conn, g, g.sql("SELECT 2"), "completed", SQL_RESULT_1, scope=g.scope(2), at=T0 + timedelta(seconds=3)
    )
    stamp(conn, g, body, "running", scope=g.scope(3), at=T0 + timedelta(seconds=4))
    stamp(
        conn,
        g,
        g.sql("SELECT 1"),
        "completed",
        SQL_RESULT_1,
        scope=g.scope(3),
        at=T0 + timedelta(seconds=4.5),
    )
    assert rows_of(uconn, "SELECT * FROM df.instance_executions(%s)", (g.id,)) == [
        (3, "Running", 2, 500, None),
        (2, "ContinuedAsNew", 1, 0, None),
        (1, "ContinuedAsNew", 1, 0, None),
    ]
    assert rows_of(uconn, "SELECT execution_id FROM df.instance_executions(%s, 2)", (g.id,)) == [(3,), (2,)]
    assert rows_of(uconn, "SELECT execution_count FROM df.list_instances()") == [(3,)]
    assert rows_of(uconn, "SELECT execution_count FROM df.list_instances(NULL, 5, NULL)") == [(3,)]
    assert rows_of(uconn, "SELECT current_execution_id FROM df.instance_info(%s)", (g.id,)) == [(3,)]
    # a loop that ended with a break: the last execution completes with the break value
    stamp(conn, g, g.root, "completed", "done", at=T0 + timedelta(seconds=5))
    set_status(conn, g, "completed")
    assert rows_of(uconn, "SELECT * FROM df.instance_executions(%s, 1)", (g.id,)) == [
        (3, "Completed", 2, 500, '"done"')
    ]


def test_instance_executions_limit_is_capped(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "@> 'SELECT 1'")
    stamp(conn, g, g.sql("SELECT 1"), "running", scope=g.scope(10005))
    rows = rows_of(uconn, "SELECT execution_id, status FROM df.instance_executions(%s, 20000)", (g.id,))
    assert len(rows) == 10000
    assert rows[0] == (10005, "Running")
    assert rows[-1] == (6, "ContinuedAsNew")
    assert [r[0] for r in rows_of(uconn, "SELECT * FROM df.instance_executions(%s)", (g.id,))] == [
        10005,
        10004,
        10003,
        10002,
        10001,
    ]


def test_instance_executions_errors(conn: Conn, uconn: Conn) -> None:
    g = start(uconn, conn, "'SELECT 1'")
    for limit in (0, -1, None):
        fails(
            uconn,
            "SELECT * FROM df.instance_executions(%s, %s)",
            (g.id, limit),
            "limit_count must be at least 1",
        )
    fails(uconn, "SELECT * FROM df.instance_executions('00000000')", (), "Instance not found: 00000000")


# -- row-level security ---------------------------------------------------------------------------


def test_another_role_sees_nothing(conn: Conn, uconn: Conn, make_role: RoleFactory) -> None:
    g = start(uconn, conn, "'SELECT 1' ~> 'SELECT 2'", "mine")
    stamp(conn, g, g.root, "completed", SQL_RESULT_1)
    set_status(conn, g, "completed")
    other = make_role("other")
    with psycopg.connect(make_role.dsn(other), autocommit=True) as bob:
        start(bob, conn, "'SELECT 3'", "mine")
        assert len(rows_of(bob, "SELECT * FROM df.list_instances()")) == 1
        assert g.id not in {r[0] for r in rows_of(bob, "SELECT instance_id FROM df.list_instances()")}
        assert g.id not in {
            r[0] for r in rows_of(bob, "SELECT instance_id FROM df.list_instances(NULL, 10, 'mine')")
        }
        assert rows_of(bob, "SELECT * FROM df.instance_info(%s)", (g.id,)) == []
        assert rows_of(bob, "SELECT * FROM df.instance_nodes(%s)", (g.id,)) == []
        assert rows_of(bob, "SELECT * FROM df.instance_nodes(%s, 5)", (g.id,)) == []
        fails(bob, "SELECT * FROM df.instance_executions(%s)", (g.id,), f"Instance not found: {g.id}")
        assert bob.execute("SELECT df.explain(%s)", (g.id,)).fetchone() == (f"Instance '{g.id}' not found",)
    # the owner sees it all
    assert len(rows_of(uconn, "SELECT * FROM df.list_instances()")) == 1
    assert len(rows_of(uconn, "SELECT * FROM df.instance_nodes(%s)", (g.id,))) == 3


def test_functions_run_as_invoker(conn: Conn) -> None:
    rows = rows_of(
        conn,
        "SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig FROM pg_proc p"
        " WHERE p.pronamespace = 'df'::regnamespace"
        " AND p.proname IN ('instance_nodes', 'list_instances', 'instance_info',"
        " 'instance_executions', 'explain')"
        " ORDER BY 1",
    )
    assert [r[0] for r in rows] == [
        "df.explain(text)",
        "df.instance_executions(text,integer)",
        "df.instance_info(text)",
        "df.instance_nodes(text)",
        "df.instance_nodes(text,integer)",
        "df.list_instances(text,integer)",
        "df.list_instances(text,integer,text,text)",
    ]
    assert all(r[1] is False and r[2] == ["search_path=pg_catalog, pg_temp"] for r in rows)
