"""The read commands against a running cluster: status, list, show, explain, top, cancel, signal, doctor.

Every command runs as a subprocess (``python -m durable_cluster ...``) as the
role of its ``--dsn``: an application role sees its own instances (row-level
security), the runtime DSN everything. ``--json`` documents are checked with
explicit key sets: they are the shapes docs/cli.md promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.timeout(240)]

CLI = [sys.executable, "-m", "durable_cluster"]
ANSI = "\x1b["

STATUS_KEYS = {
    "role",
    "server_time",
    "workers",
    "partitions",
    "runs",
    "instances",
    "oldest_running",
    "notes",
}
WORKER_KEYS = {
    "id",
    "host",
    "pid",
    "slot",
    "cpu",
    "state",
    "partitions",
    "started_at",
    "heartbeat_at",
    "heartbeat_age_seconds",
}
COUNT_KEYS = {"pending", "running", "completed", "failed", "cancelled", "total"}
OLDEST_KEYS = {"instance_id", "label", "created_at", "age_seconds"}
LIST_KEYS = {"instances", "next_cursor"}
ROW_KEYS = {"instance_id", "label", "status", "execution_count", "output", "created_at", "completed_at"}
SHOW_KEYS = {"instance", "nodes", "executions"}
INSTANCE_KEYS = {
    "instance_id",
    "label",
    "status",
    "submitted_by",
    "database",
    "root_node",
    "function_name",
    "execution_count",
    "output",
    "created_at",
    "updated_at",
    "completed_at",
    "duration_seconds",
}
NODE_KEYS = {
    "node_id",
    "node_type",
    "label",
    "query",
    "result_name",
    "left_node",
    "right_node",
    "status",
    "inferred_status",
    "inferred_from",
    "execution_id",
    "attempt",
    "max_attempts",
    "errors",
    "guarantee",
    "result",
    "error",
    "updated_at",
    "elapsed_seconds",
}
EXECUTION_KEYS = {"execution_id", "status", "event_count", "duration_ms", "output"}
EXPLAIN_KEYS = {"input", "format", "output"}
CANCEL_KEYS = {"instance_id", "status", "message"}
SIGNAL_KEYS = {"instance_id", "signal", "message"}
TOP_KEYS = {"status", "active", "sampled_at"}
ACTIVE_KEYS = {
    "instance_id",
    "label",
    "status",
    "created_at",
    "age_seconds",
    "nodes_completed",
    "nodes",
    "running_steps",
}
DOCTOR_KEYS = {"ok", "checks", "facts"}
CHECK_KEYS = {"name", "result", "detail"}
DOCTOR_CHECKS = {
    "connection",
    "server",
    "pooler",
    "connection budget",
    "submitter logins",
    "schema",
    "keepalives",
    "clock skew",
    "workers",
}


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DURABLE_")}
    env.pop("NO_COLOR", None)
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


def cli(*args: str, dsn: str, code: int = 0, env: dict[str, str] | None = None) -> str:
    """Run a command as the DSN's role; return its standard output (asserting the exit code)."""
    done = subprocess.run(
        [*CLI, *args, "--dsn", dsn],
        capture_output=True,
        text=True,
        env=environment(env),
        timeout=90,
        check=False,
    )
    assert done.returncode == code, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert ANSI not in done.stdout, "colours on a pipe"
    return done.stdout if code == 0 else done.stdout + done.stderr


def cli_json(*args: str, dsn: str, code: int = 0) -> Any:
    return json.loads(cli(*args, "--json", dsn=dsn, code=code))


def start(conn: psycopg.Connection[Any], graph: str, label: str) -> str:
    row = conn.execute(f"SELECT df.start({graph}, %s)", (label,)).fetchone()
    assert row is not None
    return str(row[0])


def await_status(conn: psycopg.Connection[Any], instance: str, expected: str) -> None:
    row = conn.execute("SELECT df.await_instance(%s, 60)", (instance,)).fetchone()
    assert row == (expected,)


def node_running(conn: psycopg.Connection[Any], instance: str, query: str) -> bool:
    row = conn.execute(
        "SELECT status FROM df.nodes WHERE instance_id = %s AND query = %s", (instance, query)
    ).fetchone()
    return row is not None and row[0] == "running"


