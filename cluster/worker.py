"""The worker process: boot, claim partitions, run instances, stop gracefully.

A worker is forked by the coordinator and connects only after the fork. Its
event loop runs four tasks:

- the partition manager (lock connection: claims, membership, LISTEN);
- the scheduler (loads due instances of owned partitions into the engine);
- the batcher (group commit of checkpoints);
- the heartbeat (to the coordinator's heartbeat file; notices an orphaning).

Signals: TERM stops gracefully (no new steps; in-flight steps finish and
checkpoint within ``--graceful-timeout``; partitions released explicitly;
exit 0). INT is ignored: the coordinator owns Ctrl-C and sends TERM. QUIT
exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolTimeout

from . import clock, crashpoints, db, keys, pluginmanager, queries
from .checkpoint import Batcher
from .engine import LOAD_BATCH, Engine
from .errors import PluginLoadError, StepKindConflict
from .partitions import PartitionManager

if TYPE_CHECKING:
    from .config import Settings
    from .coordinator import WorkerSpec

logger = logging.getLogger(__name__)

WORKER_BOOT_ERROR = 3
PLUGIN_LOAD_ERROR = 4
MAX_ACTIVE = 5000  # instances held in memory per worker
HEARTBEAT_EVERY = 1.0  # seconds
RECURSION_LIMIT = 20_000  # graphs nest up to 256 levels; each level is a few frames


class Worker:
    def __init__(self, spec: WorkerSpec, settings: Settings, dsn: str) -> None:
        self.spec = spec
        self.slot = spec.slot
        self.generation = spec.generation
        self.settings = settings
        self.dsn = dsn
        self.worker_id = str(uuid.uuid4())
        self.stop_event: asyncio.Event | None = None
        self.wakeup: asyncio.Event | None = None
        self.plugins: pluginmanager.Plugins | None = None
        self.engine: Engine | None = None
        self.partitions: PartitionManager | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._to_load: dict[str, None] = {}  # notified instances, in order, loaded together

    # -- process entry ------------------------------------------------------------------

    def run(self) -> int:
        """Boot and run; the return value is the process exit code."""
        sys.setrecursionlimit(RECURSION_LIMIT)
        crashpoints.configure(os.environ.get(crashpoints.ENV))
        clock.configure(os.environ.get(clock.ENV))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.plugins = pluginmanager.build(self.settings.plugins_dir)
        except (PluginLoadError, StepKindConflict) as exc:
            logger.error("worker[%d]: %s", self.slot, exc, extra={"action": "plugin_load_failed"})
            return PLUGIN_LOAD_ERROR
        except Exception:
            logger.exception("worker[%d] failed to boot", self.slot, extra={"action": "worker_boot_failed"})
            return WORKER_BOOT_ERROR
        return asyncio.run(self.main())

    async def main(self) -> int:
        assert self.plugins is not None
        loop = asyncio.get_running_loop()
        self.stop_event = stop = asyncio.Event()
        self.wakeup = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGQUIT, self._quit)
        loop.add_signal_handler(signal.SIGUSR1, self._rebalance)
        writer_stop = asyncio.Event()
        exited = asyncio.Event()
        # Heartbeat from the start: a worker waiting for the database is alive, not stuck.
        heartbeat_task = loop.create_task(self._heartbeat(exited, stop), name="heartbeat")
        try:
            total = await self._partition_count(stop)
        except psycopg.OperationalError:
            if not stop.is_set():
                raise
        if stop.is_set():
            exited.set()
            await heartbeat_task
            return 0
        partitions = self.partitions = PartitionManager(
            self.dsn,
            worker_id=self.worker_id,
            cluster_id=self.spec.cluster_id,
            slot=self.slot,
            cpu=self.spec.cpu,
            total=total,
            local_workers=self.settings.worker_count,
            on_claimed=self._claimed,
            on_release=self._release,
            on_lost=self._lost,
            on_notify=self._notified,
        )
        plugins = self.plugins
        batcher = Batcher(
            db.runtime_conninfo(self.dsn),
            partitions.claim,
            partitions.lose,
            on_commit=lambda records, seconds: plugins.checkpoint_committed(self, records, seconds),
        )
        engine = self.engine = Engine(
            dsn=db.runtime_conninfo(self.dsn),
            settings=self.settings,
            plugins=self.plugins,
            batcher=batcher,
            claims=partitions.claim,
            owned=partitions.owned,
            worker=self,
        )
        await engine.pool.open(wait=False)
        self.plugins.worker_started(self)
        logger.info(
            "worker[%d] started (pid %d, cpu %s)",
            self.slot,
            os.getpid(),
            self.spec.cpu,
            extra={"action": "worker_started", "slot": self.slot},
        )
        tasks = [
            loop.create_task(batcher.run(writer_stop), name="batcher"),
            loop.create_task(partitions.run(stop), name="partitions"),
            loop.create_task(self._schedule(stop), name="scheduler"),
            heartbeat_task,
            loop.create_task(self._reconcile(stop), name="reconciler"),
        ]
        batcher_task, partitions_task, scheduler_task, heartbeat_task, reconcile_task = tasks
        stopped = loop.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopped and task.exception() is not None:
                logger.error(
                    "worker[%d]: %s crashed",
                    self.slot,
                    task.get_name(),
                    exc_info=task.exception(),
                    extra={"action": "worker_task_crashed"},
                )
                return 1
        # Graceful stop.
        logger.info(
            "worker[%d] stopping: finishing in-flight steps",
            self.slot,
            extra={"action": "worker_stopping", "slot": self.slot},
        )
        partitions.state = "stopping"
        scheduler_task.cancel()
        reconcile_task.cancel()
        await engine.drain_all(self.settings.graceful_timeout)
        await asyncio.gather(scheduler_task, reconcile_task, partitions_task, return_exceptions=True)
        await batcher.drain()
        writer_stop.set()
        await batcher_task
        await partitions.stop()
        self.plugins.worker_exiting(self)
        await engine.close()
        exited.set()
        await heartbeat_task
        logger.info("worker[%d] stopped", self.slot, extra={"action": "worker_stopped", "slot": self.slot})
        return 0

    def _quit(self) -> None:
        os._exit(0)

    def _rebalance(self) -> None:
        """SIGUSR1 from the coordinator: a sibling died; every worker looks for free partitions now."""
        if self.engine is not None and not self.engine.stopping:
            self._background(self._announce_rebalance())

    async def _announce_rebalance(self) -> None:
        assert self.engine is not None
        async with self.engine.pool.connection() as conn:
            await conn.execute(queries.get("notify_rebalance"), {"payload": keys.REBALANCE})

    async def _partition_count(self, stop: asyncio.Event) -> int:
        async def read() -> int:
            async with await psycopg.AsyncConnection.connect(
                db.runtime_conninfo(self.dsn), autocommit=True
            ) as conn:
                row = await (
                    await conn.execute("SELECT value::int FROM durable.settings WHERE name = 'partitions'")
                ).fetchone()
                if row is None:
                    raise RuntimeError("the schema has no partition count: run durable-cluster init")
                return int(row[0])

        count: int = await db.retry_async("reading the partition count", read, stop=stop)
        return count

    # -- partition callbacks --------------------------------------------------------------------

    async def _claimed(self, partition: int) -> None:
        assert self.plugins is not None and self.wakeup is not None
        self.plugins.partition_claimed(self, partition)
        self.wakeup.set()

    async def _release(self, partition: int) -> None:
        assert self.plugins is not None and self.engine is not None
        await self.engine.drain_partition(partition, self.settings.graceful_timeout)
        self.plugins.partition_released(self, partition)

    def _lost(self, lost: set[int]) -> None:
        assert self.plugins is not None and self.engine is not None
        for partition in lost:
            self.engine.drop_partition(partition)
            self.plugins.partition_released(self, partition)

    def _notified(self, payload: str) -> None:
        assert self.partitions is not None and self.engine is not None and self.wakeup is not None
        head, _, instance_id = payload.partition(":")
        try:
            partition = int(head)
        except ValueError:
            return
        if self.partitions.claim(partition) is None:
            return
        if not instance_id:
            self.wakeup.set()
            return
        if instance_id in self.engine.active:
            self._background(self.engine.poke(instance_id))
        elif not self.engine.stopping:
            # A burst of notifications (one df.start transaction, many instances)
            # becomes one load per LOAD_BATCH, once the burst has been read.
            if not self._to_load:
                asyncio.get_running_loop().call_soon(self._load_notified)
            self._to_load[instance_id] = None

    def _load_notified(self) -> None:
        assert self.engine is not None and self.wakeup is not None
        ids, self._to_load = list(self._to_load), {}
        room = max(0, MAX_ACTIVE - len(self.engine.active))
        if len(ids) > room:  # the rest stays due: the scheduler loads it when there is room
            ids = ids[:room]
            self.wakeup.set()
        for start in range(0, len(ids), LOAD_BATCH):
            self._background(self.engine.load(ids[start : start + LOAD_BATCH]))

    def _background(self, work: Any) -> None:
        """Run ``work`` as a task kept alive until it finishes (wake-ups from NOTIFY)."""
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Any) -> None:
        try:
            await work
        except (psycopg.Error, PoolTimeout) as exc:
            logger.warning(
                "wake-up handling failed: %s",
                db.primary_message(exc),
                extra={"action": "wake_failed"},
            )
            assert self.wakeup is not None
            self.wakeup.set()

    # -- the scheduler -----------------------------------------------------------------------

    async def _schedule(self, stop: asyncio.Event) -> None:
        assert self.engine is not None and self.partitions is not None and self.wakeup is not None
        engine, partitions, wakeup = self.engine, self.partitions, self.wakeup
        poll = self.settings.poll_interval
        last_sweep = 0.0
        delay = db.backoff_delays()
        while not stop.is_set():
            wakeup.clear()
            timeout = poll
            try:
                owned = partitions.owned()
                if owned and not engine.stopping:
                    async with engine.pool.connection() as conn:
                        if time.monotonic() - last_sweep >= poll:
                            last_sweep = time.monotonic()
                            await conn.execute(queries.get("stuck_runs"), {"partitions": owned})
                        capacity = MAX_ACTIVE - len(engine.active)
                        limit = min(capacity, LOAD_BATCH)
                        ids: list[str] = []
                        if limit > 0:
                            rows = await (
                                await conn.execute(
                                    queries.get("fetch_due"),
                                    {"partitions": owned, "limit": limit, "now": _timestamp(clock.now())},
                                )
                            ).fetchall()
                            ids = [str(r[0]) for r in rows if r[0] not in engine.active]
                        row = await (
                            await conn.execute(
                                queries.get("next_wake"),
                                {"partitions": owned, "now": _timestamp(clock.now())},
                            )
                        ).fetchone()
                    if ids:
                        await engine.load(ids)
                        if len(ids) >= limit:
                            continue
                    if row and row[0] is not None:
                        timeout = max(0.0, min(poll, float(row[0]) - clock.now()))
                delay = db.backoff_delays()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                wait = delay()
                logger.warning(
                    "scheduler: database unavailable (%s); retrying in %.1fs",
                    db.primary_message(exc),
                    wait,
                    extra={"action": "scheduler_retry"},
                )
                timeout = wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout)

    async def _reconcile(self, stop: asyncio.Event) -> None:
        """Retention and orphan clean-up, by one worker of the database at a time."""
        assert self.engine is not None
        interval = self.settings.reconcile_interval
        if interval <= 0:
            return
        # Stagger the workers; the lock makes sure only one cleans at a time anyway.
        first = min(interval, 5.0) * (0.5 + random.random())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), first)
        while not stop.is_set():
            try:
                await self._reconcile_once()
            except (psycopg.Error, PoolTimeout) as exc:
                logger.warning(
                    "reconciler: %s", db.primary_message(exc), extra={"action": "reconcile_failed"}
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _reconcile_once(self) -> None:
        assert self.engine is not None
        batch = 5000
        purged = orphans = 0
        async with self.engine.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(queries.get("try_reconcile_lock"))).fetchone()
            if not row or not row[0]:
                return
            while True:
                cur = await conn.execute(
                    queries.get("purge_old_terminal"),
                    {"days": self.settings.retention_days, "batch": batch},
                )
                count = len(await cur.fetchall())
                purged += count
                if count < batch:
                    break
            cur = await conn.execute(queries.get("purge_orphans"), {"batch": batch})
            orphans = len(await cur.fetchall())
            await conn.execute(queries.get("purge_stray_records"), {"batch": batch})
            await conn.execute(queries.get("purge_old_epochs"))
        if purged or orphans:
            logger.info(
                "reconciler: deleted %d terminal instances past retention, %d orphaned runs",
                purged,
                orphans,
                extra={"action": "reconciled"},
            )

    async def _heartbeat(self, exited: asyncio.Event, stop: asyncio.Event) -> None:
        """Tell the coordinator we live (until the very end); stop if it died."""
        last_idle_sweep = time.monotonic()
        while not exited.is_set():
            self.spec.heartbeat.notify()
            if os.getppid() != self.spec.coordinator_pid and not stop.is_set():
                logger.error(
                    "worker[%d]: the coordinator is gone; stopping",
                    self.slot,
                    extra={"action": "worker_orphaned"},
                )
                stop.set()
            if self.engine is not None and time.monotonic() - last_idle_sweep > 30 and not stop.is_set():
                last_idle_sweep = time.monotonic()
                await self.engine.roles.close_idle()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), HEARTBEAT_EVERY)


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def run_worker(spec: WorkerSpec, *, settings: Settings, dsn: str) -> int:
    """The coordinator's worker target: runs in the forked child."""
    return Worker(spec, settings, dsn).run()
