"""Step kinds for the benchmark harness (loaded with ``--plugins-dir ops/bench/plugins``).

- ``noop``: does nothing and returns nothing (the cost of the engine alone).
- ``bench_mark``: appends ``<instance id> <worker pid> <wall-clock start time>``
  to the file named by ``args.log`` when it starts, optionally sleeps
  ``args.ms`` milliseconds, and returns nothing. The harness reads the file
  to learn when a step started running (latency to the first step, recovery
  after a worker is killed).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from durable_cluster import hookimpl

if TYPE_CHECKING:
    from durable_cluster import StepContext, StepRegistry


async def noop(ctx: StepContext) -> None:
    return None


async def bench_mark(ctx: StepContext) -> None:
    started = time.time()
    args = ctx.args if isinstance(ctx.args, dict) else {}
    log = args.get("log")
    if isinstance(log, str) and log:
        line = f"{ctx.instance_id} {os.getpid()} {started:.6f}\n".encode()
        # One small O_APPEND write per line: lines from concurrent workers never interleave.
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    ms = args.get("ms")
    if isinstance(ms, int | float) and ms > 0:
        await asyncio.sleep(ms / 1000)


@hookimpl
def durable_register_steps(registry: StepRegistry) -> None:
    registry.add("noop", noop, description="benchmark: does nothing")
    registry.add("bench_mark", bench_mark, description="benchmark: logs its start time, then sleeps args.ms")