def test_status_list_show_and_explain_as_a_role_and_as_the_runtime(
    cluster: Cluster, make_role: RoleFactory, dsn: str, tmp_path: Path
) -> None:
    alice, bob = make_role("alice"), make_role("bob")
    alice_dsn, bob_dsn = make_role.dsn(alice), make_role.dsn(bob)
    with psycopg.connect(alice_dsn, autocommit=True) as conn:
        done = start(conn, "'SELECT 1' |=> 'one' ~> 'SELECT $one + 1 AS two'", "batch")
        flaky = start(conn, "df.retry('SELECT 1/0', 2, 0.1)", "flaky")
        long = start(conn, "'SELECT pg_sleep(60)' ~> 'SELECT 2'", "long")
        await_status(conn, done, "completed")
        await_status(conn, flaky, "failed")
        wait_for(lambda: node_running(conn, long, "SELECT pg_sleep(60)"), message="the long step to run")
    with psycopg.connect(bob_dsn, autocommit=True) as conn:
        bobs = start(conn, "'SELECT 1'", "batch")
        await_status(conn, bobs, "completed")

    # status: a role sees its own instances, not the runtime tables; the runtime sees everything
    mine = cli_json("status", dsn=alice_dsn)
    assert set(mine) == STATUS_KEYS
    assert mine["role"] == alice
    assert mine["workers"] is None
    assert mine["partitions"] is None
    assert mine["runs"] is None
    assert "cannot read the runtime tables" in mine["notes"][0]
    assert set(mine["instances"]) == COUNT_KEYS
    assert mine["instances"] == {
        "pending": 0,
        "running": 1,
        "completed": 1,
        "failed": 1,
        "cancelled": 0,
        "total": 3,
    }
    assert set(mine["oldest_running"]) == OLDEST_KEYS
    assert mine["oldest_running"]["instance_id"] == long
    # Worker rows are written with each claim: wait for the last claim's commit.
    everything = wait_for(
        lambda: (
            (status := cli_json("status", dsn=dsn))
            and sorted(p for w in status["workers"] or [] for p in w["partitions"]) == list(range(8))
            and status
        ),
        10,
        message="every claim in the worker rows",
    )
    assert everything["notes"] == []
    assert len(everything["workers"]) == 2
    for worker in everything["workers"]:
        assert set(worker) == WORKER_KEYS
        assert worker["pid"] in cluster.worker_pids()
        assert worker["heartbeat_age_seconds"] < 30
    assert sorted(p for w in everything["workers"] for p in w["partitions"]) == list(range(8))
    assert everything["partitions"] == {"total": 8, "claimed": 8}
    assert set(everything["runs"]) == {"active", "due"}
    assert everything["instances"]["total"] == 4
    text = cli("status", dsn=alice_dsn)
    assert "cannot read the runtime tables" in text
    assert "running" in text
    assert long in text
    admin_text = cli("status", dsn=dsn)
    assert "PARTITIONS" in admin_text
    assert "8 of 8 claimed" in admin_text

    # list: filters and keyset pagination, newest first, RLS-scoped
    page = cli_json("list", dsn=alice_dsn)
    assert set(page) == LIST_KEYS
    assert all(set(row) == ROW_KEYS for row in page["instances"])
    assert [row["instance_id"] for row in page["instances"]] == [long, flaky, done]
    assert page["next_cursor"] is None
    assert [
        r["instance_id"] for r in cli_json("list", "--status", "completed", dsn=alice_dsn)["instances"]
    ] == [done]
    assert [r["instance_id"] for r in cli_json("list", "--label", "batch", dsn=alice_dsn)["instances"]] == [
        done
    ]
    assert {r["instance_id"] for r in cli_json("list", "--label", "batch", dsn=dsn)["instances"]} == {
        done,
        bobs,
    }
    first = cli_json("list", "--limit", "2", dsn=alice_dsn)
    assert [row["instance_id"] for row in first["instances"]] == [long, flaky]
    assert first["next_cursor"]
    second = cli_json("list", "--limit", "2", "--cursor", first["next_cursor"], dsn=alice_dsn)
    assert [row["instance_id"] for row in second["instances"]] == [done]
    assert second["next_cursor"] is None
    listed = cli("list", "--limit", "2", dsn=alice_dsn)
    assert long in listed
    assert f"--cursor {first['next_cursor']}" in listed
    assert "invalid after_cursor" in cli("list", "--cursor", "zz", dsn=alice_dsn, code=1)

    # show: nodes with inferred status, attempts, timings, errors
    shown = cli_json("show", done, dsn=alice_dsn)
    assert set(shown) == SHOW_KEYS
    assert set(shown["instance"]) == INSTANCE_KEYS
    assert all(set(node) == NODE_KEYS for node in shown["nodes"])
    assert all(set(execution) == EXECUTION_KEYS for execution in shown["executions"])
    assert shown["instance"]["status"] == "completed"
    assert shown["instance"]["submitted_by"] == alice
    assert json.loads(shown["instance"]["output"]) == {"rows": [{"two": 2}], "row_count": 1}
    leaves = [node for node in shown["nodes"] if node["node_type"] == "SQL"]
    assert [node["label"] for node in leaves] == ["SQL: SELECT 1 |=> 'one'", "SQL: SELECT $one + 1 AS two"]
    assert all(node["inferred_status"] == "completed" for node in shown["nodes"])
    assert all(node["elapsed_seconds"] is not None for node in shown["nodes"])
    assert leaves[1]["result"] == {"rows": [{"two": 2}], "row_count": 1}
    assert leaves[1]["guarantee"] == "exactly-once"
    failed = cli_json("show", flaky, dsn=alice_dsn)
    retry = next(node for node in failed["nodes"] if node["node_type"] == "RETRY")
    assert (retry["attempt"], retry["max_attempts"]) == (2, 2)
    assert retry["errors"] == [{"attempt": 1, "error": "SQL execution failed: division by zero"}]
    assert retry["error"] == "failed after 2 attempts: SQL execution failed: division by zero"
    assert retry["result"] is None
    running = {node["query"]: node for node in cli_json("show", long, dsn=alice_dsn)["nodes"]}
    assert running["SELECT pg_sleep(60)"]["inferred_status"] == "running"
    assert running["SELECT 2"]["inferred_status"] == "pending"
    assert running["SELECT 2"]["elapsed_seconds"] is None
    shown_text = cli("show", flaky, dsn=alice_dsn)
    assert "RETRY (2 attempts)" in shown_text
    assert "division by zero" in shown_text
    assert "not found (or not visible to role" in cli("show", bobs, dsn=alice_dsn, code=1)

    # explain: the spec's text tree, and pictures of instances and of dry runs
    tree = cli("explain", done, dsn=alice_dsn)
    assert tree.startswith(f"Instance: {done} (batch)\nStatus:   ✓ completed\n")
    assert "→ SQL: SELECT $one + 1 AS two ✓" in tree
    picture = ET.fromstring(cli("explain", long, "--format", "svg", dsn=alice_dsn))
    states = {
        g.attrib["data-node-id"]: g.attrib["data-status"]
        for g in picture.iter("{http://www.w3.org/2000/svg}g")
        if "data-node-id" in g.attrib
    }
    assert sorted(states.values()) == ["pending", "running"]
    dsl = "'SELECT 1' ~> df.if('SELECT true', 'SELECT 2', 'SELECT 3')"
    mermaid = cli("explain", dsl, "--format", "mermaid", dsn=alice_dsn)
    assert mermaid.startswith("flowchart TD\n")
    assert mermaid.count('["SQL: SELECT') == 4
    assert ":::" not in mermaid  # a dry run has no status
    document = cli_json("explain", dsl, "--format", "dot", dsn=alice_dsn)
    assert set(document) == EXPLAIN_KEYS
    assert document["format"] == "dot"
    assert document["output"].startswith("digraph durable {")
    target = tmp_path / "graph.svg"
    assert cli("explain", dsl, "--format", "svg", "--output", str(target), dsn=alice_dsn) == ""
    assert ET.fromstring(target.read_text()).tag == "{http://www.w3.org/2000/svg}svg"
    assert "Instance '" in cli("explain", bobs, dsn=alice_dsn)  # df.explain's own message: not found
    assert "not found" in cli("explain", bobs, "--format", "svg", dsn=alice_dsn, code=1)
    assert "cannot evaluate the expression" in cli(
        "explain", "'a' ~> nonsense(", "--format", "dot", dsn=alice_dsn, code=1
    )


