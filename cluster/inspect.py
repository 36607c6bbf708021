"""Read (and cancel, signal) what the cluster is doing, as the connecting role.

The queries behind ``durable-cluster status / list / show / explain / top /
cancel / signal`` and the web console. Every function takes a connection
made by :func:`connect` and runs plain ``df`` SQL on it, so row-level
security decides what a role sees: an application role sees its own
instances, an administrator (the runtime DSN) sees everything. The runtime
tables (``durable.workers``, ``durable.partitions``, ``durable.runs``) are
readable by their owner only; for other roles those parts are ``None`` with
a note saying why.

Every function returns plain JSON-able values (timestamps as ISO 8601
strings): the CLI's ``--json`` documents and the console's API are these
dictionaries (shapes in ``docs/cli.md``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from . import db, render
from .errors import DatabaseUnavailable, DurableClusterError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .config import Settings

__all__ = [
    "STATUSES",
    "InstanceNotFound",
    "cancel",
    "connect",
    "doctor",
    "explain_text",
    "graph",
    "jsonable",
    "list_instances",
    "show",
    "signal",
    "status",
    "top",
]

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
INSTANCE_ID = re.compile(r"^[0-9a-fA-F]{8}$")
DSL_MARKERS = ("~>", "|=>", "?>", "!>", "@>", "df.")
SQL_START = re.compile(
    r"^(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|CALL|DO|TRUNCATE|GRANT|REVOKE|EXPLAIN)\s", re.I
)
APPLICATION_NAME = "durable-cluster cli"

Conn = psycopg.Connection[dict[str, Any]]


class InstanceNotFound(DurableClusterError):
    """The instance does not exist or the role may not see it."""


def connect(dsn: str, *, application_name: str = APPLICATION_NAME) -> Conn:
    """An autocommit connection with dict rows; unreachable databases raise DatabaseUnavailable."""
    try:
        return psycopg.connect(
            db.conninfo(dsn, application_name=application_name), autocommit=True, row_factory=dict_row
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to the database: {db.primary_message(exc)} "
            "(is `durable-cluster start` running? give --dsn or DURABLE_DSN)"
        ) from exc


def jsonable(value: Any) -> Any:
    """Timestamps as ISO 8601 strings, the rest as it is (recursively)."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _role(conn: Conn) -> str:
    row = conn.execute("SELECT current_user AS role").fetchone()
    return str(row["role"]) if row else ""


# -- status -----------------------------------------------------------------------------------


