"""The df DSL (migration 0003): constructors, operators, auto-wrapping, strict
parse and flattening, against the contract of spec §1.3-§1.5."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[tuple[Any, ...]]

VALID_TYPES = (
    "SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, "
    "SIGNAL, STEP, RETRY, TIMEOUT"
)
BAD_NAME = "is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*"


@pytest.fixture
def db(conn: Conn) -> Conn:
    """The test connection with df on the search_path, for the operators."""
    conn.execute("SET search_path = public, df")
    return conn


def one(db: Conn, query: str, params: tuple[Any, ...] = ()) -> Any:
    row = db.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def fails(db: Conn, query: str, message: str, params: tuple[Any, ...] = ()) -> None:
    """``query`` raises an error whose primary message is exactly ``message``."""
    with pytest.raises(psycopg.Error) as info:
        db.execute(query, params)
    assert info.value.diag.message_primary == message


def sql_node(query: str) -> str:
    return '{"node_type":"SQL","query":' + json.dumps(query, ensure_ascii=False) + "}"


def leaf(node_type: str, query: str) -> str:
    return '{"node_type":"' + node_type + '","query":' + json.dumps(query) + "}"


def flatten(db: Conn, fut: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT ord, id, node_type, query, result_name, left_node, right_node"
        " FROM df._flatten(df._parse_strict(%s)) ORDER BY ord",
        (fut,),
    ).fetchall()


# -- leaf constructors ------------------------------------------------------------


def test_sql_leaf(db: Conn) -> None:
    assert one(db, "SELECT df.sql('SELECT 1')") == '{"node_type":"SQL","query":"SELECT 1"}'
    assert one(db, """SELECT df.sql(E'SELECT \\'a"b\\\\c\\n\\t\u00e9')""") == (
        '{"node_type":"SQL","query":"SELECT \'a\\"b\\\\c\\n\\t\u00e9"}'
    )
    # explicit df.sql wraps even JSON
    assert one(db, """SELECT df.sql('{"node_type":"SLEEP","query":"1"}')""") == (
        '{"node_type":"SQL","query":"{\\"node_type\\":\\"SLEEP\\",\\"query\\":\\"1\\"}"}'
    )


def test_sleep(db: Conn) -> None:
    assert one(db, "SELECT df.sleep(5)") == '{"node_type":"SLEEP","query":"5"}'
    assert one(db, "SELECT df.sleep(0)") == '{"node_type":"SLEEP","query":"0"}'
    fails(db, "SELECT df.sleep(-1)", "Sleep duration must be non-negative")


def test_wait_for_schedule(db: Conn) -> None:
    assert one(db, "SELECT df.wait_for_schedule('0 * * * *')") == (
        '{"node_type":"WAIT_SCHEDULE","query":"{\\"cron_expr\\":\\"0 * * * *\\"}"}'
    )


@pytest.mark.parametrize(
    "expr",
    [
        "* * * * *",
        "*/5 0-23/2 1,15 * *",
        "0 9 ? JAN-MAR mon-fri",
        "30 4 1 jan,Jul,DEC 0",
        "0 0 ? * 7",
        "5/15 * * * SUN,SAT",
        "  0 12 * * 1-5  ",
        "0\t0 *  * *",
    ],
)
def test_cron_accepts(db: Conn, expr: str) -> None:
    assert json.loads(json.loads(one(db, "SELECT df.wait_for_schedule(%s)", (expr,)))["query"]) == {
        "cron_expr": expr
    }


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("0 * * * * *", "expected 5 fields, found 6"),
        ("* * * *", "expected 5 fields, found 4"),
        ("", "expected 5 fields, found 0"),
        ("61 * * * *", "minute value 61 out of range 0-59"),
        ("0 24 * * *", "hour value 24 out of range 0-23"),
        ("0 0 0 * *", "day-of-month value 0 out of range 1-31"),
        ("0 0 32 * *", "day-of-month value 32 out of range 1-31"),
        ("0 0 * 13 *", "month value 13 out of range 1-12"),
        ("0 0 * * 8", "day-of-week value 8 out of range 0-7"),
        ("0 0 * FOO *", "invalid month value 'FOO'"),
        ("0 0 * * MONDAY", "invalid day-of-week value 'MONDAY'"),
        ("0 0 * MON *", "invalid month value 'MON'"),
        ("x * * * *", "invalid minute value 'x'"),
        ("*/0 * * * *", "minute step 0 out of range 1-59"),
        ("*/x * * * *", "invalid minute step 'x'"),
        ("1/2/3 * * * *", "invalid minute item '1/2/3'"),
        ("1-2-3 * * * *", "invalid minute item '1-2-3'"),
        ("30-10 * * * *", "minute range 30-10 starts after it ends"),
        ("0 0 * * FRI-MON", "day-of-week range FRI-MON starts after it ends"),
        ("? * * * *", "'?' is only allowed in the day-of-month and day-of-week fields"),
        ("0 0 1,,2 * *", "empty list item in the day-of-month field"),
        ("0 99999999999 * * *", "hour value 99999999999 out of range 0-23"),
        ("L * * * *", "invalid minute value 'L'"),
    ],
)
def test_cron_rejects(db: Conn, expr: str, reason: str) -> None:
    fails(
        db,
        "SELECT df.wait_for_schedule(%s)",
        f"Invalid cron expression '{expr}': {reason}",
        (expr,),
    )


def test_break(db: Conn) -> None:
    assert one(db, "SELECT df.break()") == '{"node_type":"BREAK","query":"{\\"break_value\\":null}"}'
    assert one(db, "SELECT df.break(NULL)") == one(db, "SELECT df.break()")
    assert one(db, """SELECT df.break('say "hi"')""") == (
        '{"node_type":"BREAK","query":"{\\"break_value\\":\\"say \\\\\\"hi\\\\\\"\\"}"}'
    )
    assert json.loads(json.loads(one(db, """SELECT df.break('{"a":1}')"""))["query"]) == {
        "break_value": '{"a":1}'
    }