def test_cancel_signal_top_and_doctor(cluster: Cluster, make_role: RoleFactory, dsn: str) -> None:
    alice, bob = make_role("alice"), make_role("bob")
    alice_dsn, bob_dsn = make_role.dsn(alice), make_role.dsn(bob)
    with psycopg.connect(alice_dsn, autocommit=True) as conn:
        sleeper = start(conn, "'SELECT pg_sleep(60)'", "sleeper")
        waiter = start(conn, "df.wait_for_signal('go') ~> 'SELECT 7 AS seven'", "waiter")
        wait_for(lambda: node_running(conn, sleeper, "SELECT pg_sleep(60)"), message="the sleep to run")

        # top: one JSON snapshot, or refreshed tables (one after another on a pipe)
        snapshot = cli_json("top", dsn=alice_dsn)
        assert set(snapshot) == TOP_KEYS
        assert set(snapshot["status"]) == STATUS_KEYS
        assert {row["instance_id"] for row in snapshot["active"]} == {sleeper, waiter}
        assert all(set(row) == ACTIVE_KEYS for row in snapshot["active"])
        sleeping = next(row for row in snapshot["active"] if row["instance_id"] == sleeper)
        assert sleeping["running_steps"].startswith("SQL ")
        live = cli("top", "--iterations", "2", "--interval", "0.1", dsn=alice_dsn)
        assert live.count("active instances") == 2
        assert sleeper in live

        # cancel: another role's instance is not found; the owner's is cancelled
        assert "not found or access denied" in cli("cancel", sleeper, dsn=bob_dsn, code=1)
        cancelled = cli_json("cancel", sleeper, "--reason", "enough", dsn=alice_dsn)
        assert set(cancelled) == CANCEL_KEYS
        assert cancelled["status"] == "cancelled"
        assert cancelled["message"] == f"Instance {sleeper} cancelled: enough"
        await_status(conn, sleeper, "cancelled")

        # signal: another role's instance is not found; the owner's wait receives it
        assert "not found or access denied" in cli("signal", waiter, "go", dsn=bob_dsn, code=1)
        sent = cli_json("signal", waiter, "go", '{"ok": true}', dsn=alice_dsn)
        assert set(sent) == SIGNAL_KEYS
        assert sent["signal"] == "go"
        await_status(conn, waiter, "completed")
        assert cli("signal", waiter, "go", dsn=alice_dsn).strip()  # prints df.signal's answer

    # doctor: PASS/WARN/FAIL lines, exit 1 on a FAIL
    report = cli_json("doctor", dsn=dsn)
    assert set(report) == DOCTOR_KEYS
    assert report["ok"] is True
    assert all(set(check) == CHECK_KEYS for check in report["checks"])
    results = {check["name"]: check["result"] for check in report["checks"]}
    assert set(results) == DOCTOR_CHECKS
    assert set(results.values()) == {"PASS"}
    assert report["facts"]["schema_version"] == report["facts"]["schema_latest"]
    assert abs(report["facts"]["clock_skew_seconds"]) < 1
    lines = cli("doctor", dsn=dsn).splitlines()
    assert len(lines) == len(DOCTOR_CHECKS)
    assert all(line.startswith("PASS  ") for line in lines)
    as_user = cli_json("doctor", dsn=alice_dsn)
    assert as_user["ok"] is True
    checks = {check["name"]: check for check in as_user["checks"]}
    assert checks["submitter logins"]["result"] == "WARN"
    assert "not checked" in checks["submitter logins"]["detail"]
    assert checks["schema"]["result"] == "PASS"
    unreachable = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"
    failed = cli("doctor", dsn=unreachable, code=1)
    assert failed.startswith("FAIL  connection")


def test_colours_only_on_a_terminal_and_json_from_the_environment(dsn: str) -> None:
    def in_a_terminal(*args: str, extra: dict[str, str]) -> str:
        primary, secondary = os.openpty()
        env = environment({"TERM": "xterm-256color", **extra})
        with subprocess.Popen(
            [*CLI, *args, "--dsn", dsn], stdin=secondary, stdout=secondary, stderr=subprocess.PIPE, env=env
        ) as process:
            os.close(secondary)
            chunks = []
            while True:
                try:
                    data = os.read(primary, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            assert process.wait(60) == 0
        os.close(primary)
        return b"".join(chunks).decode(errors="replace")

    coloured = in_a_terminal("status", extra={})
    assert ANSI in coloured
    assert "completed" in coloured
    assert ANSI not in in_a_terminal("status", extra={"NO_COLOR": "1"})
    assert "no instances" in cli("list", dsn=dsn)  # on a pipe: no colours (checked by cli())
    assert set(json.loads(cli("status", dsn=dsn, env={"DURABLE_JSON": "1"}))) == STATUS_KEYS