def status(conn: Conn) -> dict[str, Any]:
    """Workers, partitions and runs (runtime roles only), instances by status, the oldest running."""
    result: dict[str, Any] = {"role": _role(conn)}
    now = conn.execute("SELECT pg_catalog.now() AS now").fetchone()
    result["server_time"] = jsonable(now["now"]) if now else None
    notes: list[str] = []
    try:
        workers = conn.execute(
            "SELECT w.id::text AS id, w.host, w.pid, w.slot, w.cpu, w.state, w.partitions,"
            " w.started_at, w.heartbeat_at,"
            " EXTRACT(EPOCH FROM pg_catalog.clock_timestamp() - w.heartbeat_at)::float8 AS heartbeat_age"
            " FROM durable.workers w ORDER BY w.host, w.slot, w.started_at, w.id"
        ).fetchall()
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM durable.partitions)::int AS total,"
            " (SELECT count(DISTINCT p) FROM durable.workers w, unnest(w.partitions) AS p)::int AS claimed,"
            " (SELECT count(*) FROM durable.runs)::int AS active,"
            " (SELECT count(*) FROM durable.runs r WHERE r.wake_at <= pg_catalog.now())::int AS due"
        ).fetchone()
    except pg_errors.InsufficientPrivilege:
        result["workers"] = None
        result["partitions"] = None
        result["runs"] = None
        notes.append(
            f'role "{result["role"]}" cannot read the runtime tables (schema durable): workers, '
            "partitions and runs are shown to the runtime role only (give its DSN with --dsn)"
        )
    else:
        result["workers"] = [
            {
                "id": w["id"],
                "host": w["host"],
                "pid": w["pid"],
                "slot": w["slot"],
                "cpu": w["cpu"],
                "state": w["state"],
                "partitions": list(w["partitions"] or []),
                "started_at": jsonable(w["started_at"]),
                "heartbeat_at": jsonable(w["heartbeat_at"]),
                "heartbeat_age_seconds": _seconds(w["heartbeat_age"]),
            }
            for w in workers
        ]
        assert counts is not None
        result["partitions"] = {"total": counts["total"], "claimed": counts["claimed"]}
        result["runs"] = {"active": counts["active"], "due": counts["due"]}
    try:
        rows = conn.execute(
            "SELECT i.status, count(*)::int AS n FROM df.instances i GROUP BY i.status"
        ).fetchall()
        oldest = conn.execute(
            "SELECT i.id AS instance_id, i.label, i.created_at,"
            " EXTRACT(EPOCH FROM pg_catalog.now() - i.created_at)::float8 AS age"
            " FROM df.instances i WHERE i.status = 'running' ORDER BY i.created_at, i.id LIMIT 1"
        ).fetchone()
    except pg_errors.InsufficientPrivilege:
        result["instances"] = None
        result["oldest_running"] = None
        notes.append(f'role "{result["role"]}" has no df usage: ask for df.grant_usage')
    else:
        by_status = dict.fromkeys(STATUSES, 0)
        for row in rows:
            by_status[str(row["status"] or "pending")] = row["n"]
        by_status["total"] = sum(by_status.values())
        result["instances"] = by_status
        result["oldest_running"] = (
            None
            if oldest is None
            else {
                "instance_id": oldest["instance_id"],
                "label": oldest["label"],
                "created_at": jsonable(oldest["created_at"]),
                "age_seconds": _seconds(oldest["age"]),
            }
        )
    result["notes"] = notes
    return result


# -- list -------------------------------------------------------------------------------------


