"""Connections authenticated as submitting roles, pooled per (role, database).

A step's SQL runs on a connection that *logged in* as the role that started
the instance (not ``SET ROLE`` from a privileged session), so ``RESET ROLE``,
``SET ROLE`` or ``SET SESSION AUTHORIZATION`` inside a step gain nothing.
Connections are reused per (role, database) and reset between uses with
everything ``DISCARD ALL`` does but dropping cached plans (see ``RESET``);
``df.in_workflow`` is a startup option, so the reset keeps it. Idle connections close after ``IDLE_SECONDS``.

This is a small pool of its own rather than psycopg_pool: a role that cannot
log in must fail its step at once with the server's reason, where a
background-connecting pool would only report a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg

from . import db
from .errors import StepFailed, TransientStepError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

logger = logging.getLogger(__name__)

IDLE_SECONDS = 60.0
#: DISCARD ALL without DISCARD PLANS: every piece of session state a step can
#: leave behind (role, settings, cursors, prepared statements, LISTEN, advisory
#: locks, temporary objects, sequence state), while the server keeps its
#: cached plans (of the checkpoint function, above all) from step to step.
RESET = (
    b"CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *;"
    b" SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)
MAX_IDLE_PER_KEY = 8
#: SQLSTATEs at connect time that are the role's or database's fault, not a glitch.
PERMANENT_CONNECT_ERRORS = ("28", "3D", "42")


class RolePools:
    def __init__(
        self,
        dsn: str,
        *,
        slots: int,
        acquire_timeout: float,
        max_user_connections: int,
        statement_timeout: float | None = None,
    ) -> None:
        self._dsn = dsn
        self._slots = asyncio.Semaphore(slots)
        self._slot_count = slots
        self._acquire_timeout = acquire_timeout
        self._max_user_connections = max_user_connections
        self._statement_timeout = statement_timeout
        self._idle: dict[tuple[str, str | None], list[tuple[float, psycopg.AsyncConnection[Any]]]] = {}
        self._resetting: dict[asyncio.Task[None], tuple[str, str | None]] = {}
        self._open = 0

    @contextlib.asynccontextmanager
    async def connection(
        self, role: str, database: str | None
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection as ``role`` to ``database`` (None: the home database), holding an execution slot."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self._acquire_timeout)
        except TimeoutError:
            raise StepFailed(
                f"pg_durable: connection limit reached (max_user_connections={self._max_user_connections}). "
                f"Timed out after {self._acquire_timeout:g}s waiting for an available execution slot."
            ) from None
        try:
            conn = await self._get(role, database)
            healthy = False
            try:
                yield conn
                healthy = True
            finally:
                await self._put(role, database, conn, healthy)
        finally:
            self._slots.release()

    async def _get(self, role: str, database: str | None) -> psycopg.AsyncConnection[Any]:
        key = (role, database)
        while True:
            idle = self._idle.get(key)
            while idle:
                _, conn = idle.pop()
                if not conn.closed:
                    return conn
            # A connection of this key being reset is about to be idle: wait for it
            # rather than opening (and authenticating) another one.
            pending = [t for t, k in self._resetting.items() if k == key]
            if not pending:
                break
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        options = "-c df.in_workflow=true"
        if self._statement_timeout:
            options += f" -c statement_timeout={int(self._statement_timeout * 1000)}"
        info = db.conninfo(
            self._dsn,
            user=role,
            dbname=database,
            application_name="durable-cluster step",
            options=options,
        )
        try:
            conn = await psycopg.AsyncConnection.connect(info, autocommit=False, prepare_threshold=None)
        except psycopg.OperationalError as exc:
            where = f'database "{database}"' if database else "the home database"
            message = f'Cannot connect to {where} as role "{role}": {db.primary_message(exc)}'
            if (exc.sqlstate or "").startswith(PERMANENT_CONNECT_ERRORS) or _looks_permanent(exc):
                raise StepFailed(message) from exc
            raise TransientStepError(message) from exc
        db.configure_json(conn)
        self._open += 1
        return conn

    async def _put(
        self, role: str, database: str | None, conn: psycopg.AsyncConnection[Any], healthy: bool
    ) -> None:
        """Give a connection back: reset it off the step's path, then make it idle."""
        if conn.closed:
            self._open -= 1
            return
        task = asyncio.get_running_loop().create_task(self._reset(role, database, conn, healthy))
        self._resetting[task] = (role, database)
        task.add_done_callback(self._forget_reset)

    def _forget_reset(self, task: asyncio.Task[None]) -> None:
        self._resetting.pop(task, None)

    async def _reset(
        self, role: str, database: str | None, conn: psycopg.AsyncConnection[Any], healthy: bool
    ) -> None:
        try:
            if not healthy or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.rollback()
            await conn.set_autocommit(True)
            await conn.execute(RESET)
            await conn.set_autocommit(False)
        except (psycopg.Error, asyncio.CancelledError):
            await conn.close()
            self._open -= 1
            return
        idle = self._idle.setdefault((role, database), [])
        if len(idle) >= MAX_IDLE_PER_KEY:
            await conn.close()
            self._open -= 1
            return
        idle.append((time.monotonic(), conn))

    async def close_idle(self, older_than: float = IDLE_SECONDS) -> None:
        limit = time.monotonic() - older_than
        for key, idle in list(self._idle.items()):
            keep = []
            for since, conn in idle:
                if since < limit or conn.closed:
                    await conn.close()
                    self._open -= 1
                else:
                    keep.append((since, conn))
            self._idle[key] = keep

    async def close(self) -> None:
        if self._resetting:
            await asyncio.gather(*list(self._resetting), return_exceptions=True)
        await self.close_idle(older_than=-1.0)

    @property
    def open_connections(self) -> int:
        return self._open


def _looks_permanent(exc: psycopg.OperationalError) -> bool:
    # libpq reports some server-side refusals without a SQLSTATE on the exception.
    text = str(exc)
    return any(
        s in text
        for s in (
            "does not exist",
            "not permitted to log in",
            "authentication failed",
            "no pg_hba.conf entry",
            "permission denied",
        )
    )