def test_wait_for_signal(db: Conn) -> None:
    assert one(db, "SELECT df.wait_for_signal('go')") == leaf(
        "SIGNAL", '{"signal_name":"go","timeout_seconds":null}'
    )
    assert one(db, "SELECT df.wait_for_signal('go', 10)") == leaf(
        "SIGNAL", '{"signal_name":"go","timeout_seconds":10}'
    )
    assert one(db, "SELECT df.wait_for_signal(name => 'a', timeout_seconds => NULL)") == leaf(
        "SIGNAL", '{"signal_name":"a","timeout_seconds":null}'
    )
    fails(db, "SELECT df.wait_for_signal('')", "Signal name cannot be empty")
    fails(db, "SELECT df.wait_for_signal('  ')", "Signal name cannot be empty")
    fails(db, "SELECT df.wait_for_signal(NULL)", "Signal name cannot be empty")
    fails(db, "SELECT df.wait_for_signal('a', 0)", "Timeout must be positive")
    fails(db, "SELECT df.wait_for_signal('a', -5)", "Timeout must be positive")


def test_http(db: Conn) -> None:
    assert one(db, "SELECT df.http('https://example.com/a')") == leaf(
        "HTTP",
        '{"url":"https://example.com/a","method":"POST","body":null,"headers":null,"timeout_seconds":30}',
    )
    assert one(
        db,
        """SELECT df.http('http://h/x', 'get', 'payload', '{"X-A": "1", "B": "two, 2"}', 5)""",
    ) == leaf(
        "HTTP",
        '{"url":"http://h/x","method":"GET","body":"payload","headers":{"B":"two, 2","X-A":"1"},'
        '"timeout_seconds":5}',
    )
    for method in ("get", "Post", "PUT", "delete", "patch"):
        out = json.loads(json.loads(one(db, "SELECT df.http('http://h', %s)", (method,)))["query"])
        assert out["method"] == method.upper()
    # templated URLs skip the scheme check
    assert '"url":"{base}/x"' in json.loads(one(db, "SELECT df.http('{base}/x', 'GET')"))["query"]


def test_http_errors(db: Conn) -> None:
    fails(
        db,
        "SELECT df.http('ftp://h/x')",
        "Blocked: unsupported URL scheme 'ftp'. Only http and https are allowed.",
    )
    fails(
        db,
        "SELECT df.http('FILE:///etc/passwd')",
        "Blocked: unsupported URL scheme 'file'. Only http and https are allowed.",
    )
    fails(db, "SELECT df.http('example.com')", "Invalid URL: relative URL without a base")
    fails(
        db,
        "SELECT df.http('http://h', 'head')",
        "Invalid HTTP method: HEAD. Must be GET, POST, PUT, DELETE, or PATCH",
    )
    fails(db, "SELECT df.http('http://h', 'GET', NULL, NULL, 0)", "Timeout must be positive")
    fails(db, "SELECT df.http('http://h', timeout_seconds => -1)", "Timeout must be positive")
    fails(
        db,
        """SELECT df.http('http://h', headers => '{"a": 1}')""",
        "headers must be a JSON object of string values",
    )
    fails(db, "SELECT df.http(NULL)", "url cannot be NULL")


def test_http_multipart(db: Conn) -> None:
    assert one(
        db,
        """SELECT df.http_multipart('https://h/up', 'put',
               '[{"name": "f", "data_b64": "AA==", "filename": "a.txt"}]', '{"A": "b"}', 9)""",
    ) == leaf(
        "HTTP_MULTIPART",
        '{"url":"https://h/up","method":"PUT","parts":[{"name":"f","data_b64":"AA==",'
        '"filename":"a.txt"}],"headers":{"A":"b"},"timeout_seconds":9}',
    )
    assert json.loads(
        json.loads(
            one(
                db,
                """SELECT df.http_multipart('http://h', parts => '[{"name":"a","data_b64":""}]')""",
            )
        )["query"]
    ) == {
        "url": "http://h",
        "method": "POST",
        "parts": [{"name": "a", "data_b64": ""}],
        "headers": None,
        "timeout_seconds": 30,
    }


def test_http_multipart_errors(db: Conn) -> None:
    part = '[{"name":"a","data_b64":"AA=="}]'
    fails(
        db,
        "SELECT df.http_multipart('http://h', 'get', %s)",
        "Invalid HTTP method for multipart: GET. Must be POST, PUT, or PATCH",
        (part,),
    )
    fails(db, "SELECT df.http_multipart('http://h')", "parts is required and cannot be NULL")
    fails(
        db,
        "SELECT df.http_multipart('http://h', 'POST', '{}')",
        "parts must be a JSON array of part objects",
    )
    fails(
        db,
        "SELECT df.http_multipart('http://h', 'POST', '[1]')",
        "parts must be a JSON array of part objects",
    )
    fails(
        db,
        "SELECT df.http_multipart('http://h', 'POST', '[]')",
        "parts must contain at least one part",
    )
    fails(
        db,
        "SELECT df.http_multipart('gopher://h', 'POST', %s)",
        "Blocked: unsupported URL scheme 'gopher'. Only http and https are allowed.",
        (part,),
    )
    fails(
        db,
        "SELECT df.http_multipart('http://h', 'POST', %s, NULL, 0)",
        "Timeout must be positive",
        (part,),
    )


def test_http_not_executable_by_public(db: Conn) -> None:
    for signature in (
        "df.http(text,text,text,jsonb,integer)",
        "df.http_multipart(text,text,jsonb,jsonb,integer)",
    ):
        assert one(db, "SELECT has_function_privilege('public', %s, 'EXECUTE')", (signature,)) is False
    assert one(db, "SELECT has_function_privilege('public', 'df.seq(text,text)', 'EXECUTE')") is True


# -- durable-cluster extensions ---------------------------------------------------


def test_step(db: Conn) -> None:
    assert one(db, "SELECT df.step('email')") == leaf("STEP", '{"kind":"email","args":{}}')
    assert one(db, """SELECT df.step('email', '{"to": ["a", "b"], "n": 1.5, "s": "x, y: z"}')""") == leaf(
        "STEP", '{"kind":"email","args":{"n":1.5,"s":"x, y: z","to":["a","b"]}}'
    )
    fails(db, "SELECT df.step('')", "df.step: kind cannot be empty")
    fails(db, "SELECT df.step('k', '[1]')", "df.step: args must be a JSON object")
    fails(db, "SELECT df.step('k', '3')", "df.step: args must be a JSON object")