def list_instances(
    conn: Conn,
    *,
    status: str | None = None,
    label: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """One page of ``df.list_instances`` (newest first) and the cursor of the next page."""
    rows = conn.execute(
        "SELECT l.instance_id, l.label, l.status, l.execution_count, l.output, l.created_at, l.completed_at,"
        " l.next_cursor FROM df.list_instances(%s, %s, %s, %s) AS l",
        (status or None, limit, label or None, cursor or None),
    ).fetchall()
    return {
        "instances": [
            {
                "instance_id": r["instance_id"],
                "label": r["label"],
                "status": r["status"],
                "execution_count": r["execution_count"],
                "output": r["output"],
                "created_at": jsonable(r["created_at"]),
                "completed_at": jsonable(r["completed_at"]),
            }
            for r in rows
        ],
        "next_cursor": rows[0]["next_cursor"] if rows else None,
    }


# -- show -------------------------------------------------------------------------------------


def _json_or_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _node(row: dict[str, Any]) -> dict[str, Any]:
    details = _json_or_text(row["status_details"])
    details = details if isinstance(details, dict) else {}
    result = _json_or_text(row["result"])
    failed = row["status"] == "failed"
    node = render.GraphNode.from_row(row)
    return {
        "node_id": row["node_id"],
        "node_type": row["node_type"],
        "label": render.label(node),
        "query": row["query"],
        "result_name": row["result_name"],
        "left_node": row["left_node"],
        "right_node": row["right_node"],
        "status": row["status"],
        "inferred_status": row["inferred_status"],
        "inferred_from": row["inferred_status_from_ancestor_id"],
        "execution_id": details.get("execution_id"),
        "attempt": details.get("attempt"),
        "max_attempts": details.get("max_attempts"),
        "errors": details.get("errors") or [],
        "guarantee": details.get("guarantee"),
        "result": None if failed else result,
        "error": (result if isinstance(result, str) else json.dumps(result)) if failed else None,
        "updated_at": jsonable(row["updated_at"]),
        "elapsed_seconds": _seconds(row["elapsed"]) if row["status"] != "pending" else None,
    }


def show(conn: Conn, instance_id: str) -> dict[str, Any]:
    """An instance, its nodes in pre-order (inferred status, attempts, timings, errors), its executions."""
    row = conn.execute(
        "SELECT i.id AS instance_id, i.label, i.status, i.submitted_by::text AS submitted_by, i.database,"
        " i.root_node, i.created_at, i.updated_at, i.completed_at,"
        " EXTRACT(EPOCH FROM coalesce(i.completed_at,"
        "   CASE WHEN i.status IN ('failed', 'cancelled') THEN i.updated_at END, pg_catalog.now())"
        "   - i.created_at)::float8 AS duration,"
        " f.function_name, f.current_execution_id, f.output"
        " FROM df.instances i LEFT JOIN df.instance_info(i.id) AS f ON true WHERE i.id = %s",
        (instance_id.lower(),),
    ).fetchone()
    if row is None:
        raise InstanceNotFound(f"instance {instance_id} not found (or not visible to role {_role(conn)})")
    nodes = conn.execute(
        "SELECT f.node_id, f.node_type, f.query, f.result_name, f.left_node, f.right_node, f.status,"
        " f.result, f.status_details, f.inferred_status, f.inferred_status_from_ancestor_id, f.updated_at,"
        " EXTRACT(EPOCH FROM f.updated_at - i.created_at)::float8 AS elapsed"
        " FROM df.instance_nodes(%s) WITH ORDINALITY AS f"
        " JOIN df.instances i ON i.id = %s ORDER BY f.ordinality",
        (row["instance_id"], row["instance_id"]),
    ).fetchall()
    executions = conn.execute(
        "SELECT e.execution_id, e.status, e.event_count, e.duration_ms, e.output"
        " FROM df.instance_executions(%s, 20) AS e",
        (row["instance_id"],),
    ).fetchall()
    instance = {
        "instance_id": row["instance_id"],
        "label": row["label"],
        "status": row["status"],
        "submitted_by": row["submitted_by"],
        "database": row["database"],
        "root_node": row["root_node"],
        "function_name": row["function_name"],
        "execution_count": row["current_execution_id"],
        "output": row["output"],
        "created_at": jsonable(row["created_at"]),
        "updated_at": jsonable(row["updated_at"]),
        "completed_at": jsonable(row["completed_at"]),
        "duration_seconds": _seconds(row["duration"]),
    }
    return {
        "instance": instance,
        "nodes": [_node(n) for n in nodes],
        "executions": [dict(e) for e in executions],
    }


def graph_nodes(shown: dict[str, Any]) -> tuple[list[render.GraphNode], str]:
    """The drawable graph of a :func:`show` document (tooltips carry timings and errors)."""
    nodes = []
    for node in shown["nodes"]:
        detail = []
        if node["elapsed_seconds"] is not None:
            detail.append(f"at +{node['elapsed_seconds']:.3f}s ({node['updated_at']})")
        if node["attempt"]:
            detail.append(f"attempt {node['attempt']} of {node['max_attempts']}")
        if node["error"]:
            detail.append(f"error: {node['error']}")
        nodes.append(
            render.GraphNode(
                id=node["node_id"],
                node_type=node["node_type"],
                query=node["query"],
                result_name=node["result_name"],
                left=node["left_node"],
                right=node["right_node"],
                status=node["inferred_status"],
                detail="\n".join(detail) or None,
            )
        )
    return nodes, shown["instance"]["root_node"]


# -- explain ----------------------------------------------------------------------------------


def explain_text(conn: Conn, text: str) -> str:
    """``df.explain``: the spec's text tree of an instance id, a DSL expression, Durofut JSON or SQL."""
    row = conn.execute("SELECT df.explain(%s) AS tree", (text,)).fetchone()
    return str(row["tree"]) if row else ""


def graph(conn: Conn, text: str) -> tuple[list[render.GraphNode], str]:
    """The graph to draw for ``explain --format``: an instance (with status) or a dry run.

    Input is classified as ``df.explain`` does (spec §2.20). A DSL expression
    is evaluated as the caller (``SELECT <input>``) inside a transaction that
    is rolled back, then flattened as ``df.start`` would store it.
    """
    value = text.strip()
    if INSTANCE_ID.match(value):
        return graph_nodes(show(conn, value))
    if value.startswith("{"):
        return _flatten(conn, value)
    if any(marker in value for marker in DSL_MARKERS):
        try:
            with conn.transaction(force_rollback=True):
                conn.execute("SET LOCAL search_path = pg_catalog, df, pg_temp")
                row = conn.execute(f"SELECT ({value})::text AS fut").fetchone()  # the caller's own SQL
                fut = row["fut"] if row else None
                if fut is None:
                    raise DurableClusterError("the expression returned NULL")
                return _flatten(conn, str(fut))
        except psycopg.Error as exc:
            raise DurableClusterError(f"cannot evaluate the expression: {db.primary_message(exc)}") from exc
    if SQL_START.match(value):
        return [render.GraphNode(id="00000001", node_type="SQL", query=value)], "00000001"
    raise DurableClusterError(
        "cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL expression"
    )


def _flatten(conn: Conn, fut: str) -> tuple[list[render.GraphNode], str]:
    try:
        rows = conn.execute(
            "SELECT f.id::text AS id, f.node_type, f.query, f.result_name, f.left_node::text AS left_node,"
            " f.right_node::text AS right_node FROM df._flatten(df._parse_strict(%s)) AS f ORDER BY f.ord",
            (fut,),
        ).fetchall()
    except psycopg.Error as exc:
        raise DurableClusterError(f"invalid durable function graph: {db.primary_message(exc)}") from exc
    if not rows:
        raise DurableClusterError("the graph is empty")
    return [render.GraphNode.from_row(r) for r in rows], str(rows[0]["id"])


# -- top --------------------------------------------------------------------------------------


def top(conn: Conn, *, limit: int = 20) -> dict[str, Any]:
    """A :func:`status` snapshot and the running (then pending) instances, oldest first."""
    rows = conn.execute(
        "SELECT i.id AS instance_id, i.label, i.status, i.created_at,"
        " EXTRACT(EPOCH FROM pg_catalog.now() - i.created_at)::float8 AS age,"
        " (SELECT count(*) FROM df.nodes n"
        "   WHERE n.instance_id = i.id AND n.status = 'completed')::int AS done,"
        " (SELECT count(*) FROM df.nodes n"
        "   WHERE n.instance_id = i.id AND n.node_type <> 'THEN')::int AS steps,"
        " (SELECT string_agg(n.node_type || ' ' || n.id, ', ' ORDER BY n.id) FROM df.nodes n"
        "   WHERE n.instance_id = i.id AND n.status = 'running' AND n.node_type NOT IN"
        "   ('THEN', 'IF', 'JOIN', 'RACE', 'LOOP', 'RETRY', 'TIMEOUT')) AS running_steps"
        " FROM df.instances i WHERE i.status IN ('running', 'pending')"
        " ORDER BY i.status DESC, i.created_at, i.id LIMIT %s",
        (limit,),
    ).fetchall()
    return {
        "status": status(conn),
        "active": [
            {
                "instance_id": r["instance_id"],
                "label": r["label"],
                "status": r["status"],
                "created_at": jsonable(r["created_at"]),
                "age_seconds": _seconds(r["age"]),
                "nodes_completed": r["done"],
                "nodes": r["steps"],
                "running_steps": r["running_steps"],
            }
            for r in rows
        ],
        "sampled_at": time.time(),
    }


# -- cancel, signal ---------------------------------------------------------------------------


def _control(conn: Conn, query: str, params: Iterable[Any]) -> str:
    try:
        row = conn.execute(query, tuple(params)).fetchone()
    except pg_errors.RaiseException as exc:  # df's own errors: not found or access denied
        raise InstanceNotFound(db.primary_message(exc)) from exc
    except psycopg.Error as exc:
        raise DurableClusterError(db.primary_message(exc)) from exc
    return str(row["message"]) if row else ""


def cancel(conn: Conn, instance_id: str, reason: str = "Cancelled by user") -> dict[str, Any]:
    """``df.cancel``; the instance's status afterwards (unchanged when it was already terminal)."""
    message = _control(conn, "SELECT df.cancel(%s, %s) AS message", (instance_id.lower(), reason))
    row = conn.execute(
        "SELECT i.status FROM df.instances i WHERE i.id = %s", (instance_id.lower(),)
    ).fetchone()
    return {"instance_id": instance_id.lower(), "status": row["status"] if row else None, "message": message}


def signal(conn: Conn, instance_id: str, name: str, data: str = "{}") -> dict[str, Any]:
    """``df.signal``: put ``name`` with ``data`` (JSON, else a string) in the instance's mailbox."""
    message = _control(conn, "SELECT df.signal(%s, %s, %s) AS message", (instance_id.lower(), name, data))
    return {"instance_id": instance_id.lower(), "signal": name, "message": message}


# -- doctor -----------------------------------------------------------------------------------

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
SKEW_WARN = 1.0  # seconds of clock difference with the server (beyond the round trip)
SKEW_FAIL = 30.0


def doctor(dsn: str, settings: Settings) -> dict[str, Any]:
    """The environment self-check: one PASS/WARN/FAIL line per concern, and the facts behind them.

    The start-up checks of :mod:`.preflight` (server version, standby,
    pooler, connection budget, logins of waiting submitters), plus the
    schema version, the DSN's TCP keepalives, the clock skew between this
    host and the server, and whether workers are alive.
    """
    checks: list[dict[str, str]] = []
    facts: dict[str, Any] = {}

    def add(name: str, result: str, detail: str) -> None:
        checks.append({"name": name, "result": result, "detail": detail})

    try:
        conn = connect(dsn, application_name="durable-cluster doctor")
    except DatabaseUnavailable as exc:
        add("connection", FAIL, str(exc))
        return {"ok": False, "checks": checks, "facts": facts}
    with conn:
        row = conn.execute(
            "SELECT current_user AS role, current_database() AS database, pg_catalog.version() AS version,"
            " current_setting('server_version') AS short"
        ).fetchone()
        assert row is not None
        facts.update(role=row["role"], database=row["database"], server=row["version"])
        add("connection", PASS, f'connected to database "{row["database"]}" as role "{row["role"]}"')
        _doctor_preflight(dsn, settings, row, add, facts)
        _doctor_schema(conn, add, facts)
        _doctor_keepalives(dsn, add, facts)
        _doctor_clock(conn, add, facts)
        _doctor_workers(conn, add, facts)
    return {"ok": all(check["result"] != FAIL for check in checks), "checks": checks, "facts": facts}


def _doctor_preflight(
    dsn: str,
    settings: Settings,
    row: dict[str, Any],
    add: Callable[[str, str, str], None],
    facts: dict[str, Any],
) -> None:
    from . import preflight  # noqa: PLC0415 - doctor only

    roles_checked = True
    try:
        report = preflight.check(dsn, settings)
    except pg_errors.InsufficientPrivilege:
        roles_checked = False
        report = preflight.check(dsn, settings, check_roles=False)
    facts.update(report.facts)
    problems = list(report.problems)
    warnings = list(report.warnings)

    def take(items: list[str], *words: str) -> list[str]:
        found = [item for item in items if any(word in item for word in words)]
        for item in found:
            items.remove(item)
        return found

    server = take(problems, "not supported", "standby")
    newer = take(warnings, "newer than the versions tested")
    if server:
        add("server", FAIL, "; ".join(server))
    elif newer:
        add("server", WARN, "; ".join(newer))
    else:
        add("server", PASS, f"PostgreSQL {row['short']}, a primary (not in recovery)")
    pooler = take(problems, "pooler")
    add(
        "pooler",
        FAIL if pooler else PASS,
        "; ".join(pooler) or "session-mode connection (one server process across statements)",
    )
    budget = take(problems, "max_connections")
    add(
        "connection budget",
        FAIL if budget else PASS,
        "; ".join(budget)
        or f"max_connections {facts.get('max_connections')}: {facts.get('connections_used')} in use, "
        f"about {facts.get('connections_needed')} needed by {settings.worker_count} workers "
        f"(--workers) and --max-user-connections {settings.max_user_connections}",
    )
    logins = take(warnings, "cannot log in as role")
    if not roles_checked:
        add(
            "submitter logins",
            WARN,
            f'not checked: role "{row["role"]}" cannot read durable.runs; run doctor with the runtime DSN',
        )
    elif logins:
        for warning in logins:
            add("submitter logins", WARN, warning)
    else:
        add("submitter logins", PASS, "the runtime can log in as every role with waiting instances")
    for problem in problems:
        add("preflight", FAIL, problem)
    for warning in warnings:
        add("preflight", WARN, warning)


def _doctor_schema(conn: Conn, add: Callable[[str, str, str], None], facts: dict[str, Any]) -> None:
    from . import schema  # noqa: PLC0415

    latest = schema.latest_version()
    try:
        row = conn.execute(
            "SELECT coalesce(max(m.version), 0)::int AS version FROM durable.migrations m"
        ).fetchone()
    except pg_errors.UndefinedTable:
        add("schema", FAIL, "not installed: run durable-cluster init")
        return
    except (pg_errors.InsufficientPrivilege, pg_errors.InvalidSchemaName):
        ok = conn.execute(
            "SELECT pg_catalog.to_regnamespace('df') IS NOT NULL"
            " AND pg_catalog.has_schema_privilege('df', 'USAGE') AS ok"
        ).fetchone()
        if ok and ok["ok"]:
            add(
                "schema", PASS, "the df functions are installed (the version is readable by the runtime role)"
            )
        else:
            add("schema", FAIL, "the df schema is not visible: run durable-cluster init, then df.grant_usage")
        return
    version = int(row["version"]) if row else 0
    facts.update(schema_version=version, schema_latest=latest)
    if version == 0:
        add("schema", FAIL, "not installed: run durable-cluster init")
    elif version < latest:
        add("schema", WARN, f"version {version}, this durable-cluster has {latest}: run durable-cluster init")
    elif version > latest:
        add("schema", FAIL, f"version {version} is newer than this durable-cluster ({latest}): upgrade it")
    else:
        add("schema", PASS, f"version {version} (up to date)")


def _doctor_keepalives(dsn: str, add: Callable[[str, str, str], None], facts: dict[str, Any]) -> None:
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    given = conninfo_to_dict(dsn)
    host = str(given.get("host") or "")
    if not host or all(part.startswith("/") for part in host.split(",")):
        facts["keepalives"] = None
        add("keepalives", PASS, "Unix socket: TCP keepalives do not apply")
        return
    effective = conninfo_to_dict(db.conninfo(dsn))
    values = {key: effective.get(key) for key in db.KEEPALIVES}
    facts["keepalives"] = values
    if str(values.get("keepalives")) == "0":
        add(
            "keepalives",
            WARN,
            "keepalives=0 in the DSN: a silently dead server or network is noticed only when a query "
            "times out, and partition locks are held meanwhile; remove it",
        )
        return
    origin = "the DSN's" if any(key in given for key in db.KEEPALIVES) else "durable-cluster's defaults"
    add(
        "keepalives",
        PASS,
        f"on ({origin}): idle {values.get('keepalives_idle')}s, interval "
        f"{values.get('keepalives_interval')}s, count {values.get('keepalives_count')}",
    )


def _doctor_clock(conn: Conn, add: Callable[[str, str, str], None], facts: dict[str, Any]) -> None:
    before = time.time()
    row = conn.execute("SELECT EXTRACT(EPOCH FROM pg_catalog.clock_timestamp())::float8 AS now").fetchone()
    after = time.time()
    assert row is not None
    skew = float(row["now"]) - (before + after) / 2
    round_trip = after - before
    facts.update(clock_skew_seconds=round(skew, 3), round_trip_seconds=round(round_trip, 3))
    size = abs(skew) - round_trip / 2
    text = f"the server's clock is {abs(skew):.3f}s {'ahead of' if skew > 0 else 'behind'} this host's"
    if size > SKEW_FAIL:
        add("clock skew", FAIL, text + ": timers and heartbeats will misfire; synchronise the clocks (NTP)")
    elif size > SKEW_WARN:
        add("clock skew", WARN, text + ": synchronise the clocks (NTP)")
    else:
        add("clock skew", PASS, text)


def _doctor_workers(conn: Conn, add: Callable[[str, str, str], None], facts: dict[str, Any]) -> None:
    try:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE w.heartbeat_at > pg_catalog.now() - interval '60 seconds')::int"
            " AS alive, count(*)::int AS total FROM durable.workers w"
        ).fetchone()
    except (pg_errors.InsufficientPrivilege, pg_errors.UndefinedTable, pg_errors.InvalidSchemaName):
        add("workers", WARN, "not checked: this role cannot read durable.workers (use the runtime DSN)")
        return
    alive = int(row["alive"]) if row else 0
    facts["workers_alive"] = alive
    if alive:
        add("workers", PASS, f"{alive} workers sent a heartbeat within the last minute")
    else:
        add("workers", WARN, "no worker is running: instances wait until `durable-cluster start` runs")


