"""The df surface, function by function, as pg_durable 0.2.6 declares it (spec §1.4-§1.10)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

# name(arguments) -> result, with pg_get_function_arguments/_result's spelling.
SPEC_FUNCTIONS = {
    "df.sql": ["query text -> text"],
    "df.seq": ["a text, b text -> text"],
    "df.as": ["fut text, name text -> text"],
    "df.sleep": ["seconds bigint -> text"],
    "df.wait_for_schedule": ["cron_expr text -> text"],
    "df.loop": ["body text, condition text DEFAULT NULL::text -> text"],
    "df.break": ["value text DEFAULT NULL::text -> text"],
    "df.if": ["condition text, then_branch text, else_branch text -> text"],
    "df.if_rows": ["result_name text, then_branch text, else_branch text -> text"],
    "df.join": ["a text, b text -> text"],
    "df.join3": ["a text, b text, c text -> text"],
    "df.race": ["a text, b text -> text"],
    "df.http": [
        "url text, method text DEFAULT 'POST'::text, body text DEFAULT NULL::text, "
        "headers jsonb DEFAULT NULL::jsonb, timeout_seconds integer DEFAULT 30 -> text"
    ],
    "df.http_multipart": [
        "url text, method text DEFAULT 'POST'::text, parts jsonb DEFAULT NULL::jsonb, "
        "headers jsonb DEFAULT NULL::jsonb, timeout_seconds integer DEFAULT 30 -> text"
    ],
    "df.wait_for_signal": ["name text, timeout_seconds integer DEFAULT NULL::integer -> text"],
    "df.as_op": ["fut text, name text -> text"],
    "df.if_then_op": ["condition text, then_branch text -> text"],
    "df.if_else_op": ["partial_if text, else_branch text -> text"],
    "df.loop_prefix_op": ["body text -> text"],
    "df.start": [
        "fut text, label text DEFAULT NULL::text, database text DEFAULT NULL::text, "
        "transaction_mode text DEFAULT 'caller'::text -> text"
    ],
    "df.cancel": ["instance_id text, reason text DEFAULT 'Cancelled by user'::text -> text"],
    "df.status": ["instance_id text -> text"],
    "df.result": ["instance_id text -> text"],
    "df.await_instance": ["instance_id text, timeout_seconds integer DEFAULT 30 -> text"],
    "df.wait_for_completion": ["instance_id text, timeout_seconds integer DEFAULT 30 -> text"],
    "df.signal": ["instance_id text, signal_name text, signal_data text DEFAULT '{}'::text -> text"],
    "df.run": ["instance_id text DEFAULT NULL::text -> text"],
    "df.setvar": ["name text, value text -> text"],
    "df.getvar": ["name text -> text"],
    "df.unsetvar": ["name text -> text"],
    "df.clearvars": [" -> text"],
    "df.list_instances": [
        "status_filter text DEFAULT NULL::text, limit_count integer DEFAULT 100 -> TABLE(instance_id text, "
        "label text, function_name text, status text, execution_count bigint, output text)",
        "status_filter text, limit_count integer, label_filter text, after_cursor text DEFAULT NULL::text"
        " -> TABLE(instance_id text, label text, function_name text, status text, execution_count bigint, "
        "output text, created_at timestamp with time zone, completed_at timestamp with time zone, "
        "next_cursor text)",
    ],
    "df.instance_info": [
        "instance_id text -> TABLE(instance_id text, label text, function_name text, function_version text,"
        " current_execution_id bigint, status text, output text)"
    ],
    "df.instance_executions": [
        "instance_id text, limit_count integer DEFAULT 5 -> TABLE(execution_id bigint, status text, "
        "event_count bigint, duration_ms bigint, output text)"
    ],
    "df.metrics": [
        " -> TABLE(total_instances bigint, running_instances bigint, completed_instances bigint, "
        "failed_instances bigint, total_executions bigint, total_events bigint)"
    ],
    "df.instance_nodes": [
        "instance_id_param text -> TABLE(node_id text, node_type text, query text, result_name text, "
        "left_node text, right_node text, status text, result text, status_details text, "
        "inferred_status text, inferred_status_from_ancestor_id text, updated_at timestamp with time zone)",
        "instance_id_param text, _last_n_executions integer -> TABLE(execution_id bigint, node_id text, "
        "node_type text, query text, result_name text, left_node text, right_node text, status text, "
        "result text, updated_at timestamp with time zone)",
    ],
    "df.explain": ["input text -> text"],
    "df.grant_usage": [
        "p_role text, include_http boolean DEFAULT false, with_grant boolean DEFAULT false -> void"
    ],
    "df.revoke_usage": ["p_role text -> void"],
    "df.version": [" -> text"],
    "df.target_database": [" -> text"],
    "df.duroxide_schema": [" -> text"],
}

# Functions whose arguments are all non-nullable are STRICT (pgrx).
SPEC_STRICT = {
    "df.sql",
    "df.seq",
    "df.as",
    "df.sleep",
    "df.wait_for_schedule",
    "df.if",
    "df.if_rows",
    "df.join",
    "df.join3",
    "df.race",
    "df.as_op",
    "df.if_then_op",
    "df.if_else_op",
    "df.loop_prefix_op",
}

SPEC_COLUMNS = {
    "df.instances": [
        ("id", "character varying(8)"),
        ("label", "text"),
        ("root_node", "character varying(8)"),
        ("status", "text"),
        ("submitted_by", "regrole"),
        ("database", "text"),
        ("created_at", "timestamp with time zone"),
        ("updated_at", "timestamp with time zone"),
        ("completed_at", "timestamp with time zone"),
    ],
    "df.nodes": [
        ("id", "character varying(8)"),
        ("instance_id", "character varying(8)"),
        ("node_type", "text"),
        ("query", "text"),
        ("result_name", "text"),
        ("left_node", "character varying(8)"),
        ("right_node", "character varying(8)"),
        ("status", "text"),
        ("result", "jsonb"),
        ("error", "text"),
        ("submitted_by", "regrole"),
        ("database", "text"),
        ("created_at", "timestamp with time zone"),
        ("updated_at", "timestamp with time zone"),
        ("status_details", "jsonb"),
    ],
    "df.vars": [("name", "text"), ("value", "text"), ("owner", "regrole")],
    "df._worker_epoch": [
        ("epoch_id", "uuid"),
        ("started_at", "timestamp with time zone"),
        ("last_seen_at", "timestamp with time zone"),
    ],
    "_duroxide._worker_ready": [
        ("sentinel", "boolean"),
        ("schema_version", "integer"),
        ("initialized_at", "timestamp with time zone"),
    ],
}


def signatures(conn: psycopg.Connection[Any], qualified: str) -> list[str]:
    schema, name = qualified.split(".")
    rows = conn.execute(
        "SELECT pg_get_function_arguments(p.oid) || ' -> ' || pg_get_function_result(p.oid)"
        " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = %s AND p.proname = %s ORDER BY p.pronargs",
        (schema, name),
    ).fetchall()
    return [str(r[0]) for r in rows]


@pytest.mark.parametrize("function", sorted(SPEC_FUNCTIONS))
def test_function_signature(conn: psycopg.Connection[Any], function: str) -> None:
    assert signatures(conn, function) == SPEC_FUNCTIONS[function]


def test_strictness(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT 'df.' || proname FROM pg_proc WHERE pronamespace = 'df'::regnamespace AND proisstrict"
    ).fetchall()
    strict = {str(r[0]) for r in rows}
    assert strict >= SPEC_STRICT
    assert not (
        strict
        & {
            "df.loop",
            "df.break",
            "df.http",
            "df.http_multipart",
            "df.wait_for_signal",
            "df.start",
            "df.cancel",
        }
    )


@pytest.mark.parametrize("table", sorted(SPEC_COLUMNS))
def test_table_columns(conn: psycopg.Connection[Any], table: str) -> None:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (table,),
    ).fetchall()
    assert [(str(n), str(t)) for n, t in rows] == SPEC_COLUMNS[table]


@pytest.mark.parametrize(
    ("operator", "left", "function"),
    [
        ("~>", "text", "df.seq"),
        ("|=>", "text", "df.as_op"),
        ("&", "text", "df.join"),
        ("|", "text", "df.race"),
        ("?>", "text", "df.if_then_op"),
        ("!>", "text", "df.if_else_op"),
        ("@>", None, "df.loop_prefix_op"),
    ],
)
def test_operators(conn: psycopg.Connection[Any], operator: str, left: str | None, function: str) -> None:
    rows = conn.execute(
        "SELECT n.nspname, o.oprcode::regproc::text FROM pg_operator o"
        " JOIN pg_namespace n ON n.oid = o.oprnamespace"
        " WHERE o.oprname = %s AND o.oprright = 'text'::regtype AND o.oprleft = coalesce(%s::regtype, 0)"
        " ORDER BY 1",
        (operator, left),
    ).fetchall()
    # In df, and (installed by a superuser) in pg_catalog so the default search_path finds them.
    assert [r[0] for r in rows] == ["df", "pg_catalog"]
    assert {r[1].replace('"', "") for r in rows} == {function}


def test_default_search_path_finds_the_operators(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT 'SELECT 1' ~> 'SELECT 2'").fetchone()
    assert row == (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"}}',
    )
