"""The DBOS Transact side of the benchmark: the same workloads, run by DBOS.

Run by ``ops/bench/run.py --with-dbos`` with the Python of a separate virtual
environment that has ``dbos`` installed (never imported by the harness
itself). It prints one JSON object on stdout::

    {"version": "3.4.0", "noop_steps_per_s": [...], "sql_steps_per_s": [...],
     "latency_completed_p50_ms": [...], "latency_completed_p99_ms": [...],
     "latency_first_step_p50_ms": [...], "latency_first_step_p99_ms": [...]}

Each list has one value per run. The workloads mirror durable-cluster's:

- no-op: ``--instances`` workflows of ``--steps`` ``@DBOS.step`` functions that
  do nothing, started with ``DBOS.start_workflow_async`` (which returns once the
  workflow is durably recorded) and awaited; the clock runs from the first
  start to the last completion.
- SQL: the same with ``@datasource.transaction`` steps inserting one row each
  into ``bench_rows`` (DBOS's exactly-once path: the statement and the step's
  checkpoint commit together), at READ COMMITTED like durable-cluster's SQL
  steps.
- latency: one-step workflows, one at a time: start → result, and start → the
  step's first line running (the step returns ``time.time()``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from importlib import metadata
from typing import Any

import sqlalchemy as sa
from dbos import DBOS, AsyncSQLAlchemyDatasource


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def progress(message: str) -> None:
    print(f"[dbos] {message}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    DBOS(
        config={
            "name": "dcbench-dbos",
            "system_database_url": args.system_database_url,
            "log_level": "WARNING",
        }
    )
    # As many SQL connections as durable-cluster's default --max-user-connections (10), and no
    # 30-second pool timeout: 2,000 workflows queue for them instead of failing.
    datasource = await AsyncSQLAlchemyDatasource.create(
        args.app_database_url,
        engine_kwargs={"pool_size": 10, "max_overflow": 0, "pool_timeout": 3600},
    )

    @DBOS.step()
    async def noop_step() -> None:
        return None

    @DBOS.workflow()
    async def noop_workflow(steps: int) -> None:
        for _ in range(steps):
            await noop_step()

    @datasource.transaction(isolation_level="READ COMMITTED")
    async def insert_row() -> None:
        await datasource.sql_session().execute(sa.text("INSERT INTO bench_rows (v) VALUES (1)"))

    @DBOS.workflow()
    async def sql_workflow(steps: int) -> None:
        for _ in range(steps):
            await insert_row()

    @DBOS.step()
    async def mark_step() -> float:
        return time.time()

    @DBOS.workflow()
    async def one_step_workflow() -> float:
        return await mark_step()

    DBOS.launch()
    result: dict[str, Any] = {"version": metadata.version("dbos"), "errors": []}

    async def throughput(name: str, workflow: Any) -> list[float]:
        # A small warm-up (connections, caches), not counted.
        warm = [await DBOS.start_workflow_async(workflow, args.steps) for _ in range(20)]
        await asyncio.gather(*(h.get_result() for h in warm))
        rates = []
        for number in range(args.runs):
            started = time.perf_counter()
            handles = [await DBOS.start_workflow_async(workflow, args.steps) for _ in range(args.instances)]
            await asyncio.gather(*(h.get_result() for h in handles))
            elapsed = time.perf_counter() - started
            rates.append(args.instances * args.steps / elapsed)
            progress(f"{name} run {number + 1}/{args.runs}: {rates[-1]:.0f} steps/s")
        return rates

    for key, name, workflow in (
        ("noop_steps_per_s", "no-op", noop_workflow),
        ("sql_steps_per_s", "SQL", sql_workflow),
    ):
        try:
            result[key] = await throughput(name, workflow)
        except Exception as exc:  # report the others even if one workload fails
            result["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            progress(f"{name} FAILED: {type(exc).__name__}: {exc}")

    keys = ("completed_p50", "completed_p99", "first_step_p50", "first_step_p99")
    latencies: dict[str, list[float]] = {key: [] for key in keys}
    for number in range(args.runs):
        completed: list[float] = []
        first: list[float] = []
        for _ in range(args.latency_samples):
            wall = time.time()
            started = time.perf_counter()
            handle = await DBOS.start_workflow_async(one_step_workflow)
            step_started = await handle.get_result()
            completed.append((time.perf_counter() - started) * 1000)
            first.append((step_started - wall) * 1000)
            await asyncio.sleep(0.01)
        latencies["completed_p50"].append(statistics.median(completed))
        latencies["completed_p99"].append(percentile(completed, 0.99))
        latencies["first_step_p50"].append(statistics.median(first))
        latencies["first_step_p99"].append(percentile(first, 0.99))
        progress(f"latency run {number + 1}/{args.runs}: p50 {latencies['completed_p50'][-1]:.2f} ms")
    for key, values in latencies.items():
        result[f"latency_{key}_ms"] = values
    DBOS.destroy()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--system-database-url", required=True)
    parser.add_argument("--app-database-url", required=True)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
