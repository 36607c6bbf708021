"""Built-in metrics and traces: counts and times every step, checkpoint and instance.

Prometheus: the metrics below live in the worker processes. When the
coordinator runs with ``--metrics`` it points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory before forking, so ``prometheus_client`` writes each worker's
values to memory-mapped files there, and the metrics server process
(:mod:`durable_cluster.metrics`) adds them up at scrape time: counters and
histograms over every process that ever ran (a dead worker's counts stay),
the partitions gauge over live processes only (``livesum``). Without the
directory the values stay in the worker's memory, at no cost.

OpenTelemetry (optional, ``pip install 'durable-cluster[otel]'``): with
``--otel URL`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, each worker exports a
span per step execution over OTLP/HTTP. Every span of an instance has the
same parent, a span id derived from the instance id, in a trace whose id is
derived from it too (:func:`instance_trace_ids`): all steps of an instance
group into one trace whichever worker ran them. Without tracing requested,
nothing from ``opentelemetry`` is imported; requested without the SDK, one
warning and no spans.

Disable the plugin with ``DURABLE_DISABLE_PLUGINS=metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from durable_cluster import hookimpl
from durable_cluster.version import __version__

if TYPE_CHECKING:
    from collections.abc import Awaitable, Generator, Mapping

    from opentelemetry.trace import Span, Tracer, TracerProvider

    from durable_cluster import StepContext

logger = logging.getLogger(__name__)

#: Step latencies run from milliseconds (SQL) to hours (long HTTP calls, sleeps in handlers).
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: A group commit takes about one fsync.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)

# registry=None: not in the process's default registry. In multiprocess mode the values go to
# PROMETHEUS_MULTIPROC_DIR whatever the registry; the metrics server reads them from there.
STEPS_STARTED = Counter(
    "durable_steps_started",
    "Step executions started, by step kind (each attempt, loop iteration and re-run counts).",
    ["kind"],
    registry=None,
)
STEPS_COMPLETED = Counter(
    "durable_steps_completed",
    "Step executions whose handler returned a result, by step kind.",
    ["kind"],
    registry=None,
)
STEPS_FAILED = Counter(
    "durable_steps_failed",
    "Step executions whose handler raised (StepFailed, RetryStep or any other exception), by step kind.",
    ["kind"],
    registry=None,
)
STEPS_CANCELLED = Counter(
    "durable_steps_cancelled",
    "Step executions cancelled (a lost RACE, a cancelled instance, a worker out of time), by step kind.",
    ["kind"],
    registry=None,
)
STEP_SECONDS = Histogram(
    "durable_step_duration_seconds",
    "Seconds a step execution took, from start to its result or error (not cancelled ones), by kind.",
    ["kind"],
    buckets=STEP_BUCKETS,
    registry=None,
)
CHECKPOINT_SECONDS = Histogram(
    "durable_checkpoint_commit_seconds",
    "Seconds each checkpoint transaction (a group commit of the worker's batcher) took.",
    buckets=COMMIT_BUCKETS,
    registry=None,
)
CHECKPOINT_RECORDS = Counter(
    "durable_checkpoint_records",
    "Step and decision records written by checkpoint transactions.",
    registry=None,
)
PARTITIONS_OWNED = Gauge(
    "durable_partitions_owned",
    "Partitions owned by the worker of each slot (live workers only).",
    ["slot"],
    multiprocess_mode="livesum",
    registry=None,
)
INSTANCES_FINISHED = Counter(
    "durable_instances_finished",
    "Instances that reached a terminal status in this cluster's workers, by status (completed, failed).",
    ["status"],
    registry=None,
)

STEP_COUNTERS = (STEPS_STARTED, STEPS_COMPLETED, STEPS_FAILED, STEPS_CANCELLED)
_owned: set[int] = set()  # this worker's partitions


# -- Prometheus --------------------------------------------------------------------------------


def _slot(worker: Any) -> str:
    slot = getattr(worker, "slot", None)
    return "" if slot is None else str(slot)


@hookimpl
def durable_worker_started(worker: Any) -> None:
    # Every series exists from the start at 0, so rate() and alerts work from the first scrape.
    _owned.clear()
    PARTITIONS_OWNED.labels(slot=_slot(worker)).set(0)
    plugins = getattr(worker, "plugins", None)
    for kind in plugins.registry.kinds() if plugins is not None else ():
        for counter in STEP_COUNTERS:
            counter.labels(kind=kind)
        STEP_SECONDS.labels(kind=kind)
    for status in ("completed", "failed"):
        INSTANCES_FINISHED.labels(status=status)
    setup_tracing(getattr(worker, "settings", None), os.environ, slot=getattr(worker, "slot", None))


@hookimpl
def durable_worker_exiting(worker: Any) -> None:
    _owned.clear()
    PARTITIONS_OWNED.labels(slot=_slot(worker)).set(0)
    disable_tracing()


@hookimpl
def durable_partition_claimed(worker: Any, partition: int) -> None:
    _owned.add(partition)
    PARTITIONS_OWNED.labels(slot=_slot(worker)).set(len(_owned))


@hookimpl
def durable_partition_released(worker: Any, partition: int) -> None:
    _owned.discard(partition)
    PARTITIONS_OWNED.labels(slot=_slot(worker)).set(len(_owned))


@hookimpl
def durable_instance_completed(worker: Any, instance_id: str, result: Any) -> None:
    INSTANCES_FINISHED.labels(status="completed").inc()


@hookimpl
def durable_instance_failed(worker: Any, instance_id: str, error: str) -> None:
    INSTANCES_FINISHED.labels(status="failed").inc()


@hookimpl
def durable_checkpoint_committed(worker: Any, records: int, seconds: float) -> None:
    CHECKPOINT_SECONDS.observe(seconds)
    if records:
        CHECKPOINT_RECORDS.inc(records)


@hookimpl(wrapper=True)
def durable_run_step(ctx: StepContext) -> Generator[None, Any, Any]:
    """Wrap the step's awaitable: count it, time it, and trace it when tracing is on."""
    try:
        awaitable = yield
    except Exception:
        # An implementation raised before returning an awaitable: the step ran and failed.
        STEPS_STARTED.labels(kind=ctx.kind).inc()
        STEPS_FAILED.labels(kind=ctx.kind).inc()
        raise
    if not inspect.isawaitable(awaitable):
        return awaitable  # not ours to judge; the engine reports it
    return _observe(ctx, awaitable)


