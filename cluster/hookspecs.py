"""The hooks of durable-cluster: the plugin author's contract.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose
names are the hooks below; it may take fewer arguments than the spec. It
arrives as a built-in (``durable_cluster.plugins``), through the
``durable_cluster`` entry-point group::

    # pyproject.toml of your distribution
    [project.entry-points.durable_cluster]
    checksums = "my_package.checksums"

or as a file in ``--plugins-dir``. The smallest useful plugin::

    from durable_cluster import hookimpl

    async def noop(ctx):
        return {"ok": True}

    @hookimpl
    def durable_register_steps(registry):
        registry.add("noop", noop)

and in SQL: ``SELECT df.start(df.step('noop') |=> 'r' ~> 'SELECT $r.ok')``.

Every hook runs in a worker process, never in the coordinator, and outside
any checkpoint transaction unless its docstring says otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .context import StepContext
    from .registry import StepRegistry

PROJECT = "durable_cluster"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def durable_register_steps(registry: StepRegistry) -> None:
    """Register step kinds: ``registry.add(kind, handler)``.

    Called in: each worker, once per boot, after all plugins are loaded and
    before any partition is claimed. Registering a kind another plugin has
    registered raises :class:`~durable_cluster.StepKindConflict` and the
    cluster refuses to start.

    A handler receives a :class:`~durable_cluster.StepContext` and returns a
    JSON-serialisable value (or an awaitable of one); synchronous handlers
    run in a thread pool. Raise :class:`~durable_cluster.StepFailed` to fail
    the step with a message. A handler must be safe to run again for the same
    ``ctx.key``: a worker that dies mid-step re-runs it (use
    ``ctx.idempotency_key`` for external effects), unless it records its
    result inside its own transaction with ``ctx.commit_with_checkpoint``.

    :param registry: the worker's :class:`~durable_cluster.StepRegistry`.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def durable_run_step(ctx: StepContext) -> Any:
    """Run one step; return an awaitable of its JSON result.

    Called in: a worker, once per step execution, outside the checkpoint
    transaction (the result is checkpointed after the awaitable resolves,
    unless the handler recorded it itself with
    ``ctx.commit_with_checkpoint``, which puts the checkpoint *inside* the
    step's own transaction). The built-in implementation, registered last,
    looks the kind up in the registry and calls its handler. Wrap it with
    ``@hookimpl(wrapper=True)`` to add timing, tracing or error
    classification: ``coro = yield`` gives the awaitable to wrap.

    :param ctx: the step.
    :return: an awaitable resolving to the step's result.

    .. versionadded:: 0.1
    """


@hookspec
def durable_worker_started(worker: Any) -> None:
    """A worker booted and is about to claim partitions.

    Called in: the worker, once per boot, after ``durable_register_steps``.

    :param worker: the :class:`~durable_cluster.worker.Worker` (``slot``,
        ``generation``, ``worker_id``).

    .. versionadded:: 0.1
    """


@hookspec
def durable_worker_exiting(worker: Any) -> None:
    """A worker is stopping (graceful stop, rolling restart or reload).

    Called in: the worker, once, after in-flight steps finished and
    partitions were released, before its connections close.

    :param worker: the :class:`~durable_cluster.worker.Worker`.

    .. versionadded:: 0.1
    """


@hookspec
def durable_partition_claimed(worker: Any, partition: int) -> None:
    """The worker now owns ``partition`` (its epoch was bumped).

    Called in: the worker, after the claim transaction committed and before
    the partition's instances are loaded.

    :param worker: the :class:`~durable_cluster.worker.Worker`.
    :param partition: the partition number.

    .. versionadded:: 0.1
    """


@hookspec
def durable_partition_released(worker: Any, partition: int) -> None:
    """The worker no longer owns ``partition`` (released, or lost to another worker).

    Called in: the worker, after its lock was released or found lost.

    :param worker: the :class:`~durable_cluster.worker.Worker`.
    :param partition: the partition number.

    .. versionadded:: 0.1
    """


@hookspec
def durable_instance_completed(worker: Any, instance_id: str, result: Any) -> None:
    """An instance completed.

    Called in: the worker that ran its last step, after the terminal status
    committed (outside the transaction).

    :param worker: the :class:`~durable_cluster.worker.Worker`.
    :param instance_id: the instance.
    :param result: the root node's result (JSON value).

    .. versionadded:: 0.1
    """


@hookspec
def durable_instance_failed(worker: Any, instance_id: str, error: str) -> None:
    """An instance failed.

    Called in: the worker, after the terminal status committed.

    :param worker: the :class:`~durable_cluster.worker.Worker`.
    :param instance_id: the instance.
    :param error: the error message stored as the root node's result.

    .. versionadded:: 0.1
    """
