"""Custom steps end to end: plugins written into a temp directory, used from SQL by a real cluster.

Also the ``durable-cluster plugins`` command, entry-point plugins (a tiny
distribution installed into a temp directory that only the cluster's
``PYTHONPATH`` sees), and the two example plugins of ``docs/examples``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.dfclient import User
from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
ENTRYPOINT_FIXTURE = ROOT / "tests" / "fixtures" / "entrypoint_plugin"

KITCHEN = '''
"""One handler per behaviour under test."""

import asyncio
import threading
import time

from durable_cluster import RetryStep, StepFailed, hookimpl

__version__ = "2.5"


def context(ctx):
    ctx.logger.info("context step of %s ran", ctx.instance_id)
    return {
        "instance_id": ctx.instance_id,
        "node_id": ctx.node_id,
        "key": ctx.key,
        "kind": ctx.kind,
        "args": ctx.args,
        "attempt": ctx.attempt,
        "iteration": ctx.iteration,
        "label": ctx.label,
        "variables": dict(ctx.variables),
        "results": dict(ctx.results),
        "idempotency_key": ctx.idempotency_key,
        "cancelled": ctx.cancelled.is_set(),
        "main_thread": threading.current_thread() is threading.main_thread(),
    }


async def pause(ctx):
    await asyncio.sleep(float(ctx.args.get("seconds", 0)))
    return {"n": ctx.args.get("n"), "main_thread": threading.current_thread() is threading.main_thread()}


def greet(ctx):
    return {"greeting": "hello " + ctx.args["name"]}


def flaky(ctx):
    if ctx.attempt < int(ctx.args["succeed_at"]):
        raise StepFailed(f"attempt {ctx.attempt} failed on purpose")
    return {"attempt": ctx.attempt}


def again(ctx):
    """RetryStep until this key has run ``retries`` + 1 times; logs each run's monotonic time."""
    with open(ctx.args["calls"], "a") as calls:
        calls.write(f"{ctx.key} {time.monotonic()}\\n")
    with open(ctx.args["calls"]) as calls:
        runs = sum(1 for line in calls if line.startswith(ctx.key + " "))
    if runs <= int(ctx.args["retries"]):
        raise RetryStep(f"not yet (run {runs})")
    return {"runs": runs}


def not_json(ctx):
    if ctx.args.get("what") == "set":
        return {"tags": {"a", "b"}}
    return object()


async def sleepy(ctx):
    try:
        await asyncio.sleep(float(ctx.args["seconds"]))
    except asyncio.CancelledError:
        with open(ctx.args["marker"], "w") as marker:
            marker.write("cancelled")
        raise
    return {"slept": True}


def boom(ctx):
    raise ValueError("boom")


@hookimpl
def durable_register_steps(registry):
    registry.add("context", context, description="echoes its StepContext")
    registry.add("pause", pause)
    registry.add("greet", greet)
    registry.add("flaky", flaky)
    registry.add("again", again)
    registry.add("not_json", not_json)
    registry.add("sleepy", sleepy)
    registry.add("boom", boom)
