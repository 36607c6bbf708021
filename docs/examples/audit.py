"""Example plugin: an async step with its own connection pool (``psycopg_pool``).

``audit.record`` ``{"event": "price list imported", "detail": {...}}`` writes
one row to the ``audit_log`` table of the database at ``AUDIT_DSN`` (an
environment variable of the workers: another database, or the same one with a
role of its own) and returns ``{"key": "<idempotency key>", "inserted":
true}``. The row's primary key is ``ctx.idempotency_key``, so a step that runs
again (a worker died before its checkpoint) never writes twice; it then
returns ``"inserted": false``.

Each worker process has its own pool: opened in ``durable_worker_started``,
closed in ``durable_worker_exiting``. Both hooks are synchronous calls made on
the worker's event loop, so they start the pool's async ``open()`` and
``close()`` as tasks; the handler awaits the opening before it borrows a
connection. A rolling restart or a reload boots new workers, which open new
pools with the new code.

Create the table first, in the ``AUDIT_DSN`` database::

    CREATE TABLE audit_log (
        idempotency_key text PRIMARY KEY,
        instance_id     text NOT NULL,
        event           text NOT NULL,
        detail          jsonb NOT NULL DEFAULT '{}',
        recorded_at     timestamptz NOT NULL DEFAULT now()
    );

and in a workflow::

    SELECT df.start(
        'UPDATE prices SET price = price * 1.1 WHERE sku = ''A1'' RETURNING sku' |=> 'u'
        ~> df.step('audit.record', '{"event": "price raised", "detail": {"sku": "$u.sku"}}')
    );

The pool logs in as the ``AUDIT_DSN`` role, not as the role that started the
workflow: the step only ever runs its one fixed, parameterised statement.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from durable_cluster import RetryStep, StepContext, StepFailed, StepRegistry, hookimpl

__version__ = "1.0"

log = logging.getLogger(__name__)

INSERT = """
    INSERT INTO audit_log (idempotency_key, instance_id, event, detail)
    VALUES (%(key)s, %(instance)s, %(event)s, %(detail)s)
    ON CONFLICT (idempotency_key) DO NOTHING
"""


class _Pool:
    """This worker process's pool, and the tasks opening and closing it."""

    pool: AsyncConnectionPool | None = None
    opening: asyncio.Task[None] | None = None
    closing: asyncio.Task[None] | None = None


_worker = _Pool()


@hookimpl
def durable_register_steps(registry: StepRegistry) -> None:
    registry.add("audit.record", record, description="one idempotent row in audit_log (AUDIT_DSN)")


@hookimpl
def durable_worker_started(worker: Any) -> None:
    dsn = os.environ.get("AUDIT_DSN")
    if not dsn:
        log.warning("AUDIT_DSN is not set: audit.record steps will fail")
        return
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False, name=f"audit-{worker.slot}")
    _worker.pool = pool
    _worker.opening = asyncio.get_running_loop().create_task(pool.open())
    log.info("audit pool opening (worker %d, generation %d)", worker.slot, worker.generation)


@hookimpl
def durable_worker_exiting(worker: Any) -> None:
    pool, _worker.pool = _worker.pool, None
    if pool is not None:
        _worker.closing = asyncio.get_running_loop().create_task(_close(pool, worker.slot))


async def _close(pool: AsyncConnectionPool, slot: int) -> None:
    await pool.close()
    log.info("audit pool closed (worker %d)", slot)


async def record(ctx: StepContext) -> dict[str, Any]:
    pool, opening = _worker.pool, _worker.opening
    if pool is None or opening is None:
        raise StepFailed("audit.record needs AUDIT_DSN in the workers' environment")
    event = ctx.args.get("event") if isinstance(ctx.args, dict) else None
    if not isinstance(event, str) or not event:
        raise StepFailed('audit.record takes {"event": "what happened", "detail": {...}}')
    await opening
    try:
        async with pool.connection(timeout=10) as conn:  # commits when the block ends
            cursor = await conn.execute(
                INSERT,
                {
                    "key": ctx.idempotency_key,
                    "instance": ctx.instance_id,
                    "event": event,
                    "detail": Jsonb(ctx.args.get("detail") or {}),
                },
            )
            inserted = cursor.rowcount == 1
    except (psycopg.OperationalError, PoolTimeout) as exc:
        # The audit database is unreachable for now: let the runtime run the step again.
        raise RetryStep(f"audit database unavailable: {exc}") from exc
    return {"key": ctx.idempotency_key, "inserted": inserted}
