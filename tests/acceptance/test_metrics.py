"""Observability end to end: the Prometheus endpoint scraped and parsed, JSON logs, step traces.

A real cluster runs SQL steps, a failing SQL step and custom steps (a plugin
file in ``--plugins-dir``) with ``--metrics`` and ``--log-format json``; its
``/metrics`` is parsed with ``prometheus_client``'s own parser. The step
wrapper, the trace model and the no-SDK path are checked in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from durable_cluster import StepContext, StepFailed, hookimpl, hookspecs
from durable_cluster import metrics as metrics_server
from durable_cluster.config import Settings
from durable_cluster.context import step_logger
from durable_cluster.errors import ConfigError
from durable_cluster.plugins import metrics as plugin
from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.timeout(240)]

PARTITIONS = 8  # tests/fix_db.py TEST_PARTITIONS

KIT = '''
"""Custom steps for the metrics test."""

from durable_cluster import StepFailed, hookimpl


def greet(ctx):
    ctx.logger.info("greeting %s", ctx.args["name"])
    return {"greeting": "hello " + ctx.args["name"]}


def nope(ctx):
    raise StepFailed("nope, on purpose")


def boom(ctx):
    raise ValueError("boom")


@hookimpl
def durable_register_steps(registry):
    registry.add("greet", greet)
    registry.add("nope", nope)
    registry.add("boom", boom)
'''

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Scrape:
    """One scrape of /metrics, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples: Samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families.values()
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {
            dict(key)[label]: value
            for (sample, key), value in self.samples.items()
            if sample == name and label in dict(key)
        }


def scrape(port: int) -> Scrape:
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    return Scrape(text)


def try_scrape(port: int) -> Scrape | None:
    with contextlib.suppress(OSError):
        return scrape(port)
    return None


class User:
    def __init__(self, make_role: RoleFactory) -> None:
        self.conn = psycopg.connect(make_role.dsn(make_role("met")), autocommit=True)

    def run(self, graph: str) -> tuple[str, str]:
        row = self.conn.execute(sql.SQL("SELECT df.start({})").format(sql.SQL(graph))).fetchone()
        assert row is not None
        instance = str(row[0])
        done = self.conn.execute("SELECT df.await_instance(%s, 60)", (instance,)).fetchone()
        assert done is not None
        return instance, str(done[0])


# -- the endpoint of a running cluster ----------------------------------------------------------


