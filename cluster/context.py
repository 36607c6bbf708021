"""StepContext: what a step handler knows about the step it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    import psycopg

    from .config import Settings


class StepServices(Protocol):
    """What the runtime lends a context (implemented by the worker's engine)."""

    def submitter_connection(
        self, ctx: StepContext
    ) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...

    async def checkpoint_in(
        self, ctx: StepContext, conn: psycopg.AsyncConnection[Any], value: Any
    ) -> None: ...

    async def has_function_privilege(self, role: str, signature: str) -> bool: ...


@dataclass
class StepContext:
    """The step being run, handed to a step handler.

    :ivar instance_id: the instance (8 hex digits).
    :ivar node_id: the node in the instance's graph.
    :ivar key: the step key: unique per execution of this node (loop
        iteration, retry attempt), stable across crashes and re-runs.
    :ivar kind: the step kind (``sql``, ``http``, or a plugin's kind).
    :ivar args: the step's input, variables and results already substituted:
        the SQL text for ``sql``, the request for ``http``, the ``args``
        object of ``df.step(kind, args)``.
    :ivar attempt: 1, or the attempt number inside ``df.retry``.
    :ivar iteration: the innermost enclosing loop iteration (0 outside loops).
    :ivar idempotency_key: derived from (instance, node, iteration, attempt);
        sent as ``Idempotency-Key`` by HTTP steps. Use it to make external
        effects idempotent: a step can run more than once after a crash.
    :ivar cancelled: set when the step's result is no longer wanted (the
        instance was cancelled, its RACE was lost, the worker is stopping
        hard). Long handlers should watch it.
    """

    instance_id: str
    node_id: str
    key: str
    kind: str
    args: Any
    attempt: int
    iteration: int
    label: str | None
    variables: Mapping[str, str]
    results: Mapping[str, Any]
    submitted_by: str
    database: str | None
    partition: int
    logger: logging.LoggerAdapter[logging.Logger]
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    #: the submitting role's OID (a renamed role keeps it; a new role of the same name does not).
    role_oid: int = 0
    #: the registered handler for ``kind`` (called by the core ``durable_run_step``).
    handler: Callable[[StepContext], Any] | None = field(default=None, repr=False)
    #: set by :meth:`commit_with_checkpoint`: the result is already durable.
    recorded: bool = False
    #: the guarantee that applied, reported in ``df.nodes.status_details``.
    guarantee: str = "at-least-once"
    #: the worker's settings (read-only), e.g. the HTTP guard's options.
    settings: Settings | None = field(default=None, repr=False)
    _services: StepServices | None = field(default=None, repr=False)
    #: poison detection for SQL steps: awaited once the step holds its execution
    #: slot, so a step still queued for one when its worker dies is not blamed.
    _before_execute: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.instance_id}:{self.key}"

    @property
    def home_database(self) -> bool:
        """True when the step runs in the database that holds the durable-cluster schema."""
        return self.database is None

    def connection(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A connection logged in as the submitting role (to the instance's database).

        Pooled per role and database, reset between uses. Used as an async
        context manager; the connection is not in a transaction.
        """
        if self._services is None:
            raise RuntimeError("this StepContext has no database services")
        return self._services.submitter_connection(self)

    async def commit_with_checkpoint(self, conn: psycopg.AsyncConnection[Any], value: Any) -> None:
        """Record ``value`` as this step's result inside ``conn``'s open transaction.

        The caller then commits: the step's writes and its checkpoint commit
        together or not at all, so the step takes effect exactly once. Only
        for connections from :meth:`connection` to the home database.
        """
        if self._services is None:
            raise RuntimeError("this StepContext has no database services")
        await self._services.checkpoint_in(self, conn, value)
        self.recorded = True
        self.guarantee = "exactly-once"

    async def has_function_privilege(self, signature: str) -> bool:
        """Whether the submitting role may EXECUTE ``signature`` now (e.g. ``df.http(...)``).

        Checked by the runtime's own connection at call time, so a REVOKE takes
        effect for the next step of a running instance.
        """
        if self._services is None:
            raise RuntimeError("this StepContext has no database services")
        return await self._services.has_function_privilege(self.submitted_by, signature)


def step_logger(name: str, instance_id: str, node_id: str, key: str) -> logging.LoggerAdapter[logging.Logger]:
    return logging.LoggerAdapter(
        logging.getLogger(name), {"instance_id": instance_id, "node_id": node_id, "step_key": key}
    )


def checkpoint_failure(ctx: StepContext, exc: BaseException) -> Exception | None:
    """What a database error raised by a step's checkpoint (or its commit) means.

    For handlers that pipeline ``commit_with_checkpoint`` with their COMMIT and
    so see its errors late: returns the runtime's exception for the
    checkpoint's own refusals, or ``None`` for any other error.
    """
    from . import db  # noqa: PLC0415 - keeps the public facade's imports light
    from .errors import AlreadyRecorded, InstanceTerminal, StaleEpoch, StepFailed  # noqa: PLC0415

    state = getattr(exc, "sqlstate", None)
    who = f'role "{ctx.submitted_by}" may no longer run steps of instance {ctx.instance_id}'
    if state == db.STALE_EPOCH:
        return StaleEpoch(db.primary_message(exc))
    if state == db.INSTANCE_TERMINAL:
        return InstanceTerminal(db.primary_message(exc))
    if state == db.CHECKPOINT_REFUSED:
        return StepFailed(f"{who} (dropped, renamed or no longer its submitter)")
    if state == db.LOGIN_LOST:
        return StepFailed(f"{who}: it no longer has the LOGIN privilege")
    if state == "42501":
        return StepFailed(f"{who}: df usage revoked or role dropped ({db.primary_message(exc)})")
    diag = getattr(exc, "diag", None)
    if (
        state == "23505"
        and diag is not None
        and diag.schema_name == "durable"
        and diag.table_name == "journal"
    ):
        return AlreadyRecorded(f"step {ctx.key} of instance {ctx.instance_id} was already recorded")
    return None