async def _observe(ctx: StepContext, awaitable: Awaitable[Any]) -> Any:
    kind = ctx.kind
    STEPS_STARTED.labels(kind=kind).inc()
    tracing = _tracing
    span = tracing.start(ctx) if tracing is not None else None
    token = tracing.attach(span) if tracing is not None and span is not None else None
    started = time.perf_counter()
    try:
        result = await awaitable
    except asyncio.CancelledError:
        STEPS_CANCELLED.labels(kind=kind).inc()
        if span is not None:
            span.set_attribute("durable.cancelled", True)
        raise
    except Exception as exc:
        STEPS_FAILED.labels(kind=kind).inc()
        STEP_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)
        if span is not None:
            _span_failed(span, exc)
        raise
    else:
        STEPS_COMPLETED.labels(kind=kind).inc()
        STEP_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)
        return result
    finally:
        if tracing is not None and span is not None:
            tracing.detach(token)
            span.end()


# -- OpenTelemetry ------------------------------------------------------------------------------

TRACE_NAMESPACE = b"durable-cluster/instance/"
TRACES_PATH = "/v1/traces"


def instance_trace_ids(instance_id: str) -> tuple[int, int]:
    """The trace id (128 bits) and parent span id (64 bits) of an instance's steps.

    A hash of the instance id, so every worker, on any host, derives the same
    pair: all step spans of an instance land in one trace under one parent.
    """
    digest = hashlib.sha256(TRACE_NAMESPACE + instance_id.encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


class _Tracing:
    """The tracer of this worker and the per-step span plumbing (only built when tracing is on)."""

    def __init__(self, provider: TracerProvider, owned: bool) -> None:
        from opentelemetry import context, trace  # noqa: PLC0415 - only with tracing on

        self.provider = provider
        self.owned = owned  # built by setup_tracing: shut it down at exit
        self.tracer: Tracer = provider.get_tracer("durable_cluster", __version__)
        self._context = context
        self._trace = trace

    def start(self, ctx: StepContext) -> Span:
        trace = self._trace
        trace_id, span_id = instance_trace_ids(ctx.instance_id)
        parent = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)
            )
        )
        return self.tracer.start_span(
            f"step {ctx.kind}",
            context=trace.set_span_in_context(parent),
            kind=trace.SpanKind.INTERNAL,
            attributes={
                "durable.instance_id": ctx.instance_id,
                "durable.node_id": ctx.node_id,
                "durable.step_key": ctx.key,
                "durable.step_kind": ctx.kind,
                "durable.attempt": ctx.attempt,
                "durable.iteration": ctx.iteration,
            },
        )

    def attach(self, span: Span) -> object:
        """Make the step span current (instrumented clients called by the handler nest under it)."""
        return self._context.attach(self._trace.set_span_in_context(span))

    def detach(self, token: Any) -> None:
        if token is not None:
            self._context.detach(token)

    def shutdown(self) -> None:
        if self.owned:
            shutdown = getattr(self.provider, "shutdown", None)
            if shutdown is not None:
                shutdown()


