"""The built-in SQL step: one statement, as the submitting role, checkpointed exactly once.

On the home database the statement and the step's checkpoint run in one
transaction on a connection authenticated as the submitter, so the step's
effects and its recorded result commit together or not at all: a crash
before the commit re-runs the step, a crash after it never does.

Statements that cannot run inside a transaction block (VACUUM, CREATE
DATABASE, CREATE INDEX CONCURRENTLY, procedures that COMMIT) are run again in
autocommit mode and recorded afterwards: at-least-once, as pg_durable runs
every step. Steps in another database (``df.start(..., database => 'x')``)
are at-least-once too. ``df.nodes.status_details.guarantee`` says which
applied.

The statement is sent with the extended query protocol (binary results), so
PostgreSQL rejects several ``;``-separated statements, as in pg_durable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from durable_cluster import StepContext, StepFailed, hookimpl
from durable_cluster.context import checkpoint_failure
from durable_cluster.encoding import UnsupportedColumnType, encode_rows
from durable_cluster.errors import TransientStepError

if TYPE_CHECKING:
    from durable_cluster import StepRegistry

#: SQLSTATEs meaning "not inside a transaction block, please".
NEEDS_AUTOCOMMIT = (pg_errors.ActiveSqlTransaction, pg_errors.InvalidTransactionTermination)
#: SQLSTATEs that say nothing about the statement itself: run it again (the
#: runtime bounds how often). Connection loss, server shutdown or restart,
#: serialization failures and deadlocks, exhausted resources.
TRANSIENT = ("08", "57P01", "57P02", "57P03", "40001", "40P01", "53")


@hookimpl
def durable_register_steps(registry: StepRegistry) -> None:
    registry.add("sql", run_sql, description="one SQL statement, as the submitting role")


async def run_sql(ctx: StepContext) -> Any:
    query = str(ctx.args)
    try:
        async with ctx.connection() as conn:
            if not ctx.home_database:
                return await _autocommit(ctx, conn, query)
            try:
                return await _exactly_once(ctx, conn, query)
            except NEEDS_AUTOCOMMIT:
                return await _autocommit(ctx, conn, query)
    except psycopg.Error as exc:
        raise _classify(exc) from exc


async def _exactly_once(ctx: StepContext, conn: psycopg.AsyncConnection[Any], query: str) -> Any:
    """BEGIN + the statement in one round trip, then checkpoint + COMMIT in another."""
    checkpointing = False
    try:
        async with conn.pipeline() as pipeline, conn.transaction():
            cur = conn.cursor(binary=True)
            await cur.execute(query.encode(), binary=True)  # extended protocol: one statement only
            await pipeline.sync()
            value = await _encode(cur)
            if conn.info.transaction_status != TransactionStatus.INTRANS:
                # The statement ended our transaction itself (COMMIT, ROLLBACK):
                # its effects stand on their own, recorded afterwards.
                return value
            checkpointing = True
            await ctx.commit_with_checkpoint(conn, value)
    except psycopg.Error as exc:
        # The checkpoint's refusals surface when the pipeline syncs, with the COMMIT.
        mapped = checkpoint_failure(ctx, exc) if checkpointing else None
        if mapped is not None:
            raise mapped from exc
        raise
    return value


async def _autocommit(ctx: StepContext, conn: psycopg.AsyncConnection[Any], query: str) -> Any:
    await conn.set_autocommit(True)
    try:
        await _check_role(ctx, conn)
        return await _execute(conn, query)
    finally:
        if not conn.closed:
            await conn.set_autocommit(False)


async def _check_role(ctx: StepContext, conn: psycopg.AsyncConnection[Any]) -> None:
    """Outside the checkpoint (autocommit, another database): is the submitter still allowed?

    A pooled connection outlives a role's LOGIN privilege, and even the role
    (renamed, or dropped and recreated under the same name). The checkpoint
    function checks both on the exactly-once path; this does it here.
    """
    cur = await conn.execute(
        "SELECT r.oid::bigint, r.rolcanlogin FROM pg_catalog.pg_roles r WHERE r.rolname = session_user"
    )
    row = await cur.fetchone()
    reason = None
    if row is None or (ctx.role_oid and int(row[0]) != ctx.role_oid):
        reason = "it was dropped or replaced"
    elif not row[1]:
        reason = "it no longer has the LOGIN privilege"
    if reason:
        raise StepFailed(
            f'role "{ctx.submitted_by}" may no longer run steps of instance {ctx.instance_id}: {reason}'
        )


async def _execute(conn: psycopg.AsyncConnection[Any], query: str) -> Any:
    async with conn.cursor(binary=True) as cur:
        await cur.execute(query.encode(), binary=True)  # extended protocol: one statement only
        return await _encode(cur)


async def _encode(cur: psycopg.AsyncCursor[Any]) -> Any:
    if cur.description is None:
        return {"rows": [], "row_count": 0}
    rows = await cur.fetchall()
    try:
        return encode_rows(cur.description, rows)
    except UnsupportedColumnType as exc:
        raise StepFailed(str(exc)) from exc


def _classify(exc: psycopg.Error) -> Exception:
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.OperationalError) and not state:
        return TransientStepError(f"connection lost: {_message(exc)}")
    if state.startswith(TRANSIENT):
        return TransientStepError(f"SQL execution failed: {_message(exc)}")
    return StepFailed(f"SQL execution failed: {_message(exc)}")


def _message(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.diag else None
    if primary:
        return primary
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
