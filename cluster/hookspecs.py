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
any checkpoint transaction unless its docstring says otherwise. Each
docstring says who calls the hook (``Called by``), in which process
(``Called in``) and where it stands with transactions (``Transaction``);
``docs/hooks.md`` has a section per hook, and a test keeps the two in step.
The plugin author's guide is ``docs/plugins.md``.
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
    """Register step kinds: ``registry.add(kind, handler, description=...)``.

    Called by: the plugin manager, right after it has loaded every plugin,
    once per plugin that implements the hook (so a conflict can name both
    plugins).
    Called in: each worker process, once per boot, after the fork and before
    the worker connects to the database; also in the short-lived processes of
    ``durable-cluster plugins`` and of the reload watcher's check. Keep it free
    of side effects: open connections and threads in
    :func:`durable_worker_started`, not here.
    Transaction: none (no database connection exists yet).

    Registering a kind that another plugin registered raises
    :class:`~durable_cluster.StepKindConflict` and the cluster refuses to
    start (a worker exits 4). Kinds are lower case, ``[a-z][a-z0-9_.-]*``, at
    most 63 characters.

    The handler contract: a handler receives a
    :class:`~durable_cluster.StepContext` and returns a value orjson can
    serialise (or an awaitable of one); anything else fails the step with a
    clear message. ``async def`` handlers run on the worker's event loop;
    plain functions run in a thread pool so they cannot block it. Raise
    :class:`~durable_cluster.StepFailed` to fail the step with a message (a
    ``df.retry`` around the step then retries it), or
    :class:`~durable_cluster.RetryStep` to have the runtime run it again
    (at most 5 runs in all, with backoff); any other exception fails the
    step with its type and message. A handler must be safe to run again for the
    same ``ctx.key``: a worker that dies mid-step re-runs it (use
    ``ctx.idempotency_key`` for external effects), unless it records its
    result inside its own transaction with ``ctx.commit_with_checkpoint``.

    :param registry: the worker's :class:`~durable_cluster.StepRegistry`.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def durable_run_step(ctx: StepContext) -> Any:
    """Run one step; return an awaitable of its JSON result.

    Called by: the worker's engine, once per execution of a step: every
    attempt inside ``df.retry``, every iteration of a loop, every run again
    after a crash or a :class:`~durable_cluster.RetryStep`.
    Called in: a worker process, on its event loop; the awaitable is awaited
    there too (synchronous handlers are sent to a thread pool by the
    built-in implementation).
    Transaction: outside the checkpoint transaction. The result is
    checkpointed after the awaitable resolves, in a transaction of the
    runtime's own. A handler that opens a transaction on ``ctx.connection()``
    may call ``ctx.commit_with_checkpoint`` to record its result *inside*
    that transaction instead (exactly once, as the built-in SQL step does).

    ``firstresult``: the first implementation that returns something other
    than ``None`` wins. The built-in implementation, registered last
    (``trylast``), looks the kind up in the registry and calls its handler.
    Wrap it with ``@hookimpl(wrapper=True)`` to add timing, tracing or error
    classification: ``awaitable = yield`` gives the awaitable to wrap, and
    the wrapper returns its replacement.

    :param ctx: the step: :class:`~durable_cluster.StepContext`.
    :return: an awaitable resolving to the step's result (a JSON value).

    .. versionadded:: 0.1
    """


@hookspec
def durable_worker_started(worker: Any) -> None:
    """A worker booted and is about to claim partitions: open per-worker resources here.

    Called by: the worker's main coroutine, once per boot, after
    ``durable_register_steps`` and after the runtime's own pool was created.
    Called in: the worker process, on its running event loop (this hook is
    synchronous: schedule async set-up with
    ``asyncio.get_running_loop().create_task(...)``, or open lazily on first
    use). Never in the coordinator.
    Transaction: none.

    Each rolling restart (SIGHUP, ``--reload``) boots new workers, so this
    runs again with the plugins' new code.

    :param worker: the :class:`~durable_cluster.worker.Worker` (``slot``,
        ``generation``, ``worker_id``, ``settings``).

    .. versionadded:: 0.1
    """


@hookspec
def durable_worker_exiting(worker: Any) -> None:
    """A worker is stopping gracefully (stop, rolling restart, reload, scale-down): close resources.

    Called by: the worker's main coroutine, once, after its in-flight steps
    finished and were checkpointed and its partitions were released, before
    the runtime's own connections close.
    Called in: the worker process, on its running event loop (synchronous:
    schedule async clean-up as a task; the worker goes on closing its pools
    for a moment). Not called when the worker is killed or crashes.
    Transaction: none.

    :param worker: the :class:`~durable_cluster.worker.Worker`.

    .. versionadded:: 0.1
    """


@hookspec
def durable_partition_claimed(worker: Any, partition: int) -> None:
    """The worker now owns ``partition`` (its epoch was bumped).

    Called by: the worker's partition manager, after the claim transaction
    committed and before the partition's instances are loaded.
    Called in: the worker process, on its event loop.
    Transaction: none (the claim has committed).

    :param worker: the :class:`~durable_cluster.worker.Worker`.
    :param partition: the partition number.

    .. versionadded:: 0.1
    """


@hookspec
def durable_partition_released(worker: Any, partition: int) -> None:
    """The worker no longer runs ``partition`` (given away to balance, or lost).

    Called by: the worker's partition manager, when it gives a partition to
    another worker (after the partition's in-flight steps finished and were
    checkpointed, before the lock is unlocked), or when it finds the claim
    lost (its lock connection died, or a checkpoint was fenced). Not called
    at a graceful stop: :func:`durable_worker_exiting` covers that.
    Called in: the worker process, on its event loop.
    Transaction: none.

    :param worker: the :class:`~durable_cluster.worker.Worker`.
    :param partition: the partition number.

    .. versionadded:: 0.1
    """


@hookspec
def durable_instance_completed(worker: Any, instance_id: str, result: Any) -> None:
    """An instance completed.

    Called by: the worker's engine, in the worker that ran its last step,
    once the terminal status has committed.
    Called in: the worker process, on its event loop.
    Transaction: outside it (after the commit), so the completion is durable
    when the hook runs; it may run at most once per instance, or not at all
    if the worker dies right after the commit.

    :param worker: the :class:`~durable_cluster.worker.Worker`.
    :param instance_id: the instance.
    :param result: the root node's result (a JSON value).

    .. versionadded:: 0.1
    """


@hookspec
def durable_instance_failed(worker: Any, instance_id: str, error: str) -> None:
    """An instance failed.

    Called by: the worker's engine, in the worker that recorded the failure,
    once the terminal status has committed.
    Called in: the worker process, on its event loop.
    Transaction: outside it (after the commit); at most once per instance,
    or not at all if the worker dies right after the commit.

    :param worker: the :class:`~durable_cluster.worker.Worker`.
    :param instance_id: the instance.
    :param error: the error message stored as the root node's result.

    .. versionadded:: 0.1
    """


@hookspec
def durable_checkpoint_committed(worker: Any, records: int, seconds: float) -> None:
    """The worker's checkpoint writer committed a batch (a group commit).

    Called by: the worker's checkpoint batcher, once per successful flush,
    after the commit and after the engine was told (the "ack"); a flush that
    is retried after a lost connection calls it once, for the attempt that
    committed. SQL steps that record their result inside their own
    transaction (``ctx.commit_with_checkpoint``) do not go through it.
    Called in: the worker process, on its event loop (keep it cheap: the
    next flush waits for it).
    Transaction: outside it (after the commit).

    The built-in ``metrics`` plugin turns it into the
    ``durable_checkpoint_commit_seconds`` histogram.

    :param worker: the :class:`~durable_cluster.worker.Worker`.
    :param records: how many step and decision records the transaction
        wrote (0 for a flush of status changes and wake-up times only).
    :param seconds: how long the transaction took, fence check to commit.

    .. versionadded:: 0.1
    """
