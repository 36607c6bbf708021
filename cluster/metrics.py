"""The Prometheus endpoint: a small HTTP server in a process of its own.

``durable-cluster start --metrics 127.0.0.1:9464`` makes the coordinator
start it (``posix_spawn``, a :class:`~durable_cluster.coordinator.Helper` like the
reload watcher), and
``durable-cluster metrics --bind 127.0.0.1:9464`` runs it on its own. Each
scrape of ``/metrics`` adds up:

* the workers' counters, histograms and gauges (:mod:`durable_cluster.plugins.metrics`),
  read from ``PROMETHEUS_MULTIPROC_DIR`` with ``prometheus_client``'s
  multiprocess collector: the coordinator creates that directory before it
  forks and removes a dead worker's live gauges (``mark_process_dead``);
* the coordinator's worker restarts, from ``coordinator.json`` in the same
  directory (:func:`write_state`);
* gauges read from the database at scrape time (:class:`DatabaseCollector`):
  instances by status, the run queue, the partition count. One connection,
  made like the workers' own (``search_path`` pinned), with a short
  ``statement_timeout``; a scrape while the database is down still answers,
  with ``durable_database_up 0``.

The standalone command reads the workers' values only when it is given the
cluster's ``PROMETHEUS_MULTIPROC_DIR`` (the coordinator then uses that
directory instead of a temporary one); otherwise it serves the database
gauges alone.

``prometheus_client`` picks its multiprocess mode when it is first imported,
from the environment. The coordinator imports this module to build the
server's command line before it sets ``PROMETHEUS_MULTIPROC_DIR``, and its
workers are forked from it: so nothing here imports ``prometheus_client`` at
module level.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import urlsplit

import psycopg

from . import db, process
from .errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

__all__ = [
    "DEFAULT_BIND",
    "ENV",
    "STATE_FILE",
    "CoordinatorCollector",
    "DatabaseCollector",
    "build_registry",
    "clear_directory",
    "command",
    "parse_bind",
    "serve",
    "write_state",
]

log = logging.getLogger("durable_cluster.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_BIND = "127.0.0.1:9464"
STATE_FILE = "coordinator.json"  # the coordinator's counters, next to the workers' *.db files
STATEMENT_TIMEOUT_MS = 5000  # a scrape never waits long on the database
COLLECT_ATTEMPTS = 3  # encodings tried when a worker's file vanishes mid-scrape
PARENT_POLL = 1.0  # seconds between checks that the coordinator lives
INSTANCE_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
RUN_STATES = ("due", "in_memory", "scheduled", "waiting")


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``:PORT`` or ``PORT`` (loopback) -> (host, port)."""
    raw = text.strip()
    if raw.startswith("["):
        host, bracket, rest = raw[1:].partition("]")
        port_text = rest.removeprefix(":") if bracket and rest.startswith(":") else ""
    elif ":" in raw:
        host, _, port_text = raw.rpartition(":")
    else:
        host, port_text = "", raw
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--metrics / --bind: expected HOST:PORT, not {text!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"--metrics / --bind: port {port} is out of range (1-65535)")
    return host or "127.0.0.1", port


def command(*, bind: str, coordinator_pid: int, log_level: str, log_format: str) -> list[str]:
    """The metrics server's argv for the coordinator's ``posix_spawn`` (interpreter first).

    The DSN is not on the command line (``ps`` shows it to everyone): the
    coordinator passes it in ``DURABLE_DSN``.
    """
    parse_bind(bind)
    return [
        sys.executable,
        "-m",
        "durable_cluster",
        "metrics",
        "--bind",
        bind,
        "--parent-pid",
        str(coordinator_pid),
        "--log-level",
        log_level,
        "--log-format",
        log_format,
    ]


# -- the coordinator's side ------------------------------------------------------------------