def test_retry(db: Conn) -> None:
    assert one(db, "SELECT df.retry('SELECT 1', 3)") == (
        '{"node_type":"RETRY","query":'
        '"{\\"max_attempts\\":3,\\"backoff_seconds\\":1,\\"max_backoff_seconds\\":60}",'
        '"left_node":{"node_type":"SQL","query":"SELECT 1"}}'
    )
    assert one(db, "SELECT df.retry(df.sleep(1), 5, 0.5, 10.25)") == (
        '{"node_type":"RETRY","query":'
        '"{\\"max_attempts\\":5,\\"backoff_seconds\\":0.5,\\"max_backoff_seconds\\":10.25}",'
        '"left_node":{"node_type":"SLEEP","query":"1"}}'
    )
    assert json.loads(json.loads(one(db, "SELECT df.retry('x', 1, 0, 0)"))["query"]) == {
        "max_attempts": 1,
        "backoff_seconds": 0,
        "max_backoff_seconds": 0,
    }
    assert '\\"backoff_seconds\\":0.1,' in one(db, "SELECT df.retry('x', 2, 0.1)")
    fails(db, "SELECT df.retry('x', 0)", "df.retry: max_attempts must be at least 1")
    fails(db, "SELECT df.retry('x', 2, -0.5)", "df.retry: backoff_seconds must be non-negative")
    fails(
        db,
        "SELECT df.retry('x', 2, 5, 2)",
        "df.retry: max_backoff_seconds must be at least backoff_seconds",
    )
    fails(
        db,
        "SELECT df.retry('x', 2, 'NaN')",
        "df.retry: backoff_seconds must be a finite number",
    )


def test_timeout(db: Conn) -> None:
    assert one(db, "SELECT df.timeout('SELECT 1', 30)") == (
        '{"node_type":"TIMEOUT","query":"{\\"seconds\\":30}",'
        '"left_node":{"node_type":"SQL","query":"SELECT 1"}}'
    )
    assert '"{\\"seconds\\":2.5}"' in one(db, "SELECT df.timeout('x', 2.5)")
    fails(db, "SELECT df.timeout('x', 0)", "df.timeout: seconds must be positive")
    fails(db, "SELECT df.timeout('x', -1)", "df.timeout: seconds must be positive")
    fails(db, "SELECT df.timeout('x', 'Infinity')", "df.timeout: seconds must be a finite number")


# -- composers ----------------------------------------------------------------------

A = sql_node("SELECT 1")
B = sql_node("SELECT 2")
C = sql_node("SELECT 3")


def test_seq(db: Conn) -> None:
    expected = '{"node_type":"THEN","left_node":' + A + ',"right_node":' + B + "}"
    assert one(db, "SELECT df.seq('SELECT 1', 'SELECT 2')") == expected
    assert one(db, "SELECT 'SELECT 1' ~> 'SELECT 2'") == expected
    assert one(db, "SELECT df.seq(df.sql('SELECT 1'), df.sql('SELECT 2'))") == expected


def test_join_race_join3(db: Conn) -> None:
    assert one(db, "SELECT 'SELECT 1' & 'SELECT 2'") == (
        '{"node_type":"JOIN","left_node":' + A + ',"right_node":' + B + "}"
    )
    assert one(db, "SELECT df.join('SELECT 1', 'SELECT 2')") == one(db, "SELECT 'SELECT 1' & 'SELECT 2'")
    assert one(db, "SELECT 'SELECT 1' | 'SELECT 2'") == (
        '{"node_type":"RACE","left_node":' + A + ',"right_node":' + B + "}"
    )
    assert one(db, "SELECT df.race('SELECT 1', 'SELECT 2')") == one(db, "SELECT 'SELECT 1' | 'SELECT 2'")
    assert one(db, "SELECT df.join3('SELECT 1', 'SELECT 2', 'SELECT 3')") == (
        '{"node_type":"JOIN","left_node":' + A + ',"right_node":' + B + ',"extra_nodes":[' + C + "]}"
    )


def test_if(db: Conn) -> None:
    expected = (
        '{"node_type":"IF","left_node":'
        + A
        + ',"right_node":'
        + B
        + ',"condition_node":'
        + sql_node("SELECT true")
        + "}"
    )
    assert one(db, "SELECT df.if('SELECT true', 'SELECT 1', 'SELECT 2')") == expected
    assert one(db, "SELECT 'SELECT true' ?> 'SELECT 1' !> 'SELECT 2'") == expected
    assert one(db, "SELECT ('SELECT true' ?> 'SELECT 1') !> 'SELECT 2'") == expected


def test_partial_if(db: Conn) -> None:
    partial = one(db, "SELECT 'SELECT true' ?> 'SELECT 1'")
    assert partial == (
        '{"_partial_if":true,"condition":' + sql_node("SELECT true") + ',"then_branch":' + A + "}"
    )
    # completed by df.if_else_op, also when written by hand with spaces
    spaced = json.dumps(json.loads(partial), indent=1)
    assert one(db, "SELECT df.if_else_op(%s, 'SELECT 2')", (spaced,)) == one(
        db, "SELECT df.if('SELECT true', 'SELECT 1', 'SELECT 2')"
    )
    # a partial used anywhere else has no node_type: it is wrapped as SQL text
    assert one(db, "SELECT df.seq(%s, 'SELECT 2')", (partial,)) == (
        '{"node_type":"THEN","left_node":' + sql_node(partial) + ',"right_node":' + B + "}"
    )
    assert one(db, "SELECT df._parse_strict(%s)::text", (partial,)) == json.dumps(
        {"query": partial, "node_type": "SQL"}
    )
    fails(
        db,
        "SELECT 'SELECT 1' !> 'SELECT 2'",
        "Invalid if-then-else: left side of !> must be a ?> expression",
    )
    fails(
        db,
        "SELECT df.if_else_op('{\"_partial_if\": false}', 'x')",
        "Invalid if-then-else: left side of !> must be a ?> expression",
    )


def test_if_rows(db: Conn) -> None:
    assert one(db, "SELECT df.if_rows('found', 'SELECT 1', 'SELECT 2')") == (
        '{"node_type":"IF","query":"{\\"condition_type\\":\\"result_has_rows\\",'
        '\\"result_name\\":\\"found\\"}","left_node":' + A + ',"right_node":' + B + "}"
    )
    fails(db, "SELECT df.if_rows('', 'a', 'b')", "df.if_rows: result name cannot be empty")
    fails(db, "SELECT df.if_rows('a b', 'a', 'b')", f"df.if_rows: result name 'a b' {BAD_NAME}")