def test_the_metrics_endpoint_counts_steps_instances_checkpoints_partitions_and_restarts(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "kit.py").write_text(textwrap.dedent(KIT))
    port = free_port()
    cluster = start_cluster(
        workers=2,
        args=("--metrics", f"127.0.0.1:{port}", "--plugins-dir", str(plugins), "--log-format", "json"),
    )
    assert f"metrics:  http://127.0.0.1:{port}/metrics" in cluster.output()

    user = User(make_role)
    try:
        outcomes = [user.run("'SELECT 1'") for _ in range(3)]
        outcomes.append(user.run("'SELECT 1/0'"))
        greeted = user.run(
            "df.step('greet', '{\"name\": \"ada\"}') ~> df.step('greet', '{\"name\": \"bo\"}')"
        )
        outcomes.append(greeted)
        outcomes.append(user.run("df.step('nope', '{}')"))
        boom = user.run("df.step('boom', '{}')")
        outcomes.append(boom)
    finally:
        user.conn.close()
    statuses = [status for _, status in outcomes]
    assert statuses == ["completed", "completed", "completed", "failed", "completed", "failed", "failed"]

    # The instance hooks run right after the terminal commit that df.await_instance saw.
    first = wait_for(
        lambda: (
            (s := try_scrape(port)) is not None
            and s.value("durable_instances_finished_total", status="failed") == 3
            and s.value("durable_instances_finished_total", status="completed") == 4
            and s
        ),
        message="the instance counters",
    )

    started = first.by_label("durable_steps_started_total", "kind")
    completed = first.by_label("durable_steps_completed_total", "kind")
    failed = first.by_label("durable_steps_failed_total", "kind")
    cancelled = first.by_label("durable_steps_cancelled_total", "kind")
    # Every registered kind has its series from the start, at 0 when unused.
    assert {"sql", "http", "greet", "nope", "boom"} <= set(started)
    assert (started["sql"], completed["sql"], failed["sql"]) == (4, 3, 1)
    assert (started["greet"], completed["greet"], failed["greet"]) == (2, 2, 0)
    assert (started["nope"], completed["nope"], failed["nope"]) == (1, 0, 1)
    assert (started["boom"], completed["boom"], failed["boom"]) == (1, 0, 1)
    assert (started["http"], completed["http"], failed["http"]) == (0, 0, 0)
    assert set(cancelled.values()) == {0}
    assert first.families["durable_steps_started"].type == "counter"
    latency = first.families["durable_step_duration_seconds"]
    assert latency.type == "histogram"
    assert first.value("durable_step_duration_seconds_count", kind="sql") == 4
    assert first.value("durable_step_duration_seconds_count", kind="greet") == 2
    assert first.value("durable_step_duration_seconds_bucket", kind="sql", le="+Inf") == 4
    assert (first.value("durable_step_duration_seconds_sum", kind="sql") or 0) > 0

    # Group commits: at least the four step results that went through the batcher.
    assert first.families["durable_checkpoint_commit_seconds"].type == "histogram"
    assert (first.value("durable_checkpoint_commit_seconds_count") or 0) >= 1
    assert (first.value("durable_checkpoint_records_total") or 0) >= 4

    owned = first.by_label("durable_partitions_owned", "slot")
    assert set(owned) == {"0", "1"}
    assert sum(owned.values()) == PARTITIONS

    # From the database, at scrape time.
    assert first.value("durable_database_up") == 1
    assert first.value("durable_partitions") == PARTITIONS
    assert first.by_label("durable_instances", "status") == {
        "pending": 0,
        "running": 0,
        "completed": 4,
        "failed": 3,
        "cancelled": 0,
    }
    assert first.value("durable_queue_depth") == 0
    assert first.by_label("durable_runs", "state") == {"due": 0, "in_memory": 0, "scheduled": 0, "waiting": 0}
    assert first.by_label("durable_worker_restarts_total", "slot") == {"0": 0, "1": 0}

    # A worker dies: the coordinator respawns it and counts the restart; the dead worker's
    # counters stay in the totals, its partitions gauge leaves them (livesum over live pids).
    victim = cluster.live_workers()[0]
    os.kill(victim, signal.SIGKILL)
    after = wait_for(
        lambda: (
            (s := try_scrape(port)) is not None
            and sum(s.by_label("durable_worker_restarts_total", "slot").values()) == 1
            and sum(s.by_label("durable_partitions_owned", "slot").values()) == PARTITIONS
            and len(cluster.live_workers()) == 2
            and s
        ),
        timeout=60,
        message="the respawn in the metrics",
    )
    assert after.by_label("durable_steps_completed_total", "kind")["greet"] == 2
    assert after.value("durable_instances_finished_total", status="completed") == 4

    status, body = get(f"http://127.0.0.1:{port}/")
    assert status == 404
    assert "/metrics" in body

    assert cluster.stop() == 0
    log = cluster.log()
    check_json_log(log, greet_instance=greeted[0], boom_instance=boom[0])
    directories = [entry for entry in json_lines(log) if entry["event"] == "metrics_directory"]
    assert len(directories) == 1
    assert not Path(directories[0]["path"]).exists(), "the coordinator removes its metrics directory"
    with pytest.raises(urllib.error.URLError):
        scrape(port)  # the metrics server stopped with the cluster


def json_lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.strip()]


def check_json_log(log: str, *, greet_instance: str, boom_instance: str) -> None:
    """Every line is a JSON object with the fixed fields; step lines carry instance and node."""
    lines = json_lines(log)  # raises on any line that is not JSON
    for entry in lines:
        assert {"ts", "level", "logger", "pid", "event", "message"} <= set(entry), entry
        assert isinstance(entry["event"], str)
        assert entry["event"]
    events = {entry["event"] for entry in lines}
    assert {
        "cluster_started",
        "worker_started",
        "metrics_started",
        "metrics_listening",
        "instance_completed",
        "instance_failed",
        "worker_respawned",
        "cluster_stopped",
    } <= events

    greetings = [entry for entry in lines if entry["logger"] == "durable_cluster.step.greet"]
    assert [entry["message"] for entry in greetings] == ["greeting ada", "greeting bo"]
    for entry in greetings:
        assert entry["event"] == "greeting"
        assert entry["instance_id"] == greet_instance
        assert entry["step_key"].endswith("/" + entry["node_id"])
    assert greetings[0]["node_id"] != greetings[1]["node_id"]

    (error,) = [entry for entry in lines if entry["event"] == "step_error"]
    assert error["instance_id"] == boom_instance
    assert error["step_key"].endswith("/" + error["node_id"])
    assert "ValueError: boom" in error["exc"]

    spawned = [entry for entry in lines if entry["event"] == "worker_spawned"]
    assert len(spawned) == 2
    assert all(entry["child_pid"] != entry["pid"] for entry in spawned)