def clear_directory(directory: str | os.PathLike[str]) -> None:
    """Remove a previous run's values (``prometheus_client`` asks for a fresh directory per run)."""
    path = Path(directory)
    for stale in [*path.glob("*.db"), path / STATE_FILE]:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def write_state(directory: str | os.PathLike[str], *, cluster_id: str, restarts: Mapping[int, int]) -> None:
    """Write the coordinator's counters atomically (the server may read at any moment)."""
    path = Path(directory) / STATE_FILE
    data = {"cluster_id": cluster_id, "restarts": {str(slot): n for slot, n in sorted(restarts.items())}}
    temporary = path.with_name(f".{STATE_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


# -- collectors ------------------------------------------------------------------------------


class CoordinatorCollector:
    """``durable_worker_restarts_total{slot}`` from the coordinator's ``coordinator.json``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / STATE_FILE

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415 - see the module doc

        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        restarts = CounterMetricFamily(
            "durable_worker_restarts",
            "Workers respawned by the coordinator after an unexpected exit (crash, kill), by slot.",
            labels=["slot"],
        )
        found = data.get("restarts") if isinstance(data, dict) else None
        for slot, count in sorted((found or {}).items(), key=lambda item: int(item[0])):
            restarts.add_metric([str(slot)], float(count))
        yield restarts


class DatabaseCollector:
    """Gauges read from the database at scrape time, on one connection kept between scrapes."""

    def __init__(self, dsn: str, *, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> None:
        self.conninfo = db.conninfo(db.runtime_conninfo(dsn), application_name="durable-cluster metrics")
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # scrapes run in threads; one query at a time
        self._failing = False

    def describe(self) -> list[Metric]:
        return []  # no query when registered

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.conninfo, autocommit=True)
            conn.execute(f"SET statement_timeout = {int(self.statement_timeout_ms)}")
            self._conn = conn
        return self._conn

    def read(self) -> dict[str, Any]:
        """The raw numbers: instances by status, runs by state, the partition count."""
        with self._lock:
            try:
                conn = self._connection()
                statuses = {
                    str(status): int(count)
                    for status, count in conn.execute(
                        "SELECT status, count(*) FROM df.instances WHERE status IS NOT NULL GROUP BY status"
                    ).fetchall()
                }
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE wake_at <= now()),"
                    " count(*) FILTER (WHERE wake_at = 'infinity'),"
                    " count(*) FILTER (WHERE wake_at > now() AND wake_at <> 'infinity'),"
                    " count(*) FILTER (WHERE wake_at IS NULL)"
                    " FROM durable.runs"
                ).fetchone()
                partitions = conn.execute(
                    "SELECT value::int FROM durable.settings WHERE name = 'partitions'"
                ).fetchone()
            except psycopg.Error:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise
        runs = dict(zip(RUN_STATES, (int(v) for v in row or (0, 0, 0, 0)), strict=True))
        return {
            "instances": statuses,
            "runs": runs,
            "partitions": int(partitions[0]) if partitions else None,
        }

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 - see the module doc

        up = GaugeMetricFamily(
            "durable_database_up", "1 if the metrics server could read the database at this scrape, else 0."
        )
        try:
            numbers = self.read()
        except psycopg.Error as exc:
            if not self._failing:
                log.warning(
                    "metrics: cannot read the database: %s",
                    db.primary_message(exc),
                    extra={"action": "metrics_database_failed"},
                )
            self._failing = True
            up.add_metric([], 0)
            yield up
            return
        if self._failing:
            log.info("metrics: the database is readable again", extra={"action": "metrics_database_ok"})
        self._failing = False
        up.add_metric([], 1)
        yield up
        instances = GaugeMetricFamily(
            "durable_instances", "Instances in df.instances, by status.", labels=["status"]
        )
        statuses: dict[str, int] = numbers["instances"]
        for status in (*INSTANCE_STATUSES, *sorted(set(statuses) - set(INSTANCE_STATUSES))):
            instances.add_metric([status], statuses.get(status, 0))
        yield instances
        runs: dict[str, int] = numbers["runs"]
        queue = GaugeMetricFamily(
            "durable_queue_depth",
            "Instances due to run that no worker has in memory yet (durable.runs.wake_at <= now()).",
        )
        queue.add_metric([], runs["due"])
        yield queue
        by_state = GaugeMetricFamily(
            "durable_runs",
            "Non-terminal instances by state: due (waiting for a worker), in_memory (held by a worker), "
            "scheduled (parked until a timer), waiting (parked until a signal or a cancel).",
            labels=["state"],
        )
        for state in RUN_STATES:
            by_state.add_metric([state], runs[state])
        yield by_state
        if numbers["partitions"] is not None:
            partitions = GaugeMetricFamily("durable_partitions", "Partitions of the schema (fixed at init).")
            partitions.add_metric([], numbers["partitions"])
            yield partitions


def build_registry(
    dsn: str | None, multiproc_dir: str | None
) -> tuple[CollectorRegistry, DatabaseCollector | None]:
    """A registry with the workers' values (when ``multiproc_dir``) and the database gauges (when ``dsn``)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - see the module doc
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    registry = CollectorRegistry()
    if multiproc_dir:
        MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
        registry.register(cast("Collector", CoordinatorCollector(multiproc_dir)))
    database = DatabaseCollector(dsn) if dsn else None
    if database is not None:
        registry.register(cast("Collector", database))
    return registry, database


# -- the HTTP server -------------------------------------------------------------------------


class MetricsHandler(BaseHTTPRequestHandler):
    """``GET /metrics``: the registry in the format the scraper accepts; anything else 404."""

    registry: ClassVar[Any] = None
    server_version = "durable-cluster-metrics"

    def do_GET(self) -> None:
        from prometheus_client.exposition import choose_encoder  # noqa: PLC0415 - see the module doc

        path = urlsplit(self.path).path
        if path not in ("/metrics", "/metrics/"):
            self._reply(404, b"durable-cluster: the metrics are at /metrics\n", "text/plain; charset=utf-8")
            return
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            body = self._collect(encoder)
        except Exception:
            log.exception("metrics: a collector failed", extra={"action": "metrics_scrape_failed"})
            self._reply(500, b"collecting the metrics failed; see the server log\n", "text/plain")
            return
        self._reply(200, body, content_type)

    def _collect(self, encoder: Any) -> bytes:
        """Encode the registry; a dead worker's files vanish between listing and reading: try again."""
        for _ in range(COLLECT_ATTEMPTS - 1):
            try:
                body: bytes = encoder(self.registry)
            except FileNotFoundError:
                continue
            return body
        last: bytes = encoder(self.registry)
        return last

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args, extra={"action": "metrics_request"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(host: str, port: int, registry: CollectorRegistry) -> ThreadingHTTPServer:
    """Bind ``host:port`` (IPv6 when the host is an IPv6 address) and serve ``registry``."""
    handler = type("Handler", (MetricsHandler,), {"registry": registry})
    server_class = _Server6 if ":" in host else _Server
    return server_class((host, port), handler)


def serve(
    bind: str,
    *,
    dsn: str | None,
    multiproc_dir: str | None,
    parent_pid: int | None = None,
) -> int:
    """Run the metrics server until SIGTERM (or SIGINT standalone, or the coordinator's death)."""
    host, port = parse_bind(bind)
    process.set_process_title("durable-cluster: metrics")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    if parent_pid is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the coordinator
        process.set_parent_death_signal(signal.SIGTERM)
        if not process.parent_alive(parent_pid):
            return 0
    else:
        signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    if multiproc_dir and not Path(multiproc_dir).is_dir():
        log.warning(
            "metrics: %s=%s is not a directory; serving the database gauges only",
            ENV,
            multiproc_dir,
            extra={"action": "metrics_no_directory"},
        )
        multiproc_dir = None
    registry, database = build_registry(dsn, multiproc_dir)
    try:
        server = make_server(host, port, registry)
    except OSError as exc:
        log.error(
            "metrics: cannot listen on %s: %s",
            bind,
            exc,
            extra={"action": "metrics_bind_failed", "bind": bind},
        )
        return 2
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "metrics: serving http://%s:%d/metrics%s",
        shown,
        port,
        "" if multiproc_dir else " (database gauges only: no PROMETHEUS_MULTIPROC_DIR)",
        extra={"action": "metrics_listening", "bind": f"{shown}:{port}"},
    )
    try:
        while not stop.wait(PARENT_POLL):
            if parent_pid is not None and not process.parent_alive(parent_pid):
                log.info("metrics: the coordinator is gone; stopping", extra={"action": "metrics_stopped"})
                break
    finally:
        server.shutdown()
        server.server_close()
        if database is not None:
            database.close()
    return 0