def test_loop(db: Conn) -> None:
    assert one(db, "SELECT df.loop('SELECT 1')") == '{"node_type":"LOOP","left_node":' + A + "}"
    assert one(db, "SELECT df.loop('SELECT 1', NULL)") == one(db, "SELECT df.loop('SELECT 1')")
    assert one(db, "SELECT @> 'SELECT 1'") == one(db, "SELECT df.loop('SELECT 1')")
    assert one(db, "SELECT df.loop('SELECT 1', 'SELECT 2')") == (
        '{"node_type":"LOOP","left_node":' + A + ',"condition_node":' + B + "}"
    )
    fails(db, "SELECT df.loop(NULL)", "df.loop: body cannot be NULL")


def test_as(db: Conn) -> None:
    named = '{"node_type":"SQL","query":"SELECT 1","result_name":"x"}'
    assert one(db, "SELECT df.as('SELECT 1', 'x')") == named
    assert one(db, "SELECT 'SELECT 1' |=> 'x'") == named
    assert one(db, "SELECT df.as_op('SELECT 1', 'x')") == named
    # renaming replaces the name of the top node only
    assert one(db, "SELECT df.as(df.as('SELECT 1', 'x'), '_y2')") == (
        '{"node_type":"SQL","query":"SELECT 1","result_name":"_y2"}'
    )
    assert one(db, "SELECT df.as(df.sleep(1), 'z')") == (
        '{"node_type":"SLEEP","query":"1","result_name":"z"}'
    )
    assert one(db, "SELECT df.seq(df.as('SELECT 1', 'a'), 'SELECT 2') |=> 'b'") == (
        '{"node_type":"THEN","result_name":"b","left_node":'
        '{"node_type":"SQL","query":"SELECT 1","result_name":"a"},"right_node":' + B + "}"
    )
    fails(db, "SELECT df.as('SELECT 1', '')", "df.as: result name cannot be empty")
    for bad in ("1x", "a-b", "a b", "é"):
        fails(db, "SELECT df.as('SELECT 1', %s)", f"df.as: result name '{bad}' {BAD_NAME}", (bad,))


def test_strictness_and_signatures(db: Conn) -> None:
    rows = dict(
        db.execute(
            "SELECT p.proname || '(' || pg_get_function_arguments(p.oid) || ')', p.proisstrict"
            " FROM pg_proc p WHERE p.pronamespace = 'df'::regnamespace AND p.proname !~ '^_'"
        ).fetchall()
    )
    expected = {
        "sql(query text)": True,
        "seq(a text, b text)": True,
        "as(fut text, name text)": True,
        "sleep(seconds bigint)": True,
        "wait_for_schedule(cron_expr text)": True,
        "loop(body text, condition text DEFAULT NULL::text)": False,
        "break(value text DEFAULT NULL::text)": False,
        "if(condition text, then_branch text, else_branch text)": True,
        "if_rows(result_name text, then_branch text, else_branch text)": True,
        "join(a text, b text)": True,
        "join3(a text, b text, c text)": True,
        "race(a text, b text)": True,
        "http(url text, method text DEFAULT 'POST'::text, body text DEFAULT NULL::text, "
        "headers jsonb DEFAULT NULL::jsonb, timeout_seconds integer DEFAULT 30)": False,
        "http_multipart(url text, method text DEFAULT 'POST'::text, "
        "parts jsonb DEFAULT NULL::jsonb, "
        "headers jsonb DEFAULT NULL::jsonb, timeout_seconds integer DEFAULT 30)": False,
        "wait_for_signal(name text, timeout_seconds integer DEFAULT NULL::integer)": False,
        "step(kind text, args jsonb DEFAULT '{}'::jsonb)": True,
        "retry(fut text, max_attempts integer, backoff_seconds double precision DEFAULT 1, "
        "max_backoff_seconds double precision DEFAULT 60)": True,
        "timeout(fut text, seconds double precision)": True,
        "as_op(fut text, name text)": True,
        "if_then_op(condition text, then_branch text)": True,
        "if_else_op(partial_if text, else_branch text)": True,
        "loop_prefix_op(body text)": True,
    }
    for signature, strict in expected.items():
        assert rows.get(signature) is strict, signature
    assert one(db, "SELECT df.seq(NULL, 'a')") is None
    assert one(db, "SELECT df.sql(NULL)") is None
    assert one(db, "SELECT NULL::text ~> 'a'") is None


def test_operators(db: Conn) -> None:
    rows = db.execute(
        "SELECT o.oprname, o.oprleft::regtype::text, o.oprright::regtype::text, 'df.' || p.proname"
        " FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode"
        " WHERE o.oprnamespace = 'df'::regnamespace"
    ).fetchall()
    assert sorted(rows) == sorted(
        [
            ("~>", "text", "text", "df.seq"),
            ("|=>", "text", "text", "df.as_op"),
            ("&", "text", "text", "df.join"),
            ("|", "text", "text", "df.race"),
            ("?>", "text", "text", "df.if_then_op"),
            ("!>", "text", "text", "df.if_else_op"),
            ("@>", "-", "text", "df.loop_prefix_op"),
        ]
    )


# -- operator precedence (spec §1.5) ------------------------------------------------


def test_chain_is_left_associative(db: Conn) -> None:
    assert one(db, "SELECT 'SELECT 1' ~> 'SELECT 2' ~> 'SELECT 3'") == one(
        db, "SELECT df.seq(df.seq('SELECT 1', 'SELECT 2'), 'SELECT 3')"
    )


def test_name_after_sequence_names_the_then(db: Conn) -> None:
    out = json.loads(one(db, "SELECT 'SELECT 1' ~> 'SELECT 2' |=> 'x'"))
    assert out["node_type"] == "THEN"
    assert out["result_name"] == "x"
    assert "result_name" not in out["right_node"]


def test_prefix_loop_binds_only_the_next_operand(db: Conn) -> None:
    assert one(db, "SELECT @> 'a' ~> 'b'") == one(db, "SELECT df.seq(df.loop('a'), 'b')")
    assert one(db, "SELECT @> ('a' ~> 'b')") == one(db, "SELECT df.loop(df.seq('a', 'b'))")