# -- views (rich) -----------------------------------------------------------------------------
#
# The CLI's tables: each takes the document the matching function returned (the --json output)
# and returns something rich can print. rich is imported here only, when a table is printed.

STATUS_STYLES = {
    "pending": "dim",
    "running": "bold blue",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "skipped": "dim",
    PASS: "green",
    WARN: "yellow",
    FAIL: "bold red",
}


def _styled(text: Any) -> Any:
    from rich.text import Text  # noqa: PLC0415

    value = "" if text is None else str(text)
    return Text(value, style=STATUS_STYLES.get(value, ""))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    parts: list[str] = []
    for number in sorted(numbers):
        if parts and "-" not in parts[-1].lstrip("-") and int(parts[-1]) == number - 1:
            parts[-1] = f"{parts[-1]}-{number}"
        elif parts and "-" in parts[-1] and int(parts[-1].rsplit("-", 1)[1]) == number - 1:
            parts[-1] = f"{parts[-1].rsplit('-', 1)[0]}-{number}"
        else:
            parts.append(str(number))
    return ",".join(parts) or "-"


def _when(iso: str | None) -> str:
    """An ISO timestamp for a table: to the second, in the server's zone."""
    return "" if not iso else iso[:19].replace("T", " ")


def _cut(text: Any, limit: int) -> str:
    value = "" if text is None else str(text).replace("\n", " ")
    return value if len(value) <= limit else value[: limit - 3] + "..."


