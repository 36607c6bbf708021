"""Partition claims: session advisory locks on a dedicated connection, epochs, fair share.

A worker owns partition ``p`` while its lock connection holds the session
advisory lock ``(PARTITION_NS, p)``. PostgreSQL frees the lock the moment
that connection ends, so a SIGKILLed worker's partitions are free within
milliseconds, with no lease timer. Each claim bumps the partition's epoch
(under the exclusive fence lock, so no checkpoint of the previous owner is
half-way) and stores the hash of a fresh secret; checkpoints carry both.

Membership is a lock too: each live worker holds ``(MEMBER_NS, key)``, so
the number of live workers, across hosts, is the number of such locks held.
Each worker aims for ``ceil(P / live)`` partitions: it claims free ones up to
that share and lets extras go (after draining them) when workers join.

The same connection LISTENs for wake-ups. Everything on it runs in one task,
so the connection is never used concurrently. If it breaks, every lock is
gone: the worker forgets all its partitions at once, reconnects with backoff
and claims again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

import psycopg

from . import db, keys, queries
from .checkpoint import Claim

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

SCAN_INTERVAL = 0.25  # seconds between looks at membership and free partitions
#: After a ``rebalance`` notification (a worker died, see :data:`keys.REBALANCE`),
#: look this often for a while: the dead worker's backend may take a few
#: milliseconds to notice and free its locks.
FAST_SCAN_INTERVAL = 0.02  # seconds
FAST_SCAN_WINDOW = 1.0  # seconds
HEARTBEAT_INTERVAL = 2.0  # seconds between heartbeat rows
#: Right after boot, assume every worker of this host will join soon, so the
#: first worker up does not grab everything only to hand most of it back.
STARTUP_GRACE = 2.0  # seconds
MAX_MEMBER_KEYS = 100_000


class PartitionManager:
    def __init__(
        self,
        dsn: str,
        *,
        worker_id: str,
        cluster_id: str,
        slot: int,
        cpu: int | None,
        total: int,
        local_workers: int,
        on_claimed: Callable[[int], Awaitable[None]],
        on_release: Callable[[int], Awaitable[None]],
        on_lost: Callable[[set[int]], None],
        on_notify: Callable[[str], None],
    ) -> None:
        self.dsn = dsn
        self.worker_id = worker_id
        self.cluster_id = cluster_id
        self.slot = slot
        self.cpu = cpu
        self.total = total
        self.local_workers = local_workers
        self.on_claimed = on_claimed
        self.on_release = on_release
        self.on_lost = on_lost
        self.on_notify = on_notify
        self.claims: dict[int, Claim] = {}
        self.member_key: int | None = None
        self.live = 1
        self.state = "running"
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._booted = time.monotonic()
        self._last_heartbeat = 0.0
        self._ready_marked = False
        self._fast_until = 0.0  # monotonic time until which the scan runs every FAST_SCAN_INTERVAL
        self._grace_over = False  # STARTUP_GRACE ends early once every local worker is live
        self.connected = asyncio.Event()
        self.poke = asyncio.Event()

    def claim(self, partition: int) -> Claim | None:
        return self.claims.get(partition)

    def owned(self) -> list[int]:
        return sorted(self.claims)

    # -- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Hold, claim and balance partitions until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self._connect(stop)
                while not stop.is_set():
                    await self._listen(self._scan_interval())
                    if stop.is_set():
                        break
                    await self._balance()
                    await self._heartbeat()
            except psycopg.OperationalError as exc:
                self._lost_everything(f"lock connection failed: {db.primary_message(exc)}")
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                raise

    async def _connect(self, stop: asyncio.Event) -> None:
        async def connect() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(db.runtime_conninfo(self.dsn), autocommit=True)

        self._conn = await db.retry_async("lock connection", connect, stop=stop)
        conn = self._conn
        self.member_key = await self._take_member_key(conn)
        await conn.execute(
            queries.get("register_worker"),
            {
                "id": self.worker_id,
                "member_key": self.member_key,
                "cluster_id": self.cluster_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "slot": self.slot,
                "cpu": self.cpu,
            },
        )
        await conn.execute(queries.get("prune_member"), {"member_key": self.member_key, "id": self.worker_id})
        await conn.execute(f"LISTEN {keys.WAKE_CHANNEL}")
        self.poke.set()  # balance at once, not after the first scan interval
        self.connected.set()
        logger.info(
            "worker %s joined as member %d",
            self.worker_id[:8],
            self.member_key,
            extra={"action": "member_joined"},
        )

    async def _take_member_key(self, conn: psycopg.AsyncConnection[Any]) -> int:
        start = random.randrange(MAX_MEMBER_KEYS)
        for offset in range(MAX_MEMBER_KEYS):
            key = (start + offset) % MAX_MEMBER_KEYS
            row = await (await conn.execute(queries.get("lock_member"), {"member_key": key})).fetchone()
            if row and row[0]:
                return key
        raise RuntimeError("no free membership key")

    def _scan_interval(self) -> float:
        return FAST_SCAN_INTERVAL if time.monotonic() < self._fast_until else SCAN_INTERVAL

    async def _listen(self, timeout: float) -> None:
        """Hand notifications to ``on_notify`` for ``timeout`` seconds; return early to rebalance."""
        conn = self._conn
        assert conn is not None
        if self.poke.is_set():
            self.poke.clear()
            timeout = 0.0
        deadline = time.monotonic() + timeout
        while True:
            rebalance = False
            # stop_after=1: return after each packet (all of its notifications
            # are yielded), so a rebalance request is acted on at once.
            async for notify in conn.notifies(timeout=max(0.0, deadline - time.monotonic()), stop_after=1):
                if notify.payload == keys.REBALANCE:
                    rebalance = True
                else:
                    self.on_notify(notify.payload)
            if rebalance:
                self._fast_until = time.monotonic() + FAST_SCAN_WINDOW
                return
            if time.monotonic() >= deadline:
                return

    def target(self) -> int:
        live = self.live
        if live >= self.local_workers:
            self._grace_over = True  # everyone came: a later drop in live is a death, act on it
        if not self._grace_over and time.monotonic() - self._booted < STARTUP_GRACE:
            live = max(live, self.local_workers)
        if self.state != "running":
            return 0
        return math.ceil(self.total / max(1, live))

    async def _balance(self) -> None:
        conn = self._conn
        assert conn is not None
        row = await (await conn.execute(queries.get("live_members"))).fetchone()
        self.live = int(row[0]) if row else 1
        target = self.target()
        if len(self.claims) > target:
            extra = sorted(self.claims, reverse=True)[: len(self.claims) - target]
            for partition in extra:
                await self._release(partition)
            return
        if len(self.claims) >= target:
            return
        held = {int(r[0]) for r in await (await conn.execute(queries.get("held_partitions"))).fetchall()}
        free = [p for p in range(self.total) if p not in held and p not in self.claims]
        random.shuffle(free)
        if free:
            await self._claim(free[: target - len(self.claims)])

    async def _claim(self, candidates: list[int]) -> None:
        """Lock what is still free of ``candidates`` and take it over, in one transaction.

        Claiming all of a dead worker's partitions at once keeps recovery to a
        few round trips however many partitions it held.
        """
        conn = self._conn
        assert conn is not None
        rows = await (
            await conn.execute(queries.get("try_lock_partitions"), {"partitions": candidates})
        ).fetchall()
        locked = sorted(int(row[0]) for row in rows)
        if not locked:
            return
        secrets_by_partition = {partition: secrets.token_bytes(32) for partition in locked}
        async with conn.transaction():
            await conn.execute(queries.get("fence_exclusive"), {"partitions": locked})
            bumped = await (
                await conn.execute(
                    queries.get("bump_epoch"),
                    {
                        "partitions": locked,
                        "secrets": [secrets_by_partition[p] for p in locked],
                        "worker_id": self.worker_id,
                    },
                )
            ).fetchall()
            await conn.execute(queries.get("wake_recovered"), {"partitions": locked})
            owned = sorted(set(self.claims) | {int(row[0]) for row in bumped})
            await conn.execute(  # durable-cluster status shows the new claims at once
                queries.get("heartbeat_worker"),
                {"id": self.worker_id, "partitions": owned, "state": self.state},
            )
        epochs = {int(partition): int(epoch) for partition, epoch in bumped}
        missing = [partition for partition in locked if partition not in epochs]
        if missing:
            await conn.execute(queries.get("unlock_partitions"), {"partitions": missing})
            logger.error("partitions %s do not exist in durable.partitions", missing)
        for partition, epoch in sorted(epochs.items()):
            self.claims[partition] = Claim(partition, epoch, secrets_by_partition[partition])
            logger.debug(
                "claimed partition %d (epoch %d)",
                partition,
                epoch,
                extra={"action": "partition_claimed", "partition": partition},
            )
        if epochs and not self._ready_marked:
            await conn.execute(queries.get("mark_ready"))
            self._ready_marked = True
        for partition in sorted(epochs):
            await self.on_claimed(partition)

    async def _release(self, partition: int) -> None:
        """Drain the partition's in-flight steps, then let it go."""
        await self.on_release(partition)
        self.claims.pop(partition, None)
        if self._conn is not None and not self._conn.closed:
            await self._conn.execute(queries.get("unlock_partitions"), {"partitions": [partition]})
            await self._conn.execute(
                queries.get("heartbeat_worker"),
                {"id": self.worker_id, "partitions": self.owned(), "state": self.state},
            )
        logger.debug(
            "released partition %d",
            partition,
            extra={"action": "partition_released", "partition": partition},
        )

    async def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < HEARTBEAT_INTERVAL:
            return
        self._last_heartbeat = now
        conn = self._conn
        assert conn is not None
        await conn.execute(
            queries.get("heartbeat_worker"),
            {"id": self.worker_id, "partitions": self.owned(), "state": self.state},
        )
        await conn.execute(queries.get("heartbeat_epoch"), {"cluster_id": self.cluster_id})

    def _lost_everything(self, reason: str) -> None:
        self.connected.clear()
        if self.claims:
            logger.warning(
                "%s: dropping %d partitions",
                reason,
                len(self.claims),
                extra={"action": "partitions_lost"},
            )
            lost = set(self.claims)
            self.claims.clear()
            self.on_lost(lost)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            asyncio.get_running_loop().create_task(_close_quietly(conn))

    def lose(self, partition: int) -> None:
        """A checkpoint found this claim stale: another worker claimed the partition.

        That worker could only take the lock because ours was gone (the lock
        connection died or was terminated), so there is nothing to unlock.
        """
        if self.claims.pop(partition, None) is not None:
            logger.warning(
                "partition %d was claimed by another worker: letting it go",
                partition,
                extra={"action": "partition_fenced", "partition": partition},
            )
            self.on_lost({partition})

    async def stop(self) -> None:
        """Release every partition (drained by the caller) and leave the membership."""
        self.state = "stopping"
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            await conn.execute(queries.get("unlock_partitions"), {"partitions": sorted(self.claims)})
            self.claims.clear()
            await conn.execute(queries.get("remove_worker"), {"id": self.worker_id})
        except psycopg.Error as exc:
            logger.warning(
                "could not release partitions cleanly (%s); they free with the connection",
                db.primary_message(exc),
            )
        finally:
            await conn.close()
            self._conn = None


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        await conn.close()
    except Exception:  # the connection is already broken
        logger.debug("closing a broken lock connection failed", exc_info=True)