def test_a_bad_metrics_address_stops_start_before_anything_runs(dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "durable_cluster", "start", "--dsn", dsn, "--metrics", "localhost:http"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "--metrics / --bind: expected HOST:PORT, not 'localhost:http'" in done.stderr


# -- the standalone command ---------------------------------------------------------------------


@pytest.fixture
def standalone(dsn: str, tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[str], int]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*, multiproc_dir: Path | None = None, dsn_: str = dsn) -> tuple[subprocess.Popen[str], int]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DURABLE_DSN", metrics_server.ENV)}
        if multiproc_dir is not None:
            env[metrics_server.ENV] = str(multiproc_dir)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "durable_cluster",
                "metrics",
                "--bind",
                f"127.0.0.1:{port}",
                "--dsn",
                dsn_,
                "--log-format",
                "json",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        started.append(server)
        wait_for(lambda: server.poll() is not None or try_scrape(port), message="the metrics server")
        assert server.poll() is None
        return server, port

    yield start
    for server in started:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        if server.stderr is not None:
            server.stderr.close()


def test_the_standalone_metrics_command_serves_the_database_gauges(
    standalone: Callable[..., tuple[subprocess.Popen[str], int]], tmp_path: Path
) -> None:
    server, port = standalone()
    first = scrape(port)
    assert first.value("durable_database_up") == 1
    assert first.value("durable_partitions") == PARTITIONS
    assert first.value("durable_instances", status="completed") == 0
    assert first.value("durable_queue_depth") == 0
    assert "durable_steps_started" not in first.families  # no PROMETHEUS_MULTIPROC_DIR given
    server.send_signal(signal.SIGTERM)
    assert server.wait(15) == 0
    assert server.stderr is not None
    events = [json.loads(line)["event"] for line in server.stderr.read().splitlines()]
    assert "metrics_listening" in events

    # Given a cluster's directory, it reads the workers' files and the coordinator's counts.
    directory = tmp_path / "multiproc"
    directory.mkdir()
    metrics_server.write_state(directory, cluster_id="c", restarts={0: 2, 1: 0})
    _, port = standalone(multiproc_dir=directory)
    assert scrape(port).by_label("durable_worker_restarts_total", "slot") == {"0": 2, "1": 0}


def test_a_scrape_while_the_database_is_unreachable_says_so(tmp_path: Path) -> None:
    collector = metrics_server.DatabaseCollector(f"host={tmp_path} port=1 dbname=none connect_timeout=2")
    registry = CollectorRegistry()
    registry.register(collector)
    assert registry.get_sample_value("durable_database_up") == 0
    assert registry.get_sample_value("durable_queue_depth") is None
    collector.close()