def status_view(document: dict[str, Any]) -> Any:
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    parts: list[Any] = [Text(f"role {document['role']} · server time {_when(document['server_time'])}")]
    workers = document["workers"]
    if workers is not None:
        table = Table(title="workers", title_justify="left")
        for column in ("HOST", "PID", "SLOT", "CPU", "STATE", "PARTITIONS", "HEARTBEAT"):
            table.add_column(column)
        for worker in workers:
            table.add_row(
                worker["host"],
                str(worker["pid"]),
                str(worker["slot"]),
                "-" if worker["cpu"] is None else str(worker["cpu"]),
                worker["state"],
                _ranges(worker["partitions"]),
                f"{_age(worker['heartbeat_age_seconds'])} ago",
            )
        parts.append(table)
        partitions, runs = document["partitions"], document["runs"]
        parts.append(
            Text(
                f"partitions: {partitions['claimed']} of {partitions['total']} claimed · "
                f"runs: {runs['active']} active, {runs['due']} due now"
            )
        )
    if document["instances"] is not None:
        table = Table(title="instances", title_justify="left")
        table.add_column("STATUS")
        table.add_column("COUNT", justify="right")
        for name in (*STATUSES, "total"):
            table.add_row(_styled(name), str(document["instances"][name]))
        parts.append(table)
        oldest = document["oldest_running"]
        parts.append(
            Text(
                "oldest running: none"
                if oldest is None
                else f"oldest running: {oldest['instance_id']}"
                + (f" ({oldest['label']})" if oldest["label"] else "")
                + f", for {_age(oldest['age_seconds'])}"
            )
        )
    parts += [Text(f"note: {note}", style="yellow") for note in document["notes"]]
    return Group(*parts)


