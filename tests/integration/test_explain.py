"""df.explain (migration 0005) against spec §2.20: input classification, every
message, dry-run trees of every node kind, and stored instances with their
header and inferred-status markers.

No cluster runs here: instances are started with df.start as a user role and
the runtime is simulated by writing what the worker writes, as the superuser.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fix_db import RoleFactory

Conn = psycopg.Connection[tuple[Any, ...]]

CANNOT = (
    "Cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL expression.\n"
    "Hint: pass an instance ID (8 hex digits), a Durofut JSON value, a DSL expression such as "
    "'SELECT 1' ~> 'SELECT 2', or a SQL statement such as SELECT 1."
)
DSL_MARKERS = ("~>", "|=>", "?>", "!>", "@>", "df.")
VALID_TYPES = (
    "SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, "
    "SIGNAL, STEP, RETRY, TIMEOUT"
)


@pytest.fixture
def user(make_role: RoleFactory) -> str:
    return make_role("exp", include_http=True)


@pytest.fixture
def uconn(make_role: RoleFactory, user: str) -> Iterator[Conn]:
    with psycopg.connect(make_role.dsn(user), autocommit=True) as connection:
        yield connection


def explain(c: Conn, text: str | None) -> str | None:
    row = c.execute("SELECT df.explain(%s)", (text,)).fetchone()
    assert row is not None
    return row[0]


def explain_dsl(c: Conn, expr: str) -> str | None:
    """Explain the value of a DSL expression (computed first, so the dry run sees JSON)."""
    row = c.execute(f"SELECT df.explain({expr})").fetchone()
    assert row is not None
    return row[0]


def lines(*rows: str) -> str:
    return "\n".join(rows)


# -- dry runs: every node kind -----------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("df.sql('SELECT 1')", "SQL: SELECT 1"),
        ("'SELECT 1' |=> 'one'", "SQL: SELECT 1 |=> 'one'"),
        (
            "'SELECT 1' ~> 'SELECT 2' ~> 'SELECT 3'",
            lines("SQL: SELECT 1", "→ SQL: SELECT 2", "→ SQL: SELECT 3"),
        ),
        (
            "'SELECT 1' ~> ('SELECT 2' ~> 'SELECT 3')",
            lines("SQL: SELECT 1", "→ SQL: SELECT 2", "→ SQL: SELECT 3"),
        ),
        (
            "('SELECT 1' |=> 'a') ~> 'SELECT 2' |=> 'b'",
            lines("SQL: SELECT 1 |=> 'a'", "→ SQL: SELECT 2 |=> 'b'"),
        ),
        (
            "(('SELECT 1' ~> 'SELECT 2') |=> 'inner') ~> 'SELECT 3'",
            lines("SQL: SELECT 1", "→ SQL: SELECT 2 |=> 'inner'", "→ SQL: SELECT 3"),
        ),
        ("df.sleep(5)", "SLEEP 5s"),
        ("df.wait_for_schedule('0 * * * *')", "WAIT '0 * * * *'"),
        ("df.wait_for_signal('go')", "SIGNAL 'go'"),
        ("df.wait_for_signal('go', 30)", "SIGNAL 'go' (30s)"),
        ("df.break()", "BREAK"),
        ("df.break('done')", "BREAK 'done'"),
        ("df.break('12345678901234567890')", "BREAK '12345678901234567890'"),
        ("df.break('123456789012345678901')", "BREAK '12345678901234567...'"),
        ("df.http('https://example.com/a')", "HTTP POST https://example.com/a"),
        (
            "df.http('https://example.com/' || repeat('a', 20), 'get')",
            "HTTP GET https://example.com/" + "a" * 20,
        ),
        (
            "df.http('https://example.com/' || repeat('a', 21), 'get')",
            "HTTP GET https://example.com/" + "a" * 17 + "...",
        ),
        (
            """df.http_multipart('https://up.example.com/f', 'PUT', '[{"name":"f","data_b64":"eA=="}]')""",
            "HTTP_MULTIPART PUT https://up.example.com/f",
        ),
        ("""df.step('email', '{"to":"a@b.c"}')""", "STEP email"),
        ("df.retry('SELECT 1', 3)", lines("RETRY (3 attempts)", "└─ ↻ attempt:", "   SQL: SELECT 1")),
        ("df.timeout(df.sleep(60), 2.5)", lines("TIMEOUT 2.5s", "└─ ⏱ body:", "   SLEEP 60s")),
        ("df.timeout('SELECT 1', 5)", lines("TIMEOUT 5s", "└─ ⏱ body:", "   SQL: SELECT 1")),
        (
            "('SELECT true' ?> 'SELECT 1') !> 'SELECT 2'",
            lines(
                "IF",
                "├─ ? condition:",
                "│  SQL: SELECT true",
                "├─ ✓ then:",
                "│  SQL: SELECT 1",
                "└─ ✗ else:",
                "   SQL: SELECT 2",
            ),
        ),
        (
            "df.if_rows('r', 'SELECT 1', 'SELECT 2')",
            lines(
                "IF",
                "├─ ? condition:",
                "│  HAS ROWS 'r'",
                "├─ ✓ then:",
                "│  SQL: SELECT 1",
                "└─ ✗ else:",
                "   SQL: SELECT 2",
            ),
        ),
        ("@> 'SELECT 1'", lines("LOOP (infinite)", "└─ ↻ body:", "   SQL: SELECT 1")),
        (
            "df.loop('SELECT 1' ~> 'SELECT 2', 'SELECT false')",
            lines(
                "LOOP (while)",
                "├─ ↻ body:",
                "│  SQL: SELECT 1",
                "│  → SQL: SELECT 2",
                "└─ ? while:",
                "   SQL: SELECT false",
            ),
        ),
        (
            "'SELECT 1' & 'SELECT 2'",
            lines("JOIN (2)", "├─ ║ branch 1:", "│  SQL: SELECT 1", "└─ ║ branch 2:", "   SQL: SELECT 2"),
        ),
        (
            "df.join3('SELECT 1', 'SELECT 2', 'SELECT 3') |=> 'all'",
            lines(
                "JOIN (3) |=> 'all'",
                "├─ ║ branch 1:",
                "│  SQL: SELECT 1",
                "├─ ║ branch 2:",
                "│  SQL: SELECT 2",
                "└─ ║ branch 3:",
                "   SQL: SELECT 3",
            ),
        ),
        (
            "'SELECT 1' | (df.sleep(10) ~> 'SELECT 2')",
            lines(
                "RACE",
                "├─ ║ branch 1:",
                "│  SQL: SELECT 1",
                "└─ ║ branch 2:",
                "   SLEEP 10s",
                "   → SQL: SELECT 2",
            ),
        ),
    ],
)
def test_dry_run_node_kinds(uconn: Conn, expr: str, expected: str) -> None:
    assert explain_dsl(uconn, expr) == expected
    # the same expression given as text is evaluated as the caller: the same tree,
    # when it has a DSL marker (& and | are not markers)
    if any(marker in expr for marker in DSL_MARKERS):
        assert explain(uconn, expr) == expected
    else:
        assert explain(uconn, expr) == CANNOT


def test_dry_run_nested_tree(uconn: Conn) -> None:
    expr = (
        "'SELECT 1' ~> 'SELECT 2' ~> ('SELECT true' ?> ('a' & 'b' |=> 'j')"
        " !> df.loop('x' ~> df.break('done'), 'SELECT false')) |=> 'top'"
    )
    assert explain(uconn, expr) == lines(
        "SQL: SELECT 1",
        "→ SQL: SELECT 2",
        "→ IF |=> 'top'",
        "├─ ? condition:",
        "│  SQL: SELECT true",
        "├─ ✓ then:",
        "│  JOIN (2) |=> 'j'",
        "│  ├─ ║ branch 1:",
        "│  │  SQL: a",
        "│  └─ ║ branch 2:",
        "│     SQL: b",
        "└─ ✗ else:",
        "   LOOP (while)",
        "   ├─ ↻ body:",
        "   │  SQL: x",
        "   │  → BREAK 'done'",
        "   └─ ? while:",
        "      SQL: SELECT false",
    )


def test_dry_run_composites_in_a_chain(uconn: Conn) -> None:
    expr = (
        "df.race(df.retry('SELECT 1', 3), df.timeout(df.sleep(5), 2.5))"
        " ~> df.if_rows('x', df.wait_for_signal('go', 10), 'SELECT 2') ~> df.sleep(1)"
    )
    assert explain(uconn, expr) == lines(
        "RACE",
        "├─ ║ branch 1:",
        "│  RETRY (3 attempts)",
        "│  └─ ↻ attempt:",
        "│     SQL: SELECT 1",
        "└─ ║ branch 2:",
        "   TIMEOUT 2.5s",
        "   └─ ⏱ body:",
        "      SLEEP 5s",
        "→ IF",
        "├─ ? condition:",
        "│  HAS ROWS 'x'",
        "├─ ✓ then:",
        "│  SIGNAL 'go' (10s)",
        "└─ ✗ else:",
        "   SQL: SELECT 2",
        "→ SLEEP 1s",
    )


def test_dry_run_of_raw_json(uconn: Conn) -> None:
    fut = {
        "node_type": "JOIN",
        "left_node": {"node_type": "SQL", "query": "SELECT df.version()"},
        "right_node": {"node_type": "SLEEP", "query": "2"},
        "extra_nodes": [{"node_type": "SQL", "query": "SELECT 3"}, {"node_type": "SQL", "query": "SELECT 4"}],
    }
    # JSON is explained as is, even with "df." inside it
    assert explain(uconn, "  " + json.dumps(fut) + "\n") == lines(
        "JOIN (4)",
        "├─ ║ branch 1:",
        "│  SQL: SELECT df.version()",
        "├─ ║ branch 2:",
        "│  SLEEP 2s",
        "├─ ║ branch 3:",
        "│  SQL: SELECT 3",
        "└─ ║ branch 4:",
        "   SQL: SELECT 4",
    )


def test_sql_truncation(uconn: Conn) -> None:
    fifty = "SELECT " + "x" * 43
    assert len(fifty) == 50
    assert explain_dsl(uconn, f"df.sql('{fifty}')") == "SQL: " + fifty
    assert explain_dsl(uconn, f"df.sql('{fifty}y')") == "SQL: " + fifty[:47] + "..."
    # one line: whitespace runs, newlines included, become one space
    assert (
        explain_dsl(uconn, "df.sql(E'SELECT 1\\n  FROM t\\n\\t WHERE true  ')")
        == "SQL: SELECT 1 FROM t WHERE true"
    )


def test_plain_sql_statement(uconn: Conn) -> None:
    assert explain(uconn, "SELECT 1") == "SQL: SELECT 1"
    assert explain(uconn, "select now()") == "SQL: select now()"
    assert explain(uconn, "SELECT\n  1") == "SQL: SELECT 1"
    long_sql = "UPDATE t SET a = 1 WHERE b IN (SELECT b FROM u WHERE c > 100)"
    assert explain(uconn, long_sql) == "SQL: " + long_sql[:47] + "..."
    for statement in (
        "INSERT INTO t VALUES (1)",
        "DELETE FROM t",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "CREATE TABLE t (a int)",
        "ALTER TABLE t ADD b int",
        "DROP TABLE t",
        "CALL p()",
        "DO $$ BEGIN END $$",
        "TRUNCATE t",
        "GRANT SELECT ON t TO x",
        "REVOKE SELECT ON t FROM x",
        "EXPLAIN SELECT 1",
    ):
        assert explain(uconn, statement) == "SQL: " + statement


def test_partial_if_is_explained_as_df_start_would_take_it(uconn: Conn) -> None:
    row = uconn.execute("SELECT 'SELECT true' ?> 'SELECT 1'").fetchone()
    assert row is not None
    partial = str(row[0])
    assert explain(uconn, "'SELECT true' ?> 'SELECT 1'") == "SQL: " + partial[:47] + "..."


# -- messages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "",
        "   ",
        "SELECTX 1",
        "'SELECT 1'",
        "1234567",
        "123456789",
        "[1, 2]",
        '{"a": 1}',
        '"SELECT 1"',
    ],
)
def test_cannot_explain(uconn: Conn, text: str) -> None:
    assert explain(uconn, text) == CANNOT


def test_null_input(uconn: Conn) -> None:
    assert explain(uconn, None) is None


def test_unknown_instance(uconn: Conn) -> None:
    assert explain(uconn, "deadbeef") == "Instance 'deadbeef' not found"
    assert explain(uconn, " DEADBEEF\n") == "Instance 'DEADBEEF' not found"


def test_json_errors(uconn: Conn) -> None:
    assert explain(uconn, '{"node_type":"FOO"}') == (
        f"Invalid durable function graph: Unknown node_type 'FOO'. Valid types: {VALID_TYPES}"
    )
    assert explain(uconn, '{"node_type":"IF","left_node":{"node_type":"SQL","query":"x"}}') == (
        "Failed to parse Durofut JSON: Malformed Durofut JSON with node_type 'IF': missing right_node"
    )
    nested = (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"x"},"right_node":{"node_type":"NOPE"}}'
    )
    assert explain(uconn, nested) == (
        "Invalid durable function graph: Malformed Durofut JSON with node_type 'THEN':"
        " right_node has unknown node_type 'NOPE'"
    )
    assert explain(uconn, '{"node_type":"SLEEP","query":"soon"}') == (
        "Failed to parse Durofut JSON: Malformed Durofut JSON with node_type 'SLEEP':"
        ' query "soon" is not a whole number of seconds'
    )


def _nested(depth: int) -> str:
    fut = '{"node_type":"SQL","query":"SELECT 1"}'
    for _ in range(depth - 1):
        fut = '{"node_type":"LOOP","left_node":' + fut + "}"
    return fut


def test_depth_and_size_limits(uconn: Conn) -> None:
    deep = explain(uconn, _nested(256))
    assert deep is not None
    assert deep.count("LOOP (infinite)") == 255
    assert deep.splitlines()[-1] == "   " * 255 + "SQL: SELECT 1"
    assert explain(uconn, _nested(257)) == (
        "Invalid durable function graph: graph exceeds the maximum nesting depth of 256"
    )
    # through a DSL expression too
    uconn.execute("SELECT set_config('test.graph', %s, false)", (_nested(256),))
    assert explain(uconn, "df.seq('SELECT 0', current_setting('test.graph'))") == (
        "Invalid durable function graph: graph exceeds the maximum nesting depth of 256"
    )
    extras = ",".join(f'{{"node_type":"SQL","query":"SELECT {i}"}}' for i in range(9998))
    wide = (
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"a"},'
        '"right_node":{"node_type":"SQL","query":"b"},"extra_nodes":[' + extras + "]}"
    )
    assert explain(uconn, wide) == (
        "Invalid durable function graph: graph has 10001 nodes, exceeding the maximum of 10000"
    )


def test_evaluation_messages(conn: Conn, uconn: Conn) -> None:
    assert explain(uconn, "df.nope()") == "Failed to evaluate expression: function df.nope() does not exist"
    assert explain(uconn, "NULL::text ~> 'SELECT 1'") == "Expression returned NULL"
    assert (
        explain(uconn, "df.sleep(-1)") == "Failed to evaluate expression: Sleep duration must be non-negative"
    )
    # plain SQL that contains a DSL marker is evaluated as SELECT <input>
    assert explain(uconn, """SELECT * FROM t WHERE j @> '{"a": 1}'""") == (
        'Failed to evaluate expression: syntax error at or near "SELECT"'
    )
    assert explain(uconn, "SELECT df.version()") == (
        'Failed to evaluate expression: syntax error at or near "SELECT"'
    )
    # the non-future helper guard applies as in df.start
    assert explain(uconn, "df.setvar('v', '1')") == (
        "Failed to evaluate expression: df.setvar() cannot be used as a workflow step."
        " Call df.setvar() before df.start()."
    )
    assert uconn.execute("SELECT df.getvar('v')").fetchone() == (None,)


def test_evaluation_runs_as_the_caller(conn: Conn, uconn: Conn, user: str) -> None:
    assert explain(uconn, "df.sql('SELECT ' || current_user)") == f"SQL: SELECT {user}"
    conn.execute("CREATE TABLE public.secret_graphs (g text)")
    conn.execute("""INSERT INTO public.secret_graphs VALUES ('{"node_type":"SQL","query":"SELECT 42"}')""")
    assert explain(uconn, "df.seq((SELECT g FROM public.secret_graphs), 'x')") == (
        "Failed to evaluate expression: permission denied for table secret_graphs"
    )
    assert explain(conn, "df.seq((SELECT g FROM public.secret_graphs), 'x')") == lines(
        "SQL: SELECT 42", "→ SQL: x"
    )


def test_evaluation_changes_nothing(uconn: Conn) -> None:
    uconn.execute("CREATE TABLE public.calls (n int)")
    uconn.execute(
        "CREATE FUNCTION public.graph_with_effect() RETURNS text LANGUAGE sql"
        " AS $$ INSERT INTO public.calls VALUES (1); SELECT 'SELECT 1' $$"
    )
    assert explain(uconn, "df.sql(public.graph_with_effect())") == "SQL: SELECT 1"
    assert uconn.execute("SELECT count(*) FROM public.calls").fetchone() == (0,)
    # the caller's search_path is untouched
    assert uconn.execute("SHOW search_path").fetchone() == ('"$user", public',)


# -- stored instances ----------------------------------------------------------------------------


def start(uconn: Conn, expr: str, label: str | None = None) -> str:
    row = uconn.execute(f"SELECT df.start({expr}, %s)", (label,)).fetchone()
    assert row is not None
    return str(row[0])


def node(conn: Conn, iid: str, node_type: str, query: str | None = None) -> str:
    rows = conn.execute(
        "SELECT id FROM df.nodes"
        " WHERE instance_id = %s AND node_type = %s AND (%s::text IS NULL OR query = %s)",
        (iid, node_type, query, query),
    ).fetchall()
    assert len(rows) == 1
    return str(rows[0][0])


def stamp(
    conn: Conn, iid: str, node_id: str, status: str, result: Any = None, *, scope: str | None = None
) -> None:
    conn.execute(
        "UPDATE df.nodes SET status = %s, result = %s,"
        " status_details = jsonb_build_object('execution_id', %s::text), updated_at = now()"
        " WHERE instance_id = %s AND id = %s",
        (status, None if result is None else Jsonb(result), scope or f"{iid}::1", iid, node_id),
    )


def set_status(conn: Conn, iid: str, status: str) -> None:
    conn.execute("UPDATE df.instances SET status = 'running' WHERE id = %s AND status = 'pending'", (iid,))
    if status != "running":
        conn.execute("UPDATE df.instances SET status = %s WHERE id = %s", (status, iid))


def root_of(conn: Conn, iid: str) -> str:
    row = conn.execute("SELECT root_node FROM df.instances WHERE id = %s", (iid,)).fetchone()
    assert row is not None
    return str(row[0])


def test_completed_instance(conn: Conn, uconn: Conn) -> None:
    iid = start(uconn, "('SELECT true' ?> 'SELECT ''a''') !> 'SELECT ''b'''", "nightly")
    result = {"rows": [{"?column?": "a"}], "row_count": 1}
    stamp(
        conn,
        iid,
        node(conn, iid, "SQL", "SELECT true"),
        "completed",
        {"rows": [{"bool": True}], "row_count": 1},
    )
    stamp(conn, iid, node(conn, iid, "SQL", "SELECT 'a'"), "completed", result)
    stamp(conn, iid, root_of(conn, iid), "completed", result)
    set_status(conn, iid, "completed")
    text = explain(uconn, iid)
    assert text == lines(
        f"Instance: {iid} (nightly)",
        "Status:   ✓ completed",
        'Output:   {"rows": [{"?column?": "a"}], "row_count": 1}',
        "",
        "IF ✓",
        "├─ ? condition:",
        "│  SQL: SELECT true ✓",
        "├─ ✓ then:",
        "│  SQL: SELECT 'a' ✓",
        "└─ ✗ else:",
        "   SQL: SELECT 'b' ⊘",
    )


def test_running_instance(conn: Conn, uconn: Conn) -> None:
    iid = start(uconn, "'SELECT 1' ~> df.sleep(30) ~> 'SELECT 2'")
    set_status(conn, iid, "running")
    stamp(conn, iid, root_of(conn, iid), "running")
    stamp(conn, iid, node(conn, iid, "SQL", "SELECT 1"), "completed", {"rows": [], "row_count": 0})
    stamp(conn, iid, node(conn, iid, "SLEEP"), "running")
    assert explain(uconn, iid) == lines(
        f"Instance: {iid}",
        "Status:   ⏳ running",
        "",
        "SQL: SELECT 1 ✓",
        "→ SLEEP 30s ⏳",
        "→ SQL: SELECT 2 ○",
    )


def test_pending_instance(uconn: Conn) -> None:
    iid = start(uconn, "'SELECT 1' |=> 'x'", "")
    assert explain(uconn, iid) == lines(
        f"Instance: {iid} ()", "Status:   ○ pending", "", "SQL: SELECT 1 |=> 'x' ○"
    )


def test_failed_instance(conn: Conn, uconn: Conn) -> None:
    iid = start(uconn, "'SELECT 1/0' ~> 'SELECT 2'", "job")
    error = "SQL execution failed: division by zero"
    stamp(conn, iid, node(conn, iid, "SQL", "SELECT 1/0"), "failed", error)
    stamp(conn, iid, root_of(conn, iid), "failed", error)
    set_status(conn, iid, "failed")
    assert explain(uconn, iid) == lines(
        f"Instance: {iid} (job)",
        "Status:   ✗ failed",
        "Output:   SQL execution failed: division by zero",
        "",
        "SQL: SELECT 1/0 ✗",
        "→ SQL: SELECT 2 ⊘",
    )


def test_cancelled_instance(conn: Conn, uconn: Conn) -> None:
    iid = start(uconn, "df.sleep(100) ~> 'SELECT 1'")
    set_status(conn, iid, "running")
    stamp(conn, iid, root_of(conn, iid), "running")
    stamp(conn, iid, node(conn, iid, "SLEEP"), "running")
    uconn.execute("SELECT df.cancel(%s)", (iid,))
    assert explain(uconn, iid) == lines(
        f"Instance: {iid}",
        "Status:   ✗ cancelled",
        "",
        "SLEEP 100s ⊘",
        "→ SQL: SELECT 1 ⊘",
    )


def test_race_instance_shows_both_branches(conn: Conn, uconn: Conn) -> None:
    iid = start(uconn, "'SELECT 1' | (df.sleep(10) ~> 'SELECT 2')")
    root = root_of(conn, iid)
    fast = node(conn, iid, "SQL", "SELECT 1")
    slow = node(conn, iid, "THEN")
    result = {"rows": [{"?column?": 1}], "row_count": 1}
    set_status(conn, iid, "running")
    stamp(conn, iid, fast, "completed", result, scope=f"{iid}::1::{fast}::1")
    stamp(conn, iid, slow, "running", scope=f"{iid}::1::{slow}::1")
    stamp(conn, iid, node(conn, iid, "SLEEP"), "running", scope=f"{iid}::1::{slow}::1")
    stamp(conn, iid, root, "completed", result)
    set_status(conn, iid, "completed")
    text = explain(uconn, iid)
    assert text is not None
    assert text.splitlines()[4:] == [
        "RACE ✓",
        "├─ ║ branch 1:",
        "│  SQL: SELECT 1 ✓",
        "└─ ║ branch 2:",
        "   SLEEP 10s ⊘",
        "   → SQL: SELECT 2 ⊘",
    ]


def test_loop_instance_marks_the_superseded_iteration_pending(conn: Conn, uconn: Conn) -> None:
    iid = start(uconn, "@> ('SELECT 1' ~> 'SELECT 2')")
    root = root_of(conn, iid)
    result = {"rows": [], "row_count": 0}
    set_status(conn, iid, "running")
    stamp(conn, iid, root, "running")
    stamp(conn, iid, node(conn, iid, "SQL", "SELECT 2"), "completed", result, scope=f"{iid}::1")
    stamp(conn, iid, node(conn, iid, "THEN"), "running", scope=f"{iid}::2")
    stamp(conn, iid, node(conn, iid, "SQL", "SELECT 1"), "running", scope=f"{iid}::2")
    assert explain(uconn, iid) == lines(
        f"Instance: {iid}",
        "Status:   ⏳ running",
        "",
        "LOOP (infinite) ⏳",
        "└─ ↻ body:",
        "   SQL: SELECT 1 ⏳",
        "   → SQL: SELECT 2 ○",
    )


def test_output_truncation(conn: Conn, uconn: Conn) -> None:
    iid = start(uconn, "'SELECT 1'")
    root = root_of(conn, iid)
    stamp(conn, iid, root, "failed", "e" * 60)
    set_status(conn, iid, "failed")
    text = explain(uconn, iid)
    assert text is not None
    assert text.splitlines()[2] == "Output:   " + "e" * 60
    conn.execute("UPDATE df.nodes SET result = %s WHERE instance_id = %s", (Jsonb("e" * 61), iid))
    text = explain(uconn, iid)
    assert text is not None
    assert text.splitlines()[2] == "Output:   " + "e" * 57 + "..."


def test_instance_without_visible_nodes(conn: Conn, uconn: Conn) -> None:
    iid = start(uconn, "'SELECT 1'")
    conn.execute("SET session_replication_role = replica")  # skip the foreign keys
    conn.execute("DELETE FROM df.nodes WHERE instance_id = %s", (iid,))
    conn.execute("RESET session_replication_role")
    assert explain(uconn, iid) == f"No nodes found for instance '{iid}'"


def test_another_roles_instance_is_not_found(conn: Conn, uconn: Conn, make_role: RoleFactory) -> None:
    iid = start(uconn, "'SELECT 1'")
    with psycopg.connect(make_role.dsn(make_role("other")), autocommit=True) as other:
        assert explain(other, iid) == f"Instance '{iid}' not found"
    assert explain(conn, iid) is not None
    assert str(explain(conn, iid)).startswith(f"Instance: {iid}\n")