def test_the_coordinator_keeps_the_multiprocess_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh directory before the fork, live gauges of reaped workers dropped, restarts counted."""
    from durable_cluster.coordinator import Coordinator

    monkeypatch.delenv(metrics_server.ENV, raising=False)
    off = Coordinator(Settings(workers=2), lambda spec: 0)
    off.setup_metrics_dir()
    assert off.metrics_dir is None  # no --metrics, no PROMETHEUS_MULTIPROC_DIR: nothing to do
    off.metrics_process_dead(1)
    off.count_restart(0)

    coordinator = Coordinator(Settings(workers=2), lambda spec: 0, metrics=("/bin/true",))
    coordinator.setup_metrics_dir()
    try:
        directory = Path(coordinator.metrics_dir or "")
        assert directory.is_dir()
        assert os.environ[metrics_server.ENV] == str(directory)
        state = json.loads((directory / metrics_server.STATE_FILE).read_text())
        assert state == {"cluster_id": coordinator.cluster_id, "restarts": {"0": 0, "1": 0}}
        for name in ("gauge_livesum_4321.db", "counter_4321.db", "gauge_livesum_4322.db"):
            (directory / name).write_bytes(b"")
        coordinator.metrics_process_dead(4321)
        assert sorted(p.name for p in directory.glob("*.db")) == ["counter_4321.db", "gauge_livesum_4322.db"]
        coordinator.count_restart(1)
        coordinator.count_restart(1)
        state = json.loads((directory / metrics_server.STATE_FILE).read_text())
        assert state["restarts"] == {"0": 0, "1": 2}
    finally:
        coordinator.remove_metrics_dir()
    assert not directory.exists()
    assert metrics_server.ENV not in os.environ


def test_a_given_multiprocess_directory_is_emptied_and_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from durable_cluster.coordinator import Coordinator

    (tmp_path / "counter_1.db").write_bytes(b"")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv(metrics_server.ENV, str(tmp_path))
    coordinator = Coordinator(Settings(workers=1), lambda spec: 0)  # no --metrics: a standalone server
    coordinator.setup_metrics_dir()
    assert coordinator.metrics_dir == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [metrics_server.STATE_FILE, "keep.txt"]
    coordinator.remove_metrics_dir()
    assert tmp_path.is_dir()
    assert os.environ[metrics_server.ENV] == str(tmp_path)


def test_bind_addresses_are_parsed_loopback_first() -> None:
    assert metrics_server.parse_bind("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert metrics_server.parse_bind("9464") == ("127.0.0.1", 9464)
    assert metrics_server.parse_bind(":9464") == ("127.0.0.1", 9464)
    assert metrics_server.parse_bind("[::1]:9464") == ("::1", 9464)
    assert metrics_server.parse_bind("0.0.0.0:80") == ("0.0.0.0", 80)
    for bad in ("", "host", "host:", "h:0", "h:70000", "[::1]", "[::1]9464"):
        with pytest.raises(ConfigError):
            metrics_server.parse_bind(bad)


# -- the step wrapper, in-process ---------------------------------------------------------------


class Core:
    """Stands in for the built-in core: runs ``ctx.handler``."""

    @hookimpl(trylast=True)
    def durable_run_step(self, ctx: StepContext) -> Any:
        handler = ctx.handler
        assert handler is not None
        return handler(ctx)


def manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name="metrics")
    pm.register(Core(), name="core")
    return pm


def context(kind: str, handler: Callable[[StepContext], Any], instance_id: str = "0badcafe") -> StepContext:
    key = f"{instance_id}::1/a1b2c3d4"
    return StepContext(
        instance_id=instance_id,
        node_id="a1b2c3d4",
        key=key,
        kind=kind,
        args={},
        attempt=2,
        iteration=0,
        label=None,
        variables={},
        results={},
        submitted_by="someone",
        database=None,
        partition=0,
        logger=step_logger(f"durable_cluster.step.{kind}", instance_id, "a1b2c3d4", key),
        handler=handler,
    )


def run(pm: pluggy.PluginManager, ctx: StepContext) -> Any:
    async def go() -> Any:
        return await pm.hook.durable_run_step(ctx=ctx)

    return asyncio.run(go())


def registry_of_the_plugin() -> CollectorRegistry:
    registry = CollectorRegistry()
    for metric in (*plugin.STEP_COUNTERS, plugin.STEP_SECONDS):
        registry.register(metric)
    return registry


def test_the_wrapper_counts_completed_failed_and_cancelled_steps() -> None:
    kind = f"k{time.monotonic_ns()}"  # counters live as long as this process
    pm = manager()

    async def ok(ctx: StepContext) -> Any:
        return {"ok": True}

    async def fails(ctx: StepContext) -> Any:
        raise StepFailed("no")

    def raises(ctx: StepContext) -> Any:
        raise RuntimeError("before any awaitable")

    async def cancelled(ctx: StepContext) -> Any:
        raise asyncio.CancelledError

    assert run(pm, context(kind, ok)) == {"ok": True}
    with pytest.raises(StepFailed):
        run(pm, context(kind, fails))
    with pytest.raises(RuntimeError):
        run(pm, context(kind, raises))
    with pytest.raises(asyncio.CancelledError):
        run(pm, context(kind, cancelled))
    registry = registry_of_the_plugin()

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {"kind": kind})

    assert value("durable_steps_started_total") == 4
    assert value("durable_steps_completed_total") == 1
    assert value("durable_steps_failed_total") == 2
    assert value("durable_steps_cancelled_total") == 1
    assert value("durable_step_duration_seconds_count") == 2  # completed and failed in the awaitable


# -- traces -------------------------------------------------------------------------------------


def test_trace_ids_come_from_the_instance_id() -> None:
    trace_id, span_id = plugin.instance_trace_ids("0badcafe")
    digest = hashlib.sha256(b"durable-cluster/instance/0badcafe").digest()
    assert trace_id == int.from_bytes(digest[:16], "big")
    assert span_id == int.from_bytes(digest[16:24], "big")
    assert (trace_id, span_id) == plugin.instance_trace_ids("0badcafe")  # any worker, any host
    assert plugin.instance_trace_ids("0badcafd")[0] != trace_id
    assert 0 < trace_id < 2**128
    assert 0 < span_id < 2**64


def test_each_step_is_a_span_under_its_instance() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: list[int] = []

    async def ok(ctx: StepContext) -> Any:
        seen.append(trace.get_current_span().get_span_context().trace_id)  # the handler runs in the span
        return 1

    async def fails(ctx: StepContext) -> Any:
        raise StepFailed("no luck")

    pm = manager()
    plugin.enable_tracing(provider)
    try:
        run(pm, context("sql", ok, "0badcafe"))
        with pytest.raises(StepFailed):
            run(pm, context("nope", fails, "0badcafe"))
        run(pm, context("sql", ok, "12345678"))
    finally:
        plugin.disable_tracing()
    run(pm, context("sql", ok, "0badcafe"))  # tracing off: no span

    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["step sql", "step nope", "step sql"]
    trace_id, parent_id = plugin.instance_trace_ids("0badcafe")
    first, second, other = spans
    for span in (first, second):
        assert span.context is not None
        assert span.context.trace_id == trace_id
        assert span.parent is not None
        assert span.parent.span_id == parent_id
        assert span.parent.is_remote
    assert other.context is not None
    assert other.context.trace_id == plugin.instance_trace_ids("12345678")[0]
    assert seen[0] == trace_id
    assert dict(first.attributes or {}) == {
        "durable.instance_id": "0badcafe",
        "durable.node_id": "a1b2c3d4",
        "durable.step_key": "0badcafe::1/a1b2c3d4",
        "durable.step_kind": "sql",
        "durable.attempt": 2,
        "durable.iteration": 0,
    }
    assert first.status.status_code == StatusCode.UNSET
    assert second.status.status_code == StatusCode.ERROR
    assert "StepFailed: no luck" in (second.status.description or "")
    assert [event.name for event in second.events] == ["exception"]


def test_tracing_is_requested_by_otel_or_the_otlp_environment() -> None:
    assert plugin.tracing_endpoint(Settings(), {}) is None
    assert plugin.tracing_endpoint(Settings(otel="http://collector:4318"), {}) == "http://collector:4318"
    assert plugin.tracing_endpoint(Settings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == ""
    assert plugin.tracing_endpoint(Settings(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/t"}) == ""
    assert plugin.traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert plugin.traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"
    assert plugin.setup_tracing(Settings(), {}) is False


def test_tracing_with_the_sdk_builds_an_otlp_exporter(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "durable_cluster.plugins.metrics")
    try:
        assert plugin.setup_tracing(Settings(otel="http://127.0.0.1:9"), {}, slot=3) is True
        assert plugin._tracing is not None
        resource = plugin._tracing.provider.resource
        assert resource.attributes["service.name"] == "durable-cluster"
        assert resource.attributes["durable.worker.slot"] == 3
    finally:
        plugin.disable_tracing()  # nothing was recorded: the shutdown sends nothing
    assert plugin._tracing is None
    assert "tracing steps to http://127.0.0.1:9/v1/traces" in caplog.text


def test_without_the_sdk_tracing_warns_once_and_steps_still_run() -> None:
    code = textwrap.dedent(
        """
        import asyncio, logging, sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from durable_cluster import pluginmanager
        from durable_cluster.config import Settings
        from durable_cluster.plugins import metrics
        plugins = pluginmanager.build()
        print("imported:", sorted(m for m in sys.modules if m.startswith("opentelemetry.")))
        for _ in range(2):
            print("on:", metrics.setup_tracing(Settings(otel="http://127.0.0.1:9"), {}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["imported: []", "on: False", "on: False"]
    assert done.stderr.count("the OpenTelemetry SDK is missing") == 1


def test_the_plugin_imports_nothing_from_opentelemetry_unless_tracing_is_on() -> None:
    code = (
        "import sys; from durable_cluster import pluginmanager; pluginmanager.build(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry'))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