'''

KITCHEN_KINDS = ["again", "boom", "context", "flaky", "greet", "not_json", "pause", "sleepy"]


def write_plugin(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "durable_cluster", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        cwd=cwd,
        timeout=60,
        check=False,
    )


def literal(value: Any) -> str:
    """A SQL string literal of ``value`` as JSON (for df.step's args)."""
    return "'" + json.dumps(value).replace("'", "''") + "'"


@pytest.fixture
def kitchen(tmp_path: Path) -> Path:
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "kitchen.py", KITCHEN)
    return plugins


@pytest.fixture
def user(make_role: RoleFactory) -> Any:
    person = User.made(make_role, "plug")
    yield person
    person.close()


# -- from SQL -----------------------------------------------------------------------------


def test_custom_steps_compose_with_every_operator(
    start_cluster: Callable[..., Cluster], kitchen: Path, user: User
) -> None:
    cluster = start_cluster(workers=2, args=("--plugins-dir", str(kitchen)))
    # Result binding both ways: a step's result feeds SQL, SQL's feeds a step (raw substitution).
    assert user.run("df.step('greet', '{\"name\": \"ada\"}') |=> 'g' ~> 'SELECT $g.greeting AS s'") == (
        "completed",
        {"rows": [{"s": "hello ada"}], "row_count": 1},
    )
    user.conn.execute("SELECT df.setvar('who', 'grace')")
    args = {"n": "$a.n", "who": "{who}", "id": "{sys_instance_id}", "deep": {"list": ["$a.n", 7]}}
    instance = user.start(f"'SELECT 41 + 1 AS n' |=> 'a' ~> df.step('context', {literal(args)})", label="lbl")
    assert user.await_(instance) == "completed"
    ctx = user.result(instance)
    assert ctx["args"] == {"n": "42", "who": "grace", "id": instance, "deep": {"list": ["42", 7]}}
    assert ctx["instance_id"] == instance
    assert ctx["kind"] == "context"
    assert ctx["label"] == "lbl"
    assert ctx["variables"]["who"] == "grace"
    assert ctx["results"] == {"a": {"rows": [{"n": 42}], "row_count": 1}}
    assert ctx["key"].endswith("/" + ctx["node_id"])
    assert ctx["idempotency_key"] == f"{instance}:{ctx['key']}"
    assert (ctx["attempt"], ctx["iteration"], ctx["cancelled"]) == (1, 0, False)
    assert ctx["main_thread"] is False  # a sync handler runs in the thread pool
    assert f"context step of {instance} ran" in cluster.log()  # ctx.logger goes to the worker's log

    # JOIN, RACE and IF around steps; async handlers run on the event loop.
    status, result = user.run("df.step('pause', '{\"n\": 1}') & df.step('greet', '{\"name\": \"b\"}')")
    assert (status, result) == ("completed", [{"n": 1, "main_thread": True}, {"greeting": "hello b"}])
    assert user.run("df.step('pause', '{\"n\": 2}') | (df.sleep(30) ~> 'SELECT 0')") == (
        "completed",
        {"n": 2, "main_thread": True},
    )
    assert user.run("('SELECT true' ?> df.step('pause', '{\"n\": 3}')) !> 'SELECT 0'")[1]["n"] == 3

    # df.retry re-runs a failing step with the next attempt number.
    assert user.run("df.retry(df.step('flaky', '{\"succeed_at\": 3}'), 3, 0.1)") == (
        "completed",
        {"attempt": 3},
    )
    assert (
        user.fails("df.retry(df.step('flaky', '{\"succeed_at\": 9}'), 2, 0.1)")
        == "failed after 2 attempts: attempt 2 failed on purpose"
    )

    # df.timeout cancels a step that runs too long (the handler sees the cancellation).
    marker = kitchen.parent / "cancelled.txt"
    started = time.monotonic()
    timed_out = user.fails(
        f"df.timeout(df.step('sleepy', {literal({'seconds': 60, 'marker': str(marker)})}), 1)"
    )
    assert timed_out.startswith("df.timeout: did not finish within 1")
    assert time.monotonic() - started < 30
    wait_for(marker.exists, 10, message="the cancelled handler")

    # Loops: each iteration runs the step again, with its iteration number.
    user.conn.execute("CREATE TABLE seen (iteration int, key text)")
    status, _ = user.run(
        "@> ((df.step('context') |=> 'c') ~> 'INSERT INTO seen VALUES ($c.iteration, $c.key)' ~> "
        "(('SELECT count(*) >= 2 FROM seen' ?> df.break('done')) !> 'SELECT 0'))"
    )
    assert status == "completed"
    rows = user.conn.execute("SELECT iteration, key FROM seen ORDER BY iteration").fetchall()
    assert [r[0] for r in rows] == [1, 2]
    assert rows[0][1] != rows[1][1]  # one step key per iteration


def test_step_failures_are_clear(start_cluster: Callable[..., Cluster], kitchen: Path, user: User) -> None:
    cluster = start_cluster(workers=1, args=("--plugins-dir", str(kitchen)))
    unknown = user.fails("df.step('nope')")
    assert unknown.startswith("unknown step kind 'nope'; registered kinds: ")
    registered = unknown.split(": ", 1)[1].split(", ")
    assert set(KITCHEN_KINDS) | {"sql", "http"} <= set(registered)
    assert registered == sorted(registered)

    assert user.fails("df.step('not_json', '{\"what\": \"set\"}')") == (
        "step 'not_json' returned a value that is not JSON-serialisable: Type is not JSON serializable: set"
    )
    assert user.fails("df.step('not_json')") == (
        "step 'not_json' returned a value that is not JSON-serialisable: "
        "Type is not JSON serializable: object"
    )
    assert user.fails("df.step('boom')") == "step 'boom' raised ValueError: boom"
    assert "ValueError: boom" in cluster.log()  # logged with its traceback

    # RetryStep: the runtime runs the step again, with backoff, then succeeds ...
    calls = kitchen.parent / "calls.txt"
    ok = user.start(f"df.step('again', {literal({'calls': str(calls), 'retries': 2})})")
    assert user.await_(ok) == "completed"
    assert user.result(ok) == {"runs": 3}
    # ... and gives up after 5 runs, saying so.
    calls.unlink()
    started = time.monotonic()
    message = user.fails(f"df.step('again', {literal({'calls': str(calls), 'retries': 99})})")
    assert message == (
        "not yet (run 5) (step 'again' asked to be retried 5 times; "
        "wrap it in df.retry for a longer retry policy)"
    )
    times = [float(line.split()[1]) for line in calls.read_text().splitlines()]
    assert len(times) == 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= 0.3 for gap in gaps), gaps  # backoff: 0.4, 0.8, 1.6, 3.2 s
    assert gaps[-1] > gaps[0]
    assert time.monotonic() - started < 30
    assert cluster.log().count("the step asked to be retried") >= 4 + 2


# -- loading ------------------------------------------------------------------------------


def test_plugins_command_lists_and_checks(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "kitchen.py", KITCHEN)
    write_plugin(plugins, "_private.py", "raise RuntimeError('files starting with _ are not plugins')\n")
    listed = cli("plugins", "--plugins-dir", str(plugins))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "STEP", "KINDS", "SOURCE", "HOOKS"]
    kitchen_line = next(line for line in lines if line.startswith("kitchen "))
    assert "2.5" in kitchen_line
    assert ", ".join(KITCHEN_KINDS) in kitchen_line
    assert f"file {plugins / 'kitchen.py'}" in kitchen_line
    assert any(line.startswith("sql ") and "builtin" in line for line in lines)

    as_json = json.loads(cli("plugins", "--json", "--plugins-dir", str(plugins)).stdout)
    by_name = {entry["name"]: entry for entry in as_json}
    assert by_name["kitchen"]["version"] == "2.5"
    assert by_name["kitchen"]["step_kinds"] == KITCHEN_KINDS
    assert by_name["kitchen"]["hooks"] == ["durable_register_steps"]
    assert by_name["sql"]["source"] == "builtin"
    assert by_name["core"]["hooks"] == ["durable_run_step"]

    checked = cli("plugins", "--check", "--plugins-dir", str(plugins))
    assert checked.returncode == 0
    assert re.match(r"\d+ plugins loaded; step kinds: again, boom, context, ", checked.stdout)

    disabled = json.loads(
        cli(
            "plugins", "--json", "--plugins-dir", str(plugins), env={"DURABLE_DISABLE_PLUGINS": "kitchen"}
        ).stdout
    )
    assert "kitchen" not in {entry["name"] for entry in disabled}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"broken.py": "def broken(:\n    pass\n"},
            [
                "broken.py failed to import: SyntaxError",
                'broken.py", line 1',
                "Traceback (most recent call last)",
            ],
            id="syntax-error",
        ),
        pytest.param(
            {
                "typo.py": "from durable_cluster import hookimpl\n"
                "@hookimpl\ndef durable_register_stpes(registry):\n    pass\n"
            },
            ["plugin validation failed", "durable_register_stpes"],
            id="misspelled-hook",
        ),
        pytest.param(
            dict.fromkeys(
                ("first.py", "second.py"),
                "from durable_cluster import hookimpl\n"
                "@hookimpl\ndef durable_register_steps(registry):\n    registry.add('dup', lambda ctx: 1)\n",
            ),
            ["step kind 'dup' is registered twice: by", "first", "second"],
            id="registry-conflict",
        ),
    ],
)
def test_plugins_check_fails_with_the_traceback(
    tmp_path: Path, files: dict[str, str], expected: list[str]
) -> None:
    plugins = tmp_path / "plugins"
    for name, text in files.items():
        write_plugin(plugins, name, text)
    checked = cli("plugins", "--check", "--plugins-dir", str(plugins))
    assert checked.returncode == 4, checked.stdout + checked.stderr
    for text in expected:
        assert text in checked.stderr


def test_a_registry_conflict_stops_the_cluster(start_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(
        plugins,
        "mine.py",
        "from durable_cluster import hookimpl\n"
        "@hookimpl\ndef durable_register_steps(registry):\n    registry.add('sql', lambda ctx: 1)\n",
    )
    cluster = start_cluster(workers=2, args=("--plugins-dir", str(plugins)), wait=False)
    assert cluster.process is not None
    assert cluster.process.wait(30) == 4
    assert "step kind 'sql' is registered twice: by mine and by sql" in cluster.log()


@pytest.fixture
def entrypoint_site(tmp_path: Path) -> Path:
    """The fixture distribution, pip-installed into a directory of its own (offline, no setuptools)."""
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(ENTRYPOINT_FIXTURE),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=120,
    )
    assert (site / "dc_entrypoint_example-0.3.1.dist-info" / "entry_points.txt").is_file()
    return site


def test_entry_point_plugins_load_and_can_be_disabled(
    start_cluster: Callable[..., Cluster], entrypoint_site: Path, user: User
) -> None:
    path = os.pathsep.join(filter(None, [str(entrypoint_site), os.environ.get("PYTHONPATH")]))
    listed = json.loads(cli("plugins", "--json", env={"PYTHONPATH": path}).stdout)
    entry = next(entry for entry in listed if entry["name"] == "ep_greeter")
    assert entry["source"] == "entry point (dc-entrypoint-example)"
    assert entry["version"] == "0.3.1"
    assert entry["step_kinds"] == ["ep.hello"]
    # Not installed for anyone else: this test's PYTHONPATH only.
    assert "ep_greeter" not in {e["name"] for e in json.loads(cli("plugins", "--json").stdout)}
    blocked = cli("plugins", "--json", env={"PYTHONPATH": path, "DURABLE_DISABLE_PLUGINS": "ep_greeter"})
    assert "ep_greeter" not in {e["name"] for e in json.loads(blocked.stdout)}

    start_cluster(workers=1, env={"PYTHONPATH": path})
    assert user.run("df.step('ep.hello', '{\"name\": \"pip\"}')") == (
        "completed",
        {"greeting": "hello pip", "from": "entry point"},
    )


# -- the examples of the guide ------------------------------------------------------------


def test_the_example_plugins_of_the_guide(
    start_cluster: Callable[..., Cluster], dsn: str, user: User, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    csv_text = "sku,price\nA1,9.50\nB2,12.00\n"
    (files / "prices.csv").write_text(csv_text)
    (tmp_path / "secret.txt").write_text("not for workflows")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "CREATE TABLE audit_log (idempotency_key text PRIMARY KEY, instance_id text NOT NULL,"
            " event text NOT NULL, detail jsonb NOT NULL DEFAULT '{}',"
            " recorded_at timestamptz NOT NULL DEFAULT now())"
        )
    checked = cli("plugins", "--check", "--plugins-dir", str(EXAMPLES))
    assert checked.returncode == 0, checked.stderr
    assert "audit.record" in checked.stdout
    assert "files.csv_rows" in checked.stdout
    cluster = start_cluster(
        workers=2,
        args=("--plugins-dir", str(EXAMPLES)),
        env={"FILES_DIR": str(files), "AUDIT_DSN": dsn, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    user.conn.execute("CREATE TABLE prices (sku text, price numeric, source_sha256 text)")
    instance = user.start(
        "(df.step('files.sha256', '{\"path\": \"prices.csv\"}') |=> 'sum')"
        " ~> (df.step('files.csv_rows', '{\"path\": \"prices.csv\"}') |=> 'csv')"
        " ~> 'INSERT INTO prices SELECT sku, price::numeric, $sum.sha256 FROM $csv.*'"
        ' ~> df.step(\'audit.record\', \'{"event": "prices imported", "detail": {"file": "$sum.path"}}\')'
    )
    assert user.await_(instance) == "completed", user.error(instance)
    recorded = user.result(instance)
    assert recorded["inserted"] is True
    digest = hashlib.sha256(csv_text.encode()).hexdigest()
    assert user.conn.execute(
        "SELECT sku, price::text, source_sha256 FROM prices ORDER BY sku"
    ).fetchall() == [
        ("A1", "9.50", digest),
        ("B2", "12.00", digest),
    ]
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute("SELECT idempotency_key, instance_id, event, detail FROM audit_log").fetchall()
    assert rows == [(recorded["key"], instance, "prices imported", {"file": "prices.csv"})]

    # The files example refuses paths outside FILES_DIR.
    assert user.fails("df.step('files.sha256', '{\"path\": \"../secret.txt\"}')") == (
        "path '../secret.txt' is outside FILES_DIR"
    )
    # Every worker opened its pool at start, and closes it on a graceful stop.
    assert cluster.log().count("audit pool opening") == 2
    assert cluster.stop() == 0
    wait_for(lambda: cluster.log().count("audit pool closed") == 2, 10, message="both pools closed")


def test_the_unit_test_example_of_the_guide_passes(tmp_path: Path) -> None:
    """The guide's "Testing your plugin" example, run as it is written."""
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    start = guide.index("# tests/test_files_plugin.py")
    code = guide[start : guide.index("```", start)]
    (tmp_path / "test_guide_example.py").write_text(code)
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_guide_example.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(EXAMPLES), "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "3 passed" in ran.stdout