def test_if_then_else_precedence(db: Conn) -> None:
    assert one(db, "SELECT 'SELECT true' ?> 'A' !> 'B'") == one(db, "SELECT df.if('SELECT true', 'A', 'B')")
    fails(
        db,
        "SELECT 'c' ?> 't' ~> 'x' !> 'e'",
        "Invalid if-then-else: left side of !> must be a ?> expression",
    )
    assert one(db, "SELECT ('SELECT true' ?> ('A' ~> 'X')) !> 'B'") == one(
        db, "SELECT df.if('SELECT true', df.seq('A', 'X'), 'B')"
    )


def test_operators_bind_tighter_than_comparison(db: Conn) -> None:
    assert one(
        db,
        "SELECT 'fast' | (df.sleep(10) ~> 'slow') = df.race('fast', df.seq(df.sleep(10), 'slow'))",
    )
    assert one(db, "SELECT 'a' ~> 'b' = df.seq('a', 'b') AND 'a' & 'b' = df.join('a', 'b')")


# -- auto-wrapping and canonical form -------------------------------------------------


def test_determinism(db: Conn) -> None:
    expr = (
        "df.if('SELECT true', ('SELECT 1' |=> 'a') & df.sleep(3), "
        "@> (df.wait_for_signal('s', 5) ~> df.break('done')))"
    )
    first = one(db, f"SELECT {expr}")
    assert one(db, f"SELECT {expr}") == first
    # a stored Durofut composes to the same bytes
    assert one(db, "SELECT df.seq(%s, 'x')", (first,)) == one(db, f"SELECT df.seq({expr}, 'x')")


def test_raw_json_is_canonicalised(db: Conn) -> None:
    raw = """{ "zzz": [1, 2], "result_name" : "r", "query": "SELECT 1",  "node_type": "SQL",
               "left_node": null, "extra_nodes": [] }"""
    assert one(db, "SELECT df.seq(%s, 'SELECT 2')", (raw,)) == (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1","result_name":"r"},'
        '"right_node":' + B + "}"
    )
    nested = json.dumps(
        {
            "right_node": {"query": "b\u00e9\n", "node_type": "SQL"},
            "node_type": "JOIN",
            "extra_nodes": [{"node_type": "SLEEP", "query": "1", "x": 1}],
            "left_node": {"node_type": "SQL", "query": "a\\/"},
        },
        indent=2,
    )
    assert one(db, "SELECT df.loop(%s)", (nested,)) == (
        '{"node_type":"LOOP","left_node":{"node_type":"JOIN","left_node":'
        '{"node_type":"SQL","query":"a\\\\/"},"right_node":{"node_type":"SQL","query":"b\u00e9\\n"},'
        '"extra_nodes":[{"node_type":"SLEEP","query":"1"}]}}'
    )


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "{not json",
        "[1, 2]",
        '"a string"',
        "42",
        '{"query": "SELECT 1"}',
        '{"node_type": "FOO", "query": "SELECT 1"}',
        '{"node_type": null, "query": "x"}',
        '{"node_type": 7}',
    ],
)
def test_anything_else_is_wrapped_as_sql(db: Conn, text: str) -> None:
    assert one(db, "SELECT df.seq(%s, 'SELECT 2')", (text,)) == (
        '{"node_type":"THEN","left_node":' + sql_node(text) + ',"right_node":' + B + "}"
    )
    assert one(db, "SELECT df.as(%s, 'n')", (text,)) == (
        '{"node_type":"SQL","query":' + json.dumps(text) + ',"result_name":"n"}'
    )


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (
            '{"node_type":"THEN","left_node":"SELECT 1"}',
            "Durofut children must be JSON objects; left_node is a JSON string (in a THEN node)",
        ),
        (
            '{"node_type":"JOIN","extra_nodes":[1]}',
            "Durofut children must be JSON objects; extra_nodes[0] is a JSON number (in a JOIN node)",
        ),
        (
            '{"node_type":"JOIN","extra_nodes":{"node_type":"SQL"}}',
            "extra_nodes must be a JSON array (in a JOIN node)",
        ),
        ('{"node_type":"SQL","query":5}', "query must be a string (in a SQL node)"),
        (
            '{"node_type":"SQL","query":"a","result_name":[]}',
            "result_name must be a string (in a SQL node)",
        ),
        (
            '{"node_type":"LOOP","left_node":{"query":"x"}}',
            "left_node is missing node_type (in a LOOP node)",
        ),
        (
            '{"node_type":"RACE","right_node":{"node_type":"FOO"}}',
            "right_node has unknown node_type 'FOO' (in a RACE node)",
        ),
        (
            '{"node_type":"IF","condition_node":{"node_type":1}}',
            "condition_node has unknown node_type 1 (in an IF node)",
        ),
        (
            '{"node_type":"THEN","left_node":{"node_type":"THEN","right_node":[]}}',
            "Durofut children must be JSON objects; right_node is a JSON array (in a THEN node)",
        ),
    ],
)
def test_lenient_deserialize_errors(db: Conn, raw: str, detail: str) -> None:
    fails(
        db,
        "SELECT df.seq(%s, 'x')",
        f"Invalid Durofut JSON: failed to deserialize workflow step: {detail}",
        (raw,),
    )


def test_lenient_keeps_incomplete_nodes(db: Conn) -> None:
    # serde accepts a THEN without children; only df.start's strict parse refuses it
    assert one(db, """SELECT df.loop('{"node_type": "THEN"}')""") == (
        '{"node_type":"LOOP","left_node":{"node_type":"THEN"}}'
    )


# -- the non-future helper guard --------------------------------------------------------

FAKE_HELPER = """
CREATE FUNCTION pg_temp.fake_setvar() RETURNS text LANGUAGE sql AS $$
    SELECT set_config('df.non_future_helper',
                      'df.setvar()' || chr(10) || statement_timestamp()::text, true);
    SELECT 'OK'::text
$$
"""
GUARD = "df.setvar() cannot be used as a workflow step. Call df.setvar() before df.start()."


@pytest.mark.parametrize(
    "expr",
    [
        "df.seq(pg_temp.fake_setvar(), 'SELECT 2')",
        "df.seq('SELECT 1', pg_temp.fake_setvar())",
        "pg_temp.fake_setvar() ~> 'SELECT 2'",
        "df.as(pg_temp.fake_setvar(), 'x')",
        "df.loop(pg_temp.fake_setvar())",
        "df.join3('a', 'b', pg_temp.fake_setvar())",
        "pg_temp.fake_setvar() ?> 'a'",
        "df.retry(pg_temp.fake_setvar(), 2)",
        "df._parse_strict(pg_temp.fake_setvar())",
    ],
)
def test_non_future_helper_guard(db: Conn, expr: str) -> None:
    db.execute(FAKE_HELPER)
    fails(db, f"SELECT {expr}", GUARD)