_tracing: _Tracing | None = None
_warned = False


def _span_failed(span: Span, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 - tracing is on

    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def tracing_endpoint(settings: Any, env: Mapping[str, str]) -> str | None:
    """Where traces go: ``--otel``, else the OTLP environment variables; None: tracing is off."""
    endpoint = getattr(settings, "otel", None)
    if endpoint:
        return str(endpoint)
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if env.get(name):
            return ""  # the exporter reads the environment itself
    return None


def traces_url(endpoint: str) -> str:
    """``--otel`` is a base URL like ``OTEL_EXPORTER_OTLP_ENDPOINT``: spans go to ``/v1/traces``."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def setup_tracing(settings: Any, env: Mapping[str, str], *, slot: int | None = None) -> bool:
    """Turn tracing on in this worker when requested and the SDK is installed; True if on."""
    global _warned  # noqa: PLW0603 - one warning per process
    endpoint = tracing_endpoint(settings, env)
    if endpoint is None:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError as exc:
        if not _warned:
            _warned = True
            logger.warning(
                "tracing requested but the OpenTelemetry SDK is missing (%s): "
                "pip install 'durable-cluster[otel]'; running without traces",
                exc,
                extra={"action": "tracing_unavailable"},
            )
        return False
    attributes: dict[str, Any] = {"service.version": __version__}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "durable-cluster"
    if slot is not None:
        attributes["durable.worker.slot"] = slot
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = OTLPSpanExporter(endpoint=traces_url(endpoint)) if endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    enable_tracing(provider, owned=True)
    logger.info(
        "tracing steps to %s",
        traces_url(endpoint) if endpoint else "the OTLP endpoint of the environment",
        extra={"action": "tracing_enabled"},
    )
    return True


def enable_tracing(provider: TracerProvider, *, owned: bool = False) -> None:
    """Trace steps with ``provider`` (tests pass one with an in-memory exporter)."""
    global _tracing  # noqa: PLW0603 - the worker's single tracer
    disable_tracing()
    _tracing = _Tracing(provider, owned)


def disable_tracing() -> None:
    """Stop tracing; flush and shut down a provider built by :func:`setup_tracing`."""
    global _tracing
    tracing, _tracing = _tracing, None
    if tracing is not None:
        try:
            tracing.shutdown()
        except Exception:
            logger.exception("shutting the tracer down failed", extra={"action": "tracing_shutdown_failed"})