def list_view(document: dict[str, Any]) -> Any:
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table()
    for column in ("INSTANCE", "LABEL", "STATUS", "CREATED", "COMPLETED", "OUTPUT"):
        table.add_column(column)
    for row in document["instances"]:
        table.add_row(
            row["instance_id"],
            row["label"] or "",
            _styled(row["status"]),
            _when(row["created_at"]),
            _when(row["completed_at"]),
            _cut(row["output"], 40),
        )
    parts: list[Any] = [table]
    if not document["instances"]:
        parts = [Text("no instances")]
    if document["next_cursor"]:
        parts.append(Text(f"more: --cursor {document['next_cursor']}"))
    return Group(*parts)


def show_view(document: dict[str, Any]) -> Any:
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    instance = document["instance"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row(
        "instance", instance["instance_id"] + (f" ({instance['label']})" if instance["label"] else "")
    )
    head.add_row("status", _styled(instance["status"]))
    head.add_row("submitted by", instance["submitted_by"] or "")
    head.add_row("created", _when(instance["created_at"]))
    if instance["completed_at"]:
        head.add_row("completed", _when(instance["completed_at"]))
    head.add_row("duration", _age(instance["duration_seconds"]))
    if instance["output"] is not None:
        head.add_row("output", _cut(instance["output"], 200))
    nodes = Table(title="nodes", title_justify="left")
    for column in ("NODE", "STEP", "STATUS", "ATTEMPT", "AT", "ERROR"):
        nodes.add_column(column)
    for node in document["nodes"]:
        if node["node_type"] == "THEN":
            continue
        status = _styled(node["inferred_status"])
        if node["inferred_status"] != node["status"]:
            status.append(f" ({node['status']})", style="dim")
        nodes.add_row(
            node["node_id"],
            node["label"],
            status,
            f"{node['attempt']}/{node['max_attempts']}" if node["attempt"] else "",
            "" if node["elapsed_seconds"] is None else f"+{node['elapsed_seconds']:.3f}s",
            _cut(node["error"], 60),
        )
    executions = Table(title="executions", title_justify="left")
    for column in ("EXECUTION", "STATUS", "EVENTS", "DURATION"):
        executions.add_column(column)
    for execution in document["executions"]:
        executions.add_row(
            str(execution["execution_id"]),
            str(execution["status"]),
            str(execution["event_count"]),
            "" if execution["duration_ms"] is None else f"{execution['duration_ms']} ms",
        )
    return Group(head, nodes, executions, Text(""))


def top_view(document: dict[str, Any]) -> Any:
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    status = document["status"]
    counts = status["instances"] or {}
    line = Text(f"durable-cluster top · role {status['role']} · ")
    for name in STATUSES:
        line.append(f"{name} {counts.get(name, '-')}  ", style=STATUS_STYLES.get(name, ""))
    parts: list[Any] = [line]
    if status["workers"] is not None:
        alive = sum(1 for w in status["workers"] if (w["heartbeat_age_seconds"] or 0) < 60)
        parts.append(
            Text(
                f"workers {alive} alive · partitions {status['partitions']['claimed']}/"
                f"{status['partitions']['total']} · runs due {status['runs']['due']}"
            )
        )
    table = Table(title="active instances (oldest first)", title_justify="left")
    for column in ("INSTANCE", "LABEL", "STATUS", "AGE", "DONE", "RUNNING STEPS"):
        table.add_column(column)
    for row in document["active"]:
        table.add_row(
            row["instance_id"],
            row["label"] or "",
            _styled(row["status"]),
            _age(row["age_seconds"]),
            f"{row['nodes_completed']}/{row['nodes']}",
            _cut(row["running_steps"], 50),
        )
    parts.append(table)
    return Group(*parts)


def doctor_view(document: dict[str, Any]) -> Any:
    from rich.console import Group  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    width = max((len(check["name"]) for check in document["checks"]), default=0)
    lines = []
    for check in document["checks"]:
        line = Text()
        line.append(check["result"], style=STATUS_STYLES[check["result"]])
        line.append(f"  {check['name'].ljust(width)}  {check['detail']}")
        lines.append(line)
    return Group(*lines)