def test_non_future_helper_guard_is_per_statement(db: Conn) -> None:
    db.execute(FAKE_HELPER)
    with db.transaction():
        assert one(db, "SELECT pg_temp.fake_setvar()") == "OK"
        assert one(db, "SELECT current_setting('df.non_future_helper')").startswith("df.setvar()\n")
        # a later statement of the same transaction is not affected
        assert one(db, "SELECT df.seq('SELECT 1', 'SELECT 2')").startswith('{"node_type":"THEN"')
    # Durofut JSON in the same statement is fine: only plain text is suspect
    assert one(db, "SELECT df.seq(df.sql(pg_temp.fake_setvar()), df.sleep(1))").startswith(
        '{"node_type":"THEN"'
    )


# -- strict parse (df.start) ------------------------------------------------------------


def test_parse_strict_accepts_every_constructor(db: Conn) -> None:
    exprs = [
        "df.sql('SELECT 1')",
        "'a' ~> 'b'",
        "df.as('a', 'x')",
        "df.sleep(0)",
        "df.wait_for_schedule('*/5 * * * *')",
        "df.loop('a')",
        "df.loop('a', 'b')",
        "df.break()",
        "df.break('v')",
        "df.if('c', 't', 'e')",
        "df.if_rows('x', 't', 'e')",
        "'a' & 'b'",
        "df.join3('a', 'b', 'c')",
        "'a' | 'b'",
        "df.http('http://h', 'GET', 'b', '{\"A\": \"1\"}', 3)",
        'df.http_multipart(\'http://h\', parts => \'[{"name":"a","data_b64":""}]\')',
        "df.wait_for_signal('s')",
        "df.wait_for_signal('s', 3)",
        "df.step('k', '{\"a\": [1]}')",
        "df.retry('a', 2, 0.5, 3)",
        "df.timeout('a', 1.5)",
    ]
    for expr in exprs:
        text = one(db, f"SELECT {expr}")
        parsed = one(db, "SELECT df._parse_strict(%s)", (text,))
        assert parsed == json.loads(text), expr


def test_parse_strict_wraps_plain_text(db: Conn) -> None:
    assert one(db, "SELECT df._parse_strict('SELECT 1')") == {
        "node_type": "SQL",
        "query": "SELECT 1",
    }
    assert one(db, 'SELECT df._parse_strict(\'{"query": "x"}\')') == {
        "node_type": "SQL",
        "query": '{"query": "x"}',
    }
    assert one(db, "SELECT df._parse_strict(NULL)") is None


def test_parse_strict_canonicalises(db: Conn) -> None:
    raw = '{"left_node": {"query": "a", "node_type": "SQL", "junk": 1}, "node_type": "LOOP"}'
    assert one(db, "SELECT df._parse_strict(%s)", (raw,)) == {
        "node_type": "LOOP",
        "left_node": {"node_type": "SQL", "query": "a"},
    }


@pytest.mark.parametrize("node_type", ["FOO", "sql", ""])
def test_parse_strict_unknown_type(db: Conn, node_type: str) -> None:
    fails(
        db,
        "SELECT df._parse_strict(%s)",
        f"Invalid durable function: Unknown node_type '{node_type}'. Valid types: {VALID_TYPES}",
        (json.dumps({"node_type": node_type, "query": "x"}),),
    )


S = {"node_type": "SQL", "query": "SELECT 1"}


def _payload(node_type: str, config: Any) -> dict[str, Any]:
    return {"node_type": node_type, "query": json.dumps(config)}


