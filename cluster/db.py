"""Connections: conninfo for submitting roles, backoff, orjson, SQLSTATE helpers.

Workers connect after the fork, never before (the coordinator holds no
connection, pool or thread when it forks).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import set_json_dumps, set_json_loads

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

APPLICATION_NAME = "durable-cluster"
#: TCP keepalives so a silently dead peer is noticed (partition locks depend on it).
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
CONNECT_TIMEOUT = 10  # seconds

# SQLSTATEs raised by durable-cluster's own SQL.
STALE_EPOCH = "DC001"
INSTANCE_TERMINAL = "DC002"
CHECKPOINT_REFUSED = "DC003"
LOGIN_LOST = "DC004"


def conninfo(
    dsn: str,
    *,
    user: str | None = None,
    dbname: str | None = None,
    application_name: str = APPLICATION_NAME,
    **extra: str,
) -> str:
    """``dsn`` with another user and/or database.

    Logging in as a submitting role drops the worker's password: the role
    authenticates by the server's own rules for it (trust or peer on the local
    socket, a pg_ident map, a client certificate, or ~/.pgpass).
    """
    params: dict[str, Any] = conninfo_to_dict(dsn)
    if user is not None and user != params.get("user"):
        params["user"] = user
        params.pop("password", None)
    if dbname is not None:
        params["dbname"] = dbname
    params["application_name"] = application_name
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    if not str(params.get("host", "")).startswith("/") and params.get("host"):
        for key, value in KEEPALIVES.items():
            params.setdefault(key, value)
    params.update(extra)
    return make_conninfo("", **params)


#: The runtime's statements join a batch passed as JSON or arrays (a few rows;
#: the planner guesses 100 for a set-returning function) with big tables by
#: key. Left to itself the planner hashes the batch and scans the whole table
#: (df.nodes, df.instances, durable.runs) on every checkpoint flush; nested
#: loops over the primary keys are what these statements want.
KEYED_BATCH_PLANS = "-c enable_hashjoin=off -c enable_mergejoin=off"


def runtime_conninfo(dsn: str) -> str:
    """The worker's own connections: ``search_path`` pinned to ``pg_catalog``.

    Runtime queries qualify every object; pinning the path as well means a
    function a user creates in ``public`` can never be picked over a built-in
    by the worker's (privileged) session.
    """
    options = str(conninfo_to_dict(dsn).get("options") or "")
    return conninfo(dsn, options=f"{options} -c search_path=pg_catalog,pg_temp {KEYED_BATCH_PLANS}".strip())


def dsn_user(dsn: str) -> str | None:
    value = conninfo_to_dict(dsn).get("user")
    return str(value) if value is not None else None


def configure_json(conn: psycopg.AsyncConnection[Any] | psycopg.Connection[Any]) -> None:
    """Use orjson for json/jsonb on this connection only."""
    set_json_dumps(orjson.dumps, context=conn)
    set_json_loads(orjson.loads, context=conn)


def backoff_delays(initial: float = 0.1, maximum: float = 5.0) -> Callable[[], float]:
    """Exponential backoff with full jitter: each call returns the next delay."""
    state = {"next": initial}

    def delay() -> float:
        current = state["next"]
        state["next"] = min(current * 2, maximum)
        return random.uniform(current / 2, current)

    return delay


async def retry_async(
    what: str,
    attempt: Callable[[], Awaitable[Any]],
    *,
    stop: asyncio.Event | None = None,
    maximum: float = 5.0,
) -> Any:
    """Run ``attempt`` until it succeeds, logging each failure clearly, with backoff."""
    delay = backoff_delays(maximum=maximum)
    failures = 0
    while True:
        try:
            return await attempt()
        except psycopg.OperationalError as exc:
            failures += 1
            wait = delay()
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log = logger.warning if failures in {1, 2} or failures % 20 == 0 else logger.debug
            log(
                "%s failed (%s); retrying in %.1fs",
                what,
                message,
                wait,
                extra={"action": "db_retry", "attempt": failures},
            )
            if stop is not None:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    continue
                raise
            await asyncio.sleep(wait)


def connect_with_retry(dsn: str, what: str, *, deadline: float | None = None) -> psycopg.Connection[Any]:
    """Blocking connect with backoff (used by the coordinator before forking)."""
    delay = backoff_delays(maximum=5.0)
    failures = 0
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            failures += 1
            if deadline is not None and time.monotonic() > deadline:
                raise
            wait = delay()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning(
                "%s: cannot connect (%s); retrying in %.1fs",
                what,
                first,
                wait,
                extra={"action": "db_retry", "attempt": failures},
            )
            time.sleep(wait)


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None)


def primary_message(exc: BaseException) -> str:
    """The server's primary error message, or the exception text."""
    diag = getattr(exc, "diag", None)
    message = getattr(diag, "message_primary", None) if diag is not None else None
    if message:
        return str(message)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
