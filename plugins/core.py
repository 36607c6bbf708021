"""The core ``durable_run_step``: look the kind up and call its handler.

Registered last (trylast), so every other implementation, wrappers included,
runs first. Synchronous handlers run in a thread pool, so they never block the
worker's event loop.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any

from durable_cluster import hookimpl

if TYPE_CHECKING:
    from durable_cluster import StepContext


@hookimpl(trylast=True)
def durable_run_step(ctx: StepContext) -> Any:
    return _call(ctx)


async def _call(ctx: StepContext) -> Any:
    handler = ctx.handler
    if handler is None:
        raise RuntimeError(f"no handler for step kind {ctx.kind!r}")
    if inspect.iscoroutinefunction(handler):
        return await handler(ctx)
    result = await asyncio.to_thread(handler, ctx)
    if inspect.isawaitable(result):
        return await result
    return result