@pytest.mark.parametrize(
    ("tree", "node_type", "detail"),
    [
        ({"node_type": "THEN", "left_node": S}, "THEN", "missing right_node"),
        ({"node_type": "THEN", "right_node": S}, "THEN", "missing left_node"),
        (
            {"node_type": "THEN", "left_node": S, "right_node": "x"},
            "THEN",
            "right_node must be a JSON object",
        ),
        (
            {"node_type": "THEN", "left_node": S, "right_node": S, "condition_node": S},
            "THEN",
            "THEN node cannot have condition_node",
        ),
        (
            {"node_type": "THEN", "left_node": S, "right_node": S, "query": "x"},
            "THEN",
            "THEN node cannot have a query",
        ),
        (
            {"node_type": "RACE", "left_node": S, "right_node": S, "extra_nodes": [S]},
            "RACE",
            "RACE node cannot have extra_nodes",
        ),
        (
            {"node_type": "JOIN", "left_node": S, "right_node": S, "extra_nodes": [S, 3]},
            "JOIN",
            "extra_nodes[1] must be a JSON object",
        ),
        (
            {
                "node_type": "JOIN",
                "left_node": S,
                "right_node": S,
                "extra_nodes": [{"node_type": "X"}],
            },
            "JOIN",
            "extra_nodes[0] has unknown node_type 'X'",
        ),
        ({"node_type": "IF", "left_node": S, "right_node": S}, "IF", "missing condition_node"),
        (
            {"node_type": "IF", "left_node": S, "right_node": S, "condition_node": "SELECT true"},
            "IF",
            "condition_node must be a JSON object",
        ),
        (
            {
                "node_type": "IF",
                "left_node": S,
                "right_node": S,
                "condition_node": S,
                "query": '{"condition_type":"result_has_rows","result_name":"x"}',
            },
            "IF",
            "IF node cannot have both condition_node and query",
        ),
        (
            {
                "node_type": "IF",
                "left_node": S,
                "right_node": S,
                "query": '{"condition_type":"other"}',
            },
            "IF",
            'query must have "condition_type":"result_has_rows"',
        ),
        ({"node_type": "LOOP"}, "LOOP", "missing left_node"),
        (
            {"node_type": "LOOP", "left_node": S, "right_node": S},
            "LOOP",
            "LOOP node cannot have right_node",
        ),
        (
            {"node_type": "LOOP", "left_node": S, "query": "x"},
            "LOOP",
            "LOOP node cannot have a query",
        ),
        ({"node_type": "SQL"}, "SQL", "missing query"),
        (
            {"node_type": "SQL", "query": "a", "left_node": S},
            "SQL",
            "SQL node cannot have left_node",
        ),
        (
            {"node_type": "SLEEP", "query": "x"},
            "SLEEP",
            'query "x" is not a whole number of seconds',
        ),
        (
            {"node_type": "SLEEP", "query": "-1"},
            "SLEEP",
            'query "-1" is not a whole number of seconds',
        ),
        ({"node_type": "SIGNAL", "query": "go"}, "SIGNAL", "query must be a JSON object"),
        (
            _payload("SIGNAL", {"signal_name": "", "timeout_seconds": None}),
            "SIGNAL",
            'query must have a non-empty string "signal_name"',
        ),
        (
            _payload("WAIT_SCHEDULE", {"cron_expr": "* * *"}),
            "WAIT_SCHEDULE",
            "Invalid cron expression '* * *': expected 5 fields, found 3",
        ),
        (
            _payload("HTTP", {"url": "http://h", "method": "get"}),
            "HTTP",
            '"method" must be GET, POST, PUT, DELETE, or PATCH',
        ),
        (
            _payload("HTTP", {"url": "http://h", "method": "GET", "headers": {"a": 1}}),
            "HTTP",
            "headers must be a JSON object of string values",
        ),
        (
            _payload("HTTP_MULTIPART", {"url": "http://h", "method": "POST", "parts": []}),
            "HTTP_MULTIPART",
            "parts must contain at least one part",
        ),
        (_payload("BREAK", {}), "BREAK", 'query must have "break_value" (a string or null)'),
        (_payload("STEP", {"kind": ""}), "STEP", 'query must have a non-empty string "kind"'),
        (
            {"node_type": "RETRY", "left_node": S, "query": '{"max_attempts":0}'},
            "RETRY",
            '"max_attempts" must be a positive integer',
        ),
        ({"node_type": "RETRY", "query": '{"max_attempts":1}'}, "RETRY", "missing left_node"),
        ({"node_type": "TIMEOUT", "left_node": S}, "TIMEOUT", "missing query"),
        (
            {"node_type": "TIMEOUT", "left_node": S, "query": '{"seconds":0}'},
            "TIMEOUT",
            '"seconds" must be a positive number',
        ),
        (
            {"node_type": "SQL", "query": "a", "result_name": "1x"},
            "SQL",
            f"result_name '1x' {BAD_NAME}",
        ),
        # deep in the tree, the offending node is named
        (
            {
                "node_type": "THEN",
                "left_node": S,
                "right_node": {"node_type": "LOOP", "left_node": {"node_type": "SQL"}},
            },
            "SQL",
            "missing query",
        ),
    ],
)
def test_parse_strict_malformed(db: Conn, tree: dict[str, Any], node_type: str, detail: str) -> None:
    fails(
        db,
        "SELECT df._parse_strict(%s)",
        f"Invalid durable function: Malformed Durofut JSON with node_type '{node_type}': {detail}",
        (json.dumps(tree),),
    )


# -- flattening ------------------------------------------------------------------------


