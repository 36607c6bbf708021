"""Group commit of checkpoints: check, record, commit, *then* acknowledge.

Everything a worker writes about its instances goes through one
:class:`Batcher`: step results (other than SQL steps on the home database,
which commit their checkpoint inside their own transaction), internal
decisions (timers, race winners, consumed signals, loop gates), node stamps,
status changes and wake-up times. Writes queue up while a flush is in
progress and go out together in the next transaction, so under load many
checkpoints share one commit (and one fsync).

Every flush starts with the fence: the shared fence lock of each partition
in the batch and a check of its epoch and secret. Writes of a partition whose
claim went stale are dropped from the batch and the worker lets the
partition go. Only after the commit are the callbacks run (the "ack"): the
engine adds the records to the instance's journal and moves it on.

Every statement is idempotent (``ON CONFLICT DO NOTHING`` with the stored
value read back, guarded updates), so a flush whose commit outcome is unknown
(the connection died mid-commit) is simply sent again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from . import crashpoints, db, queries
from .graph import NewRecord, Record

if TYPE_CHECKING:
    from collections.abc import Callable

    RecordsDone = Callable[[dict[str, Record] | None], None]
    Done = Callable[[bool], None]

logger = logging.getLogger(__name__)

#: How long a "running" mark (a node's stamp, an instance's status) waits before
#: it is written on its own; most steps finish sooner, and a mark whose instance
#: writes anything else meanwhile goes along with that write.
RUNNING_STAMP_DELAY = 0.25  # seconds


@dataclass(frozen=True)
class Claim:
    partition: int
    epoch: int
    secret: bytes


@dataclass
class _Callback:
    partition: int | None
    instance_id: str | None  # set for record callbacks
    done: Callable[..., None]


@dataclass
class _Batch:
    records: list[tuple[int, str, NewRecord]] = field(default_factory=list)
    stamps: dict[tuple[str, str], tuple[int, str, Any, str, Any]] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    # instance -> (partition, wake_at as text: 'infinity', '' for NULL, or ISO time, signal seen)
    wakes: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    finishes: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    callbacks: list[_Callback] = field(default_factory=list)
    dropped: list[_Callback] = field(default_factory=list)

    def partitions(self) -> set[int]:
        found = {p for p, _, _ in self.records}
        found.update(v[0] for v in self.stamps.values())
        found.update(self.running.values())
        found.update(v[0] for v in self.wakes.values())
        found.update(v[0] for v in self.finishes.values())
        return found

    def instances(self) -> set[str]:
        found = {iid for _, iid, _ in self.records}
        found.update(iid for iid, _ in self.stamps)
        found.update(self.wakes)
        found.update(self.finishes)
        return found

    def empty(self) -> bool:
        return not (
            self.records or self.stamps or self.running or self.wakes or self.finishes or self.callbacks
        )

    def drop(self, partitions: set[int]) -> None:
        """Take the writes of these partitions out of the batch (their callbacks get a refusal)."""
        if not partitions:
            return
        self.records = [r for r in self.records if r[0] not in partitions]
        self.stamps = {k: v for k, v in self.stamps.items() if v[0] not in partitions}
        self.running = {k: v for k, v in self.running.items() if v not in partitions}
        self.wakes = {k: v for k, v in self.wakes.items() if v[0] not in partitions}
        self.finishes = {k: v for k, v in self.finishes.items() if v[0] not in partitions}
        self.dropped.extend(c for c in self.callbacks if c.partition in partitions)
        self.callbacks = [c for c in self.callbacks if c.partition not in partitions]


class Batcher:
    """The worker's single writer of instance state (one connection, one flush at a time)."""

    def __init__(
        self,
        dsn: str,
        claims: Callable[[int], Claim | None],
        on_stale: Callable[[int], None],
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self._claims = claims
        self._on_stale = on_stale
        self._on_commit = on_commit  # (records written, seconds the transaction took), after each flush
        self._batch = _Batch()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.flushes = 0
        self.records_written = 0
        self._running: dict[tuple[str, str], tuple[float, tuple[int, str, Any, str, Any]]] = {}
        self._running_instances: dict[str, tuple[float, int]] = {}  # instance -> (due, partition)
        self._running_timer: asyncio.TimerHandle | None = None

    # -- queueing (synchronous, called from the event loop) ------------------------

    def records(self, partition: int, instance_id: str, records: list[NewRecord], done: RecordsDone) -> None:
        """Write records; ``done(committed)`` gets the stored records (``None`` if fenced off)."""
        self._batch.records.extend((partition, instance_id, record) for record in records)
        self._batch.callbacks.append(_Callback(partition, instance_id, done))
        self._kick()

    def stamp(
        self,
        partition: int,
        instance_id: str,
        node_id: str,
        *,
        status: str,
        result: Any,
        scope: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Write a node's status to ``df.nodes``.

        A ``running`` stamp waits ``RUNNING_STAMP_DELAY`` first: a step that
        finishes sooner is stamped once, ``completed``, instead of twice.
        """
        key = (instance_id, node_id)
        value = (partition, status, result, scope, details)
        if status == "running":
            self._running[key] = (time.monotonic() + RUNNING_STAMP_DELAY, value)
            self._schedule_running()
            return
        self._running.pop(key, None)
        self._batch.stamps[key] = value
        self._kick()

    def _schedule_running(self) -> None:
        if self._running_timer is None and (self._running or self._running_instances):
            due = min(
                [d for d, _ in self._running.values()] + [d for d, _ in self._running_instances.values()]
            )
            delay = max(0.0, due - time.monotonic())
            self._running_timer = asyncio.get_running_loop().call_later(delay, self._promote_running)

    def _promote_running(self, everything: bool = False) -> None:
        """Move the running marks that waited long enough into the next flush."""
        self._running_timer = None
        now = time.monotonic()
        ready = [k for k, (due, _) in self._running.items() if everything or due <= now]
        for key in ready:
            _, value = self._running.pop(key)
            self._batch.stamps.setdefault(key, value)
        instances = [i for i, (due, _) in self._running_instances.items() if everything or due <= now]
        for iid in instances:
            _, partition = self._running_instances.pop(iid)
            self._batch.running[iid] = partition
        if ready or instances:
            self._kick()
        self._schedule_running()

    def running(self, partition: int, instance_id: str) -> None:
        """Mark a pending instance running (after ``RUNNING_STAMP_DELAY``, or with its next write)."""
        self._running_instances[instance_id] = (time.monotonic() + RUNNING_STAMP_DELAY, partition)
        self._schedule_running()

    def _take_batch(self) -> _Batch:
        """The batch to flush now, with the running marks of instances it writes anyway."""
        batch, self._batch = self._batch, _Batch()
        if self._running_instances:
            for iid in batch.instances():
                pending = self._running_instances.pop(iid, None)
                if pending is not None and iid not in batch.finishes:
                    batch.running[iid] = pending[1]
        return batch

    def wake(self, partition: int, instance_id: str, at: float | None, seen_signal: int) -> None:
        """Park the instance until ``at`` (``None``: until a signal or a cancel arrives)."""
        when = datetime.fromtimestamp(at, UTC).isoformat() if at is not None else ""
        self._batch.wakes[instance_id] = (partition, when, seen_signal)
        self._kick()

    def finish(self, partition: int, instance_id: str, status: str | None, done: Done) -> None:
        """Make the instance terminal (``status`` None: it already is) and drop its runtime rows."""
        self._batch.finishes[instance_id] = (partition, status)
        self._batch.wakes.pop(instance_id, None)
        self._batch.callbacks.append(_Callback(partition, None, done))
        self._kick()

    def after_flush(self, done: Done) -> None:
        """Call ``done(True)`` once everything queued so far is committed."""
        self._batch.callbacks.append(_Callback(None, None, done))
        self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    async def drain(self) -> None:
        """Wait until every write queued so far is committed (running stamps included)."""
        self._promote_running(everything=True)
        while not self._batch.empty() or not self._idle.is_set():
            self._kick()
            await self._idle.wait()

    # -- flushing ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Flush until ``stop`` is set and nothing is left to write."""
        try:
            while True:
                if self._batch.empty():
                    self._idle.set()
                    if stop.is_set():
                        return
                    self._wakeup.clear()
                    await _first(self._wakeup.wait(), stop.wait())
                    continue
                await self._flush(self._take_batch())
        finally:
            if self._conn is not None:
                await self._conn.close()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:

            async def connect() -> psycopg.AsyncConnection[Any]:
                conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                db.configure_json(conn)
                return conn

            self._conn = await db.retry_async("checkpoint connection", connect)
        return self._conn

    async def _flush(self, batch: _Batch) -> None:
        # Claims released or lost locally cannot be written any more.
        batch.drop({p for p in batch.partitions() if self._claims(p) is None})
        stale: set[int] = set()
        while True:
            conn = await self._connection()
            started = time.monotonic()
            try:
                committed = await self._write(conn, batch)
                seconds = time.monotonic() - started
                break
            except psycopg.OperationalError as exc:
                logger.warning(
                    "checkpoint flush failed (%s); retrying",
                    db.primary_message(exc),
                    extra={"action": "checkpoint_retry"},
                )
                await conn.close()
                await asyncio.sleep(0.2)
            except psycopg.Error as exc:
                if exc.sqlstate != db.STALE_EPOCH:
                    raise
                # Some claim went stale: find out which, leave their writes out, write the rest.
                found = await self._stale(conn, batch)
                stale |= found
                batch.drop(found)
        for partition in stale:
            self._on_stale(partition)
        self.flushes += 1
        by_instance: dict[str, dict[str, Record]] = {}
        for (iid, key), record in committed.items():
            by_instance.setdefault(iid, {})[key] = record
        for callback in batch.callbacks:
            if callback.instance_id is not None:
                callback.done(by_instance.get(callback.instance_id, {}))
            else:
                callback.done(True)
        for callback in batch.dropped:
            callback.done(None if callback.instance_id is not None else False)
        if self._on_commit is not None:
            try:
                self._on_commit(len(batch.records), seconds)
            except Exception:  # an observer must not stop the worker's only writer
                logger.exception(
                    "checkpoint commit observer failed", extra={"action": "checkpoint_observer_failed"}
                )

    def _fence(self, batch: _Batch) -> dict[str, Any]:
        claims = [c for c in (self._claims(p) for p in sorted(batch.partitions())) if c is not None]
        return {
            "partitions": [c.partition for c in claims],
            "epochs": [c.epoch for c in claims],
            "secrets": [c.secret for c in claims],
        }

    async def _stale(self, conn: psycopg.AsyncConnection[Any], batch: _Batch) -> set[int]:
        cur = await conn.execute(queries.get("fence_check"), self._fence(batch))
        row = await cur.fetchone()
        return set(row[0]) if row and row[0] else set()

    async def _write(
        self, conn: psycopg.AsyncConnection[Any], batch: _Batch
    ) -> dict[tuple[str, str], Record]:
        """One transaction, sent as one pipeline: fence, records, node stamps, instance state."""
        wanted = {(iid, nr.key): nr for _, iid, nr in batch.records}
        records_cur = None
        async with conn.pipeline() as pipeline, conn.transaction():
            if batch.partitions():
                await conn.execute(queries.get("fence_all"), self._fence(batch))
            if wanted:
                records_cur = await conn.execute(
                    queries.get("write_records"), {"rows": _records_json(wanted)}
                )
            await self._write_state(conn, batch)
            await pipeline.sync()
            inserted = set()
            if records_cur is not None:
                inserted = {(str(i), str(k)) for i, k in await records_cur.fetchall()}
            conflicts = [ik for ik in wanted if ik not in inserted]
            committed = {ik: wanted[ik].record for ik in inserted}
            if conflicts:
                # Recorded before (a flush sent again after an unknown commit outcome,
                # or a SQL step that committed its own checkpoint): the stored value wins.
                cur = await conn.execute(
                    queries.get("get_records"),
                    {"rows": orjson.dumps([{"iid": i, "key": k} for i, k in conflicts]).decode()},
                )
                for iid, key, kind, ok, value, guarantee in await cur.fetchall():
                    committed[(str(iid), str(key))] = Record(str(kind), bool(ok), value, guarantee)
            crashpoints.hit("before_checkpoint_commit")
        crashpoints.hit("after_checkpoint_commit")
        self.records_written += len(inserted)
        return committed

    async def _write_state(self, conn: psycopg.AsyncConnection[Any], batch: _Batch) -> None:
        if batch.stamps:
            rows = [
                {
                    "iid": iid,
                    "nid": nid,
                    "status": v[1],
                    "result": None if v[1] == "running" else v[2],
                    "scope": v[3],
                    "details": v[4] or None,
                }
                for (iid, nid), v in batch.stamps.items()
            ]
            await conn.execute(queries.get("stamp_nodes"), {"rows": _json(rows)})
        if batch.running:
            await conn.execute(queries.get("mark_running"), {"ids": _json(list(batch.running))})
        progressed = {iid for _, iid, _ in batch.records} | {iid for iid, _ in batch.stamps}
        if progressed:
            await conn.execute(queries.get("made_progress"), {"ids": _json(sorted(progressed))})
        if batch.wakes:
            rows = [{"iid": iid, "wake": v[1] or None, "seen": v[2]} for iid, v in batch.wakes.items()]
            await conn.execute(queries.get("set_wake"), {"rows": _json(rows)})
        if batch.finishes:
            rows = [{"iid": iid, "status": v[1]} for iid, v in batch.finishes.items()]
            await conn.execute(queries.get("finish_instances"), {"rows": _json(rows)})


def _records_json(wanted: dict[tuple[str, str], NewRecord]) -> str:
    return _json(
        [
            {
                "iid": iid,
                "key": key,
                "kind": nr.record.kind,
                "ok": nr.record.ok,
                "value": nr.record.value,
                "guarantee": nr.record.guarantee,
                "signal": nr.consumes_signal,
                "drops": list(nr.drop_prefixes) or None,
            }
            for (iid, key), nr in wanted.items()
        ]
    )


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _first(*waits: Any) -> None:
    """Wait for the first of several awaitables; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
