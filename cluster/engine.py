"""The instance engine: a worker's in-memory instances and their steps.

For every instance of its partitions that has work, a worker keeps an
:class:`Instance` in memory: the frozen graph, the journal, the signals not
yet consumed. :meth:`Engine.advance` evaluates the graph
(:mod:`durable_cluster.graph`) and acts on the answer: write decisions
through the batcher, start steps, cancel steps nobody wants any more (a
RACE's loser), finish the instance, or park it (evicted from memory with a
wake-up time in ``durable.runs``) while it waits for a timer or a signal.

The protocol for each step is check, execute, record, commit, then ack: a
step's result joins the journal only after its checkpoint committed, and only
then does the instance move on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from . import crashpoints, db, graph, queries, steps
from .clock import now as clock_now
from .context import StepContext, checkpoint_failure, step_logger
from .errors import (
    AlreadyRecorded,
    InstanceTerminal,
    RetryStep,
    StaleEpoch,
    StepFailed,
    TransientStepError,
    UnknownStepKind,
)
from .rolepool import RolePools
from .substitute import SubstitutionError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from .checkpoint import Batcher, Claim
    from .config import Settings
    from .pluginmanager import Plugins

logger = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: Instances whose next timer is this close stay in memory with a local timer.
KEEP_IN_MEMORY_SECONDS = 2.0
#: How often a step may fail for reasons outside it (lost connection, server
#: restart, deadlock) before its failure is recorded.
MAX_TRANSIENT_FAILURES = 5
LOAD_BATCH = 500
#: Step kinds that wait for an execution slot before they run: poison detection
#: marks them once they hold it (Engine.submitter_connection), not before.
MARKED_AT_SLOT = frozenset({"sql"})


@dataclass(eq=False)
class Instance:
    id: str
    partition: int
    run: graph.Run
    role: str
    database: str | None
    status: str
    # step key -> the task running it, or a future until its checkpoint commits
    in_flight: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    # node -> (status, scope, attempt) last written to df.nodes
    stamped: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    seen_signal: int = 0
    writing: bool = False
    dirty: bool = False
    closed: bool = False
    timer: asyncio.TimerHandle | None = None
    transient: dict[str, int] = field(default_factory=dict)
    suspect: bool = False
    role_oid: int = 0
    tail: frozenset[str] | None = None  # step keys that can end the instance (_tail_keys)


class Engine:
    def __init__(
        self,
        *,
        dsn: str,
        settings: Settings,
        plugins: Plugins,
        batcher: Batcher,
        claims: Callable[[int], Claim | None],
        owned: Callable[[], list[int]],
        worker: Any,
        clock: Callable[[], float] = clock_now,
    ) -> None:
        self.dsn = dsn
        self.settings = settings
        self.plugins = plugins
        self.batcher = batcher
        self.claims = claims
        self.owned = owned
        self.worker = worker
        self.clock = clock
        self.active: dict[str, Instance] = {}
        self.draining: set[int] = set()
        self.stopping = False
        share = max(1, settings.max_user_connections // max(1, settings.worker_count))
        self.roles = RolePools(
            dsn,
            slots=share,
            acquire_timeout=settings.execution_acquire_timeout,
            max_user_connections=settings.max_user_connections,
            statement_timeout=settings.step_statement_timeout or None,
        )
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=4,
            open=False,
            configure=_configure,
            name="durable-worker",
        )
        self.steps_run = 0

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=60)

    async def close(self) -> None:
        for inst in list(self.active.values()):
            self._close(inst)
        await self.roles.close()
        await self.pool.close()

    # -- loading -------------------------------------------------------------------------

    async def load(self, ids: list[str]) -> int:
        """Bring these instances into memory and move each one on. Returns how many."""
        ids = [i for i in ids if i not in self.active]
        if not ids:
            return 0
        claims = [c for c in (self.claims(p) for p in self.owned()) if c is not None]
        if not claims:
            return 0
        async with self.pool.connection() as conn:
            runs, journal_rows, signal_rows, stamp_rows = await self._read_instances(conn, ids, claims)
        journals: dict[str, graph.Journal] = {}
        for iid, key, kind, ok, value, guarantee in journal_rows:
            journals.setdefault(iid, graph.Journal()).add(key, graph.Record(kind, ok, value, guarantee))
        signals: dict[str, list[graph.Signal]] = {}
        for sid, iid, name, data in signal_rows:
            signals.setdefault(iid, []).append(graph.Signal(int(sid), name, data))
        stamps: dict[str, dict[str, tuple[str, str, int]]] = {}
        for iid, nid, status, scope, attempt in stamp_rows:
            stamps.setdefault(iid, {})[nid] = (status, scope or "", int(attempt or 0))
        loaded = 0
        for row in runs:
            (
                iid,
                partition,
                role_oid,
                rolname,
                rolsuper,
                _canlogin,
                database,
                label,
                root_node,
                frozen,
                variables,
                crashes,
                status,
            ) = row
            if iid in self.active or self.claims(partition) is None:
                continue
            if status is None or status in TERMINAL:
                self.batcher.finish(partition, iid, None, _ignore)
                continue
            problem = None
            root: graph.Node | None = None
            if rolname is None:
                problem = f"Instance {iid}: submitted_by role no longer exists in pg_roles"
            elif rolsuper and not self.settings.enable_superuser_instances:
                problem = (
                    f'pg_durable blocked instance {iid}: submitted_by role "{rolname}" is a superuser, '
                    "but pg_durable.enable_superuser_instances is off"
                )
            else:
                try:
                    root = graph.build_graph(frozen, root_node)
                except graph.GraphError as exc:
                    problem = f"Invalid durable function graph: {exc}"
            if problem is not None or root is None:
                self._fail_unloaded(partition, iid, root_node, problem or "invalid graph")
                continue
            run = graph.Run(
                instance_id=iid,
                root=root,
                journal=journals.get(iid, graph.Journal()),
                label=label,
                variables=dict(variables or {}),
                signals=signals.get(iid, []),
            )
            inst = Instance(iid, partition, run, rolname, database, status, stamped=stamps.get(iid, {}))
            inst.role_oid = int(role_oid)
            inst.seen_signal = max((s.id for s in run.signals), default=0)
            # In memory when a worker died, without progress since: its steps are
            # marked before they run, so a step that kills its worker is found out.
            inst.suspect = crashes > 0
            self.active[iid] = inst
            if status == "pending":
                self.batcher.running(partition, iid)
                inst.status = "running"
            loaded += 1
            self.advance(inst)
        return loaded

    async def _read_instances(
        self, conn: psycopg.AsyncConnection[Any], ids: list[str], claims: list[Claim]
    ) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """Mark these instances as in memory and read them, in one transaction.

        The usual case is one round trip: fence, mark and reads sent as one
        pipeline. A stale claim aborts it; then the partitions still current
        are found first and only their instances are taken. The transaction
        commits asynchronously: the 'infinity' mark is a hint for schedulers,
        not state (a database crash that loses it makes every worker reload).
        """
        partitions = [c.partition for c in claims]
        fence = {
            "partitions": partitions,
            "epochs": [c.epoch for c in claims],
            "secrets": [c.secret for c in claims],
        }
        reads = ("load_journal", "load_signals", "load_stamps")
        try:
            async with conn.pipeline() as pipeline, conn.transaction():
                await conn.execute(queries.get("async_commit"))
                await conn.execute(queries.get("fence_all"), fence)
                cursors = [
                    await conn.execute(queries.get("load_runs"), {"ids": ids, "partitions": partitions})
                ]
                cursors += [await conn.execute(queries.get(name), {"ids": ids}) for name in reads]
                await pipeline.sync()
                runs, journal, signals, stamps = [await cur.fetchall() for cur in cursors]
                return runs, journal, signals, stamps
        except psycopg.Error as exc:
            if exc.sqlstate != db.STALE_EPOCH:
                raise
        async with conn.transaction():
            await conn.execute(queries.get("async_commit"))
            row = await (await conn.execute(queries.get("fence_check"), fence)).fetchone()
            stale = set(row[0]) if row and row[0] else set()
            current = [p for p in partitions if p not in stale]
            runs = await (
                await conn.execute(queries.get("load_runs"), {"ids": ids, "partitions": current})
            ).fetchall()
            results = [
                await (await conn.execute(queries.get(name), {"ids": ids})).fetchall() for name in reads
            ]
        return runs, results[0], results[1], results[2]

    def _fail_unloaded(self, partition: int, iid: str, root_node: str, message: str) -> None:
        logger.warning(
            "instance %s cannot run: %s",
            iid,
            message,
            extra={"action": "instance_refused", "instance_id": iid},
        )
        self.batcher.stamp(partition, iid, root_node, status="failed", result=message, scope=f"{iid}::1")
        self.batcher.finish(partition, iid, "failed", _ignore)

    # -- the core loop of an instance ------------------------------------------------------

    def advance(self, inst: Instance) -> None:
        """Evaluate the instance and act on what it needs next."""
        if inst.closed:
            return
        if inst.writing:
            inst.dirty = True
            return
        inst.dirty = False
        if inst.timer is not None:
            inst.timer.cancel()
            inst.timer = None
        now = self.clock()
        evaluation = graph.evaluate(inst.run, now, in_flight=set(inst.in_flight))
        self._stamp(inst, evaluation.stamps)
        if evaluation.outcome is not None:
            self._finish(inst, evaluation.outcome)
            return
        if evaluation.records:
            inst.writing = True
            self.batcher.records(
                inst.partition,
                inst.id,
                evaluation.records,
                functools.partial(self._records_done, inst, evaluation.records),
            )
        for key, task in list(inst.in_flight.items()):
            if key not in evaluation.wanted:
                task.cancel()
        if self._frozen(inst):
            if evaluation.steps:
                # Draining: no new steps. The instance stays marked as in memory
                # ('infinity'), so whoever claims the partition next runs them.
                return
        else:
            for request in evaluation.steps:
                self._start_step(inst, request)
        if evaluation.records or inst.in_flight:
            if evaluation.wake_at is not None:
                self._local_timer(inst, evaluation.wake_at)
            return
        if evaluation.wake_at is None and not evaluation.waits_for_signal:
            logger.error(
                "instance %s waits for nothing; parking it until a signal or cancel",
                inst.id,
                extra={"action": "instance_stalled", "instance_id": inst.id},
            )
        self._park(inst, evaluation.wake_at, now)

    def _frozen(self, inst: Instance) -> bool:
        """No new steps: the worker or the instance's partition is draining."""
        return self.stopping or inst.partition in self.draining

    def _stamp(self, inst: Instance, stamps: dict[str, graph.Stamp]) -> None:
        for node_id, stamp in stamps.items():
            current = (stamp.status, stamp.scope, _attempt(stamp.details))
            if inst.stamped.get(node_id) == current:
                continue
            inst.stamped[node_id] = current
            self.batcher.stamp(
                inst.partition,
                inst.id,
                node_id,
                status=stamp.status,
                result=stamp.result,
                scope=stamp.scope,
                details=stamp.details,
            )

    def _local_timer(self, inst: Instance, at: float) -> None:
        if inst.timer is not None:
            inst.timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - self.clock())
        inst.timer = loop.call_later(delay, self.advance, inst)

    def _park(self, inst: Instance, wake_at: float | None, now: float) -> None:
        if wake_at is not None and wake_at - now <= KEEP_IN_MEMORY_SECONDS and not self._frozen(inst):
            self._local_timer(inst, wake_at)
            return
        # Waiting long (or for a signal): leave memory; durable.runs says when to come back.
        self.batcher.wake(inst.partition, inst.id, wake_at, inst.seen_signal)
        self._close(inst)

    def _records_done(
        self,
        inst: Instance,
        records: list[graph.NewRecord],
        committed: dict[str, graph.Record] | None,
    ) -> None:
        inst.writing = False
        if committed is None:
            self._close(inst)
            return
        for new in records:
            stored = committed.get(new.key)
            if stored is None:
                continue
            if new.drop_prefixes:
                inst.run.journal.drop(new.drop_prefixes)
            inst.run.journal.add(new.key, stored)
            if new.consumes_signal is not None:
                inst.run.signals = [s for s in inst.run.signals if s.id != new.consumes_signal]
        self.advance(inst)

    def _finish(self, inst: Instance, outcome: graph.Outcome) -> None:
        status = "completed" if outcome.ok else "failed"
        for task in inst.in_flight.values():
            task.cancel()
        inst.closed = True
        if inst.timer is not None:
            inst.timer.cancel()

        def done(committed: bool) -> None:
            self.active.pop(inst.id, None)
            if not committed:
                return
            logger.info(
                "instance %s %s",
                inst.id,
                status,
                extra={"action": f"instance_{status}", "instance_id": inst.id},
            )
            if outcome.ok:
                self.plugins.instance_completed(self.worker, inst.id, outcome.value)
            else:
                self.plugins.instance_failed(self.worker, inst.id, str(outcome.value))

        self.batcher.finish(inst.partition, inst.id, status, done)

    def _close(self, inst: Instance) -> None:
        """Forget the instance in memory (no writes)."""
        inst.closed = True
        if inst.timer is not None:
            inst.timer.cancel()
            inst.timer = None
        for task in inst.in_flight.values():
            task.cancel()
        if self.active.get(inst.id) is inst:
            del self.active[inst.id]

    # -- pokes: a signal or a cancel for an instance in memory ---------------------------

    async def poke(self, instance_id: str) -> None:
        inst = self.active.get(instance_id)
        if inst is None:
            return
        async with self.pool.connection() as conn:
            status_rows = await (
                await conn.execute(queries.get("instance_status"), {"ids": [instance_id]})
            ).fetchall()
            signal_rows = await (
                await conn.execute(queries.get("load_signals"), {"ids": [instance_id]})
            ).fetchall()
        if inst.closed:
            return
        status = status_rows[0][1] if status_rows else None
        if status is None or status in TERMINAL:
            logger.info(
                "instance %s is %s: stopping it",
                instance_id,
                status,
                extra={"action": "instance_stopped", "instance_id": instance_id},
            )
            self._close(inst)
            self.batcher.finish(inst.partition, inst.id, None, _ignore)
            return
        known = {s.id for s in inst.run.signals}
        fresh = [
            graph.Signal(int(sid), name, data)
            for sid, _iid, name, data in signal_rows
            if int(sid) not in known and int(sid) > inst.seen_signal
        ]
        if fresh:
            inst.run.signals.extend(fresh)
            inst.seen_signal = max(inst.seen_signal, *(s.id for s in fresh))
            self.advance(inst)

    # -- partitions ------------------------------------------------------------------------

    def drop_partition(self, partition: int) -> None:
        """The claim is gone (lost lock or stale epoch): forget its instances, write nothing."""
        for inst in [i for i in self.active.values() if i.partition == partition]:
            self._close(inst)

    async def drain_partition(self, partition: int, timeout: float) -> None:
        """Let in-flight steps of ``partition`` finish and checkpoint, then hand its instances back."""
        self.draining.add(partition)
        try:
            await self._wait_in_flight(lambda i: i.partition == partition, timeout)
            self._hand_back(lambda i: i.partition == partition)
            await self.batcher.drain()
            self.drop_partition(partition)
        finally:
            self.draining.discard(partition)

    async def drain_all(self, timeout: float) -> None:
        self.stopping = True
        await self._wait_in_flight(lambda i: True, timeout)
        self._hand_back(lambda i: True)
        await self.batcher.drain()

    def _hand_back(self, which: Callable[[Instance], bool]) -> None:
        """Park the instances in memory as due now: the next owner picks them up at once,
        and does not count a crash against them (they were not in memory when a worker died)."""
        now = self.clock()
        for inst in [i for i in self.active.values() if which(i) and not i.closed]:
            self.batcher.wake(inst.partition, inst.id, now, inst.seen_signal)

    async def _wait_in_flight(self, which: Callable[[Instance], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            tasks = [t for i in self.active.values() if which(i) for t in i.in_flight.values()]
            if not tasks:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "graceful timeout: cancelling %d steps still running",
                    len(tasks),
                    extra={"action": "steps_cancelled"},
                )
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                return
            await asyncio.wait(tasks, timeout=remaining)

    # -- steps ---------------------------------------------------------------------------

    def _start_step(self, inst: Instance, request: graph.StepRequest) -> None:
        node = request.node
        kind = steps.kind_of(node)
        try:
            args = steps.prepare(request, inst.run)
            registration = self.plugins.registry.get(kind)
        except (SubstitutionError, UnknownStepKind) as exc:
            self._record_step(inst, request.key, graph.Record("step", False, str(exc), None))
            return
        ctx = StepContext(
            instance_id=inst.id,
            node_id=node.id,
            key=request.key,
            kind=kind,
            args=args,
            attempt=request.attempt,
            iteration=request.iteration,
            label=inst.run.label,
            variables=inst.run.variables,
            results=request.env,
            submitted_by=inst.role,
            role_oid=inst.role_oid,
            database=inst.database,
            partition=inst.partition,
            logger=step_logger(f"durable_cluster.step.{kind}", inst.id, node.id, request.key),
            handler=registration.handler,
            settings=self.settings,
            _services=self,
        )
        if inst.suspect:
            self._start_marked(inst, request, ctx)
            return
        task = asyncio.get_running_loop().create_task(self._run_step(inst, request, ctx))
        inst.in_flight[request.key] = task

    def _start_marked(self, inst: Instance, request: graph.StepRequest, ctx: StepContext) -> None:
        """Poison detection: record that this step is about to run, run it once that is durable.

        Each run of the step leaves a marker; if the worker dies, the markers stay.
        A step with ``--poison-threshold`` - 1 markers already was running when its
        worker died that many times (plus the crash that made the instance suspect):
        it fails instead of killing another worker.
        """
        key = request.key
        prefix = f"{key}!inflight"
        runs = sum(1 for k in inst.run.journal.records if k.startswith(prefix))
        threshold = self.settings.poison_threshold
        if runs + 1 >= threshold:
            message = (
                f"step '{ctx.kind}' (node {request.node.id}) was running when its worker died "
                f"{runs + 1} times in a row; failed instead of crashing more workers "
                f"(--poison-threshold {threshold})"
            )
            logger.error(
                "instance %s: %s",
                inst.id,
                message,
                extra={"action": "poison_step", "instance_id": inst.id, "step_key": key},
            )
            self._record_step(inst, key, graph.Record("step", False, message, None))
            return
        marker = graph.NewRecord(f"{prefix}{runs + 1}", graph.Record("inflight", True, {"run": runs + 1}))
        # Marked just before it runs (_run_step); a SQL step may first wait for an
        # execution slot, so it is marked once it holds one (submitter_connection):
        # only then can it be the culprit.
        ctx._before_execute = functools.partial(self._mark_running, inst, marker)
        inst.in_flight[key] = asyncio.get_running_loop().create_task(self._run_step(inst, request, ctx))

    async def _mark_running(self, inst: Instance, marker: graph.NewRecord) -> None:
        """Write ``marker`` (see :meth:`_start_marked`) and wait until it is durable.

        The partition lost, or the instance closed meanwhile: the step does not run.
        """
        done: asyncio.Future[dict[str, graph.Record] | None] = asyncio.get_running_loop().create_future()

        def marked(committed: dict[str, graph.Record] | None) -> None:
            if not done.done():
                done.set_result(committed)

        self.batcher.records(inst.partition, inst.id, [marker], marked)
        committed = await done
        if committed is None:  # the partition is gone: so is the instance, here
            self._close(inst)
        if committed is None or inst.closed:
            raise asyncio.CancelledError
        for marker_key, record in committed.items():
            inst.run.journal.add(marker_key, record)

    async def _run_step(self, inst: Instance, request: graph.StepRequest, ctx: StepContext) -> None:
        key = request.key
        record: graph.Record | None = None
        try:
            if ctx._before_execute is not None and ctx.kind not in MARKED_AT_SLOT:
                before, ctx._before_execute = ctx._before_execute, None
                await before()
            crashpoints.hit("before_step")
            value = await self.plugins.run_step(ctx)
            try:
                orjson.dumps(value)
            except TypeError as exc:
                raise StepFailed(
                    f"step '{ctx.kind}' returned a value that is not JSON-serialisable: {exc}"
                ) from exc
            record = graph.Record("step", True, value, ctx.guarantee)
        except asyncio.CancelledError:
            ctx.cancelled.set()
            inst.in_flight.pop(key, None)
            return
        except StepFailed as exc:
            record = graph.Record("step", False, str(exc), ctx.guarantee)
        except StaleEpoch:
            inst.in_flight.pop(key, None)
            self.drop_partition(inst.partition)
            return
        except InstanceTerminal:
            inst.in_flight.pop(key, None)
            await self.poke(inst.id)
            return
        except AlreadyRecorded:
            inst.in_flight.pop(key, None)
            await self._reload_record(inst, key)
            return
        except (TransientStepError, RetryStep) as exc:
            # A failure outside the step, or the handler's own RetryStep: run it again in
            # this worker, bounded, with backoff. Longer policies: wrap the step in df.retry.
            count = inst.transient.get(key, 0) + 1
            inst.transient[key] = count
            asked = isinstance(exc, RetryStep)
            if count < MAX_TRANSIENT_FAILURES:
                logger.warning(
                    "step %s of %s: %s (attempt %d of %d, %s)",
                    key,
                    inst.id,
                    exc,
                    count,
                    MAX_TRANSIENT_FAILURES,
                    "the step asked to be retried" if asked else "retrying",
                    extra={
                        "action": "step_retry_requested" if asked else "step_transient_failure",
                        "instance_id": inst.id,
                        "step_key": key,
                    },
                )
                inst.in_flight.pop(key, None)
                self._local_timer(inst, self.clock() + min(0.2 * 2**count, 5.0))
                return
            message = str(exc)
            if asked:
                message = (
                    f"{message} (step '{ctx.kind}' asked to be retried {count} times; "
                    "wrap it in df.retry for a longer retry policy)"
                )
            record = graph.Record("step", False, message, ctx.guarantee)
        except Exception as exc:
            logger.exception(
                "step %s of %s raised",
                key,
                inst.id,
                extra={"action": "step_error", "instance_id": inst.id, "step_key": key},
            )
            record = graph.Record(
                "step",
                False,
                f"step '{ctx.kind}' raised {type(exc).__name__}: {exc}",
                ctx.guarantee,
            )
        self.steps_run += 1
        if ctx.recorded:
            crashpoints.hit("after_step_commit")
            inst.in_flight.pop(key, None)
            self._recorded(inst, key, record)
            return
        self._record_step(inst, key, record)

    def _record_step(self, inst: Instance, key: str, record: graph.Record) -> None:
        """Checkpoint a step's result through the batcher; ack when it committed.

        Until then the key stays in flight (a future the drain can wait on), so
        no evaluation starts the step again.
        """
        if inst.closed:
            inst.in_flight.pop(key, None)
            return
        pending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inst.in_flight[key] = pending

        def done(committed: dict[str, graph.Record] | None) -> None:
            if not pending.done():
                pending.set_result(None)
            if inst.in_flight.get(key) is pending:
                del inst.in_flight[key]
            if committed is None:
                self._close(inst)
                return
            stored = committed.get(key)
            if stored is not None:
                self._recorded(inst, key, stored)

        self.batcher.records(inst.partition, inst.id, [graph.NewRecord(key, record)], done)
        if self._ends_with(inst, key, record):
            # The instance ends with this step: its end (node stamps, terminal status)
            # goes into the same transaction as the step's checkpoint, one commit
            # instead of two. Nothing new starts before that commit: the evaluation
            # only finishes. If the transaction is dropped, so is the instance here.
            del inst.in_flight[key]
            self._recorded(inst, key, record)

    def _ends_with(self, inst: Instance, key: str, record: graph.Record) -> bool:
        """Whether the instance is over once ``record`` is in (a dry run of the graph).

        Only for a step on the root's chain of ``~>`` (where an instance ends),
        with nothing else in flight and no other write pending for the instance.
        """
        if inst.writing or len(inst.in_flight) != 1 or key in inst.run.journal.records:
            return False
        if inst.tail is None:
            inst.tail = _tail_keys(inst.run)
        if key not in inst.tail:
            return False
        records = inst.run.journal.records
        records[key] = record
        try:
            evaluation = graph.evaluate(inst.run, self.clock(), in_flight=set())
        finally:
            del records[key]
        return evaluation.outcome is not None

    def _recorded(self, inst: Instance, key: str, record: graph.Record) -> None:
        if inst.closed:
            return
        inst.transient.pop(key, None)
        inst.run.journal.add(key, record)
        if record.guarantee:
            stamp_details = {"guarantee": record.guarantee}
            node_id = key.rsplit("/", 1)[-1]
            scope = key.rsplit("/", 1)[0]
            self.batcher.stamp(
                inst.partition,
                inst.id,
                node_id,
                status="completed" if record.ok else "failed",
                result=record.value,
                scope=scope,
                details=stamp_details,
            )
            inst.stamped[node_id] = ("completed" if record.ok else "failed", scope, 0)
        self.advance(inst)

    async def _reload_record(self, inst: Instance, key: str) -> None:
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    queries.get("get_records"),
                    {"rows": orjson.dumps([{"iid": inst.id, "key": key}]).decode()},
                )
            ).fetchall()
        for _iid, step_key, kind, ok, value, guarantee in rows:
            self._recorded(inst, step_key, graph.Record(kind, ok, value, guarantee))

    # -- StepServices -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def submitter_connection(self, ctx: StepContext) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self.roles.connection(ctx.submitted_by, ctx.database) as conn:
            if ctx._before_execute is not None:
                before, ctx._before_execute = ctx._before_execute, None
                await before()
            yield conn

    async def checkpoint_in(self, ctx: StepContext, conn: psycopg.AsyncConnection[Any], value: Any) -> None:
        claim = self.claims(ctx.partition)
        if claim is None:
            raise StaleEpoch(f"partition {ctx.partition} is no longer claimed by this worker")
        crashpoints.hit("during_step")
        try:
            await conn.execute(
                "SELECT df._checkpoint_v1(%s, %s, %s, %s, %s, %s, %s)",
                (
                    ctx.instance_id,
                    claim.partition,
                    claim.epoch,
                    claim.secret,
                    ctx.key,
                    psycopg.types.json.Jsonb(value, dumps=_dumps),
                    "exactly-once",
                ),
            )
        except psycopg.Error as exc:
            mapped = checkpoint_failure(ctx, exc)
            if mapped is not None:
                raise mapped from exc
            raise

    async def has_function_privilege(self, role: str, signature: str) -> bool:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT pg_catalog.has_function_privilege(%s, %s, 'EXECUTE')", (role, signature)
                )
            ).fetchone()
        return bool(row and row[0])


def _attempt(details: dict[str, Any] | None) -> int:
    return int(details.get("attempt", 0)) if details else 0


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    db.configure_json(conn)
    await conn.set_autocommit(True)


def _ignore(*_args: Any) -> None:
    return None


def _tail_keys(run: graph.Run) -> frozenset[str]:
    """Keys of the steps that may be the last thing an instance does: the root's ``~>`` chain ends."""
    keys = []
    node: graph.Node | None = run.root
    while node is not None and node.type == "THEN":
        node = node.right
    if node is not None:
        keys.append(f"{run.root_scope}/{node.id}")
    return frozenset(keys)