def test_flatten_rows(db: Conn) -> None:
    fut = one(
        db,
        "SELECT df.if('SELECT true' |=> 'c', df.join3('a', 'b', 'c'), "
        "df.loop(df.retry('x', 3), 'y')) |=> 'top'",
    )
    rows = flatten(db, fut)
    assert [r[0] for r in rows] == list(range(len(rows)))
    ids = [r[1] for r in rows]
    assert all(re.fullmatch("[0-9a-f]{8}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    by_ord = {r[0]: r for r in rows}
    ident = {r[0]: r[1] for r in rows}
    # pre-order: IF, then (JOIN a b c), else (LOOP RETRY x, y), condition
    assert [(r[2], r[3] if r[2] not in ("IF", "JOIN", "LOOP") else None) for r in rows] == [
        ("IF", None),
        ("JOIN", None),
        ("SQL", "a"),
        ("SQL", "b"),
        ("SQL", "c"),
        ("LOOP", None),
        ("RETRY", '{"max_attempts":3,"backoff_seconds":1,"max_backoff_seconds":60}'),
        ("SQL", "x"),
        ("SQL", "y"),
        ("SQL", "SELECT true"),
    ]
    assert by_ord[0][3:] == ('{"condition_node":"' + ident[9] + '"}', "top", ident[1], ident[5])
    assert by_ord[1][3:] == ('{"extra_nodes":["' + ident[4] + '"]}', None, ident[2], ident[3])
    assert by_ord[5][3:] == ('{"condition_node":"' + ident[8] + '"}', None, ident[6], None)
    assert by_ord[6][5:] == (ident[7], None)
    assert by_ord[9][3:] == ("SELECT true", "c", None, None)
    for leaf_row in (by_ord[2], by_ord[3], by_ord[4], by_ord[7], by_ord[8]):
        assert leaf_row[5:] == (None, None)


def test_flatten_query_column_per_type(db: Conn) -> None:
    cases = {
        "'a' ~> 'b'": ("THEN", None),
        "'a' | 'b'": ("RACE", None),
        "'a' & 'b'": ("JOIN", None),
        "df.loop('a')": ("LOOP", None),
        "df.if_rows('r', 'a', 'b')": (
            "IF",
            '{"condition_type":"result_has_rows","result_name":"r"}',
        ),
        "df.sleep(5)": ("SLEEP", "5"),
        "df.break('v')": ("BREAK", '{"break_value":"v"}'),
        "df.break()": ("BREAK", '{"break_value":null}'),
        "df.wait_for_schedule('0 * * * *')": ("WAIT_SCHEDULE", '{"cron_expr":"0 * * * *"}'),
        "df.wait_for_signal('s', 4)": ("SIGNAL", '{"signal_name":"s","timeout_seconds":4}'),
        "df.http('http://h')": (
            "HTTP",
            '{"url":"http://h","method":"POST","body":null,"headers":null,"timeout_seconds":30}',
        ),
        "df.step('k')": ("STEP", '{"kind":"k","args":{}}'),
        "df.timeout('a', 2)": ("TIMEOUT", '{"seconds":2}'),
        "df.sql('SELECT 1')": ("SQL", "SELECT 1"),
    }
    for expr, (node_type, query) in cases.items():
        root = flatten(db, one(db, f"SELECT {expr}"))[0]
        assert root[2:4] == (node_type, query), expr


def test_flatten_rows_fit_df_nodes(db: Conn) -> None:
    fut = one(
        db,
        "SELECT df.if('c', df.join3('a', df.sleep(1), 'c') ~> df.break(), "
        "df.retry(df.timeout(df.step('k'), 5), 2) | df.if_rows('r', 'x', 'y'))",
    )
    with db.transaction():
        role = one(db, "SELECT quote_ident(current_user)")
        instance = "0000abcd"
        rows = flatten(db, fut)
        db.execute(
            "INSERT INTO df.instances (id, root_node, submitted_by) VALUES (%s, %s, %s::regrole)",
            (instance, rows[0][1], role),
        )
        for row in rows:
            db.execute(
                "INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node,"
                " right_node, submitted_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::regrole)",
                (row[1], instance, row[2], row[3], row[4], row[5], row[6], role),
            )
        db.execute("SET CONSTRAINTS ALL IMMEDIATE")
        assert one(db, "SELECT count(*) FROM df.nodes WHERE instance_id = %s", (instance,)) == len(rows)
        db.execute("ALTER TABLE df.nodes VALIDATE CONSTRAINT nodes_structure")
        assert len(rows) == 15


def test_flatten_ids_are_random(db: Conn) -> None:
    fut = one(db, "SELECT 'a' ~> 'b'")
    assert [r[1] for r in flatten(db, fut)] != [r[1] for r in flatten(db, fut)]
    assert re.fullmatch("[0-9a-f]{8}", one(db, "SELECT df._random_id()"))


def _nested_loops(db: Conn, loops: int) -> str:
    return str(
        one(
            db,
            'SELECT string_agg(\'{"node_type":"LOOP","left_node":\', \'\')'
            " || %s || repeat('}', %s) FROM generate_series(1, %s)",
            (sql_node("SELECT 1"), loops, loops),
        )
    )


def test_depth_limit(db: Conn) -> None:
    # composition does not limit depth: 256 nested loops around a SQL leaf is 257 deep
    deep = one(
        db,
        "SELECT df.seq('x', g) FROM (SELECT %s::text AS g) s",
        (_nested_loops(db, 256),),
    )
    assert deep.count('"node_type":"LOOP"') == 256
    assert one(db, "SELECT df._parse_strict(%s) IS NOT NULL", (_nested_loops(db, 256),))
    fails(
        db,
        "SELECT count(*) FROM df._flatten(df._parse_strict(%s))",
        "Invalid durable function graph: graph exceeds the maximum nesting depth of 256",
        (_nested_loops(db, 256),),
    )
    assert one(db, "SELECT count(*) FROM df._flatten(df._parse_strict(%s))", (_nested_loops(db, 255),)) == 256


def test_depth_257_composes_with_constructors(db: Conn) -> None:
    db.execute(
        """
        DO $$
        DECLARE g text := 'SELECT 0';
        BEGIN
            FOR i IN 1..256 LOOP g := df.loop(g); END LOOP;
            PERFORM set_config('test.graph', g, false);
        END $$
        """
    )
    built = one(db, "SELECT current_setting('test.graph')")
    assert built == _nested_loops(db, 256).replace("SELECT 1", "SELECT 0")


def test_long_chain_composes(db: Conn) -> None:
    db.execute(
        """
        DO $$
        DECLARE g text := 'SELECT 0';
        BEGIN
            FOR i IN 1..300 LOOP g := g ~> ('SELECT ' || i); END LOOP;
            PERFORM set_config('test.graph', g, false);
        END $$
        """
    )
    chain = one(db, "SELECT current_setting('test.graph')")
    assert chain.startswith('{"node_type":"THEN","left_node":' * 300 + sql_node("SELECT 0"))
    assert chain.count('"node_type":"SQL"') == 301
    # composing it again and parsing it strictly work; flattening is over the depth limit
    assert one(db, "SELECT length(%s ~> 'x')", (chain,)) > len(chain)
    assert one(db, "SELECT df._parse_strict(%s) IS NOT NULL", (chain,))
    fails(
        db,
        "SELECT count(*) FROM df._flatten(df._parse_strict(%s))",
        "Invalid durable function graph: graph exceeds the maximum nesting depth of 256",
        (chain,),
    )


def _wide_join(extras: int) -> str:
    nodes = ",".join(sql_node(f"SELECT {i}") for i in range(extras))
    return '{"node_type":"JOIN","left_node":' + A + ',"right_node":' + B + ',"extra_nodes":[' + nodes + "]}"


def test_node_limit(db: Conn) -> None:
    fut = _wide_join(9997)  # JOIN + 2 + 9997 = 10,000 nodes
    row = db.execute(
        "SELECT count(*), count(DISTINCT id), max(ord), min(ord) FROM df._flatten(df._parse_strict(%s))",
        (fut,),
    ).fetchone()
    assert row == (10000, 10000, 9999, 0)
    fails(
        db,
        "SELECT count(*) FROM df._flatten(df._parse_strict(%s))",
        "Invalid durable function graph: graph has 10001 nodes, exceeding the maximum of 10000",
        (_wide_join(9998),),
    )


def test_join_extra_ids_reference_rows(db: Conn) -> None:
    rows = flatten(db, _wide_join(3))
    extra_ids = json.loads(rows[0][3])["extra_nodes"]
    assert extra_ids == [r[1] for r in rows[3:]]
    assert [r[3] for r in rows[1:]] == ["SELECT 1", "SELECT 2", "SELECT 0", "SELECT 1", "SELECT 2"]


def test_balanced_tree_of_10000_nodes_composes_and_flattens(db: Conn) -> None:
    # 5000 leaves joined pairwise: 9999 nodes, depth 14, built with the operator
    db.execute(
        """
        DO $$
        DECLARE level text[] := ARRAY(SELECT 'SELECT ' || g FROM generate_series(1, 5000) g);
                nxt text[];
        BEGIN
            WHILE cardinality(level) > 1 LOOP
                nxt := '{}';
                FOR i IN 1..cardinality(level) BY 2 LOOP
                    IF i < cardinality(level) THEN
                        nxt := nxt || (level[i] OPERATOR(df.&) level[i + 1]);
                    ELSE
                        nxt := nxt || level[i];
                    END IF;
                END LOOP;
                level := nxt;
            END LOOP;
            PERFORM set_config('test.graph', level[1], false);
        END $$
        """
    )
    row = db.execute(
        "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE node_type = 'JOIN')"
        " FROM df._flatten(df._parse_strict(current_setting('test.graph')))"
    ).fetchone()
    assert row == (9999, 9999, 4999)
