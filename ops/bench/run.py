#!/usr/bin/env python3
"""Benchmark durable-cluster against the machine's physical limit (and DBOS Transact).

    python ops/bench/run.py                 # the full run (several minutes)
    python ops/bench/run.py --quick --runs 1 --json /tmp/smoke.json   # a smoke run
    python ops/bench/run.py --with-dbos     # add the DBOS Transact column

Prints a progress line per workload on stderr, the table on stdout, and
writes the JSON (``--json``, default ``ops/bench/results.json``). See
``ops/bench/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcbench import dbos, pgbench
from dcbench.report import Results
from dcbench.server import Server
from dcbench.workloads import Bench, Options, define_figures, progress_printer

import durable_cluster

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).resolve().parent
WORKLOADS = ("pgbench", "noop", "sql", "latency", "recovery", "memory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ops/bench/run.py",
        description="Measure durable-cluster against pgbench's physical limit on the same server "
        "(and, with --with-dbos, DBOS Transact). Each figure is the median of --runs runs.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small workloads (a smoke run of about a minute)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3; medians need ≥ 3)")
    parser.add_argument(
        "--json",
        default=str(HERE / "results.json"),
        help="where to write the JSON results (default ops/bench/results.json)",
    )
    parser.add_argument(
        "--dsn",
        default=None,
        help="superuser DSN of an existing PostgreSQL 15-18 server (default: the harness starts its own "
        "embedded PostgreSQL 18 with fsync and synchronous_commit on)",
    )
    parser.add_argument("--workdir", default=None, help="work directory (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server, cluster logs)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="cluster worker processes (default: CPUs)"
    )
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads to run (default all: {','.join(WORKLOADS)})",
    )
    parser.add_argument("--instances", type=int, default=None, help="override instances per throughput run")
    parser.add_argument("--sleeping", type=int, default=None, help="override the memory workload's instances")
    parser.add_argument(
        "--cluster-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `durable-cluster start` (repeatable), e.g. --cluster-arg=--no-pin",
    )
    parser.add_argument(
        "--with-dbos", action="store_true", help="add the DBOS Transact column (installs dbos)"
    )
    parser.add_argument("--dbos-spec", default="dbos", help="pip requirement for DBOS (default: dbos)")
    parser.add_argument(
        "--dbos-venv",
        default=None,
        help="virtual environment for DBOS, reused if it exists (default: <workdir>/dbos-venv)",
    )
    return parser


def machine() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "durable_cluster": durable_cluster.__version__,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                facts["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    return facts


def run_step(
    results: Results, name: str, action: Callable[[], None], progress: Callable[[str], None]
) -> None:
    """Run one workload; a failure is recorded and reported, and the run goes on."""
    progress(f"{name}: starting")
    started = time.perf_counter()
    try:
        action()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        results.errors.append({"workload": name, "error": f"{type(exc).__name__}: {exc}"})
        progress(f"{name}: FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        return
    progress(f"{name}: done in {time.perf_counter() - started:.1f}s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown or args.runs < 1 or args.workers < 1:
        print(f"run.py: bad arguments: unknown workloads {unknown}, or --runs/--workers < 1", file=sys.stderr)
        return 2
    progress = progress_printer(time.perf_counter())
    if args.runs < 3:
        progress(f"note: {args.runs} run(s) per figure; medians are meaningful from 3 runs")
    options = Options.profile(args.quick, args.runs, args.workers, tuple(args.cluster_arg))
    if args.instances:
        options = dataclasses.replace(options, instances=args.instances)
    if args.sleeping:
        options = dataclasses.replace(options, sleeping=args.sleeping)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dcbench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    keep = args.keep or bool(args.workdir)
    results = Results()
    results.meta = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "load_average_at_start": list(os.getloadavg()),
        "options": {**dataclasses.asdict(options), "quick": args.quick, "workloads": only},
    }
    server = Server(workdir, args.dsn)
    try:
        progress(f"work directory {workdir}; starting PostgreSQL")
        server.start()
        results.meta["postgres"] = server.describe()
        results.meta["pgbench"] = str(pgbench.pgbench_path())
        progress(
            f"PostgreSQL {results.meta['postgres']['server_version']} "
            f"(fsync {results.meta['postgres']['fsync']}, "
            f"synchronous_commit {results.meta['postgres']['synchronous_commit']}); "
            f"{options.workers} workers"
        )
        define_figures(results, options, postgres_cpu=server.embedded is not None)
        bench = Bench(server, workdir, options, results, progress)
        actions: dict[str, Callable[[], None]] = {
            "pgbench": bench.run_pgbench,
            "noop": lambda: bench.run_throughput("noop"),
            "sql": lambda: bench.run_throughput("sql"),
            "latency": bench.run_latency,
            "recovery": bench.run_recovery,
            "memory": bench.run_memory,
        }
        for name in WORKLOADS:
            if name in only:
                run_step(results, name, actions[name], progress)
        if args.with_dbos:
            venv_root = Path(args.dbos_venv).resolve() if args.dbos_venv else workdir / "dbos-venv"
            run_step(
                results,
                "dbos",
                lambda: dbos.run(
                    server,
                    options=options,
                    results=results,
                    venv_root=venv_root,
                    progress=progress,
                    spec=args.dbos_spec,
                ),
                progress,
            )
    finally:
        results.meta["load_average_at_end"] = list(os.getloadavg())
        results.meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        with contextlib.suppress(Exception):
            server.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results.write_json(args.json)
    facts = results.meta["machine"]
    version = results.meta.get("postgres", {}).get("server_version", "?")
    print(
        f"durable-cluster {facts['durable_cluster']} on {facts['nproc']} CPUs ({facts['arch']}, "
        f"{facts.get('cpu', '?')}), PostgreSQL {version}, "
        f"{options.workers} workers; median [min–max] of {options.runs} run(s)"
    )
    start_load, end_load = results.meta["load_average_at_start"], results.meta["load_average_at_end"]
    print(
        f"machine load average (1/5/15 min) at start {'/'.join(f'{v:.1f}' for v in start_load)}, "
        f"at end {'/'.join(f'{v:.1f}' for v in end_load)}"
    )
    print(results.table())
    if args.with_dbos and not results.dbos.get("available"):
        print(f"DBOS Transact column unavailable: {results.dbos.get('reason')}")
    elif args.with_dbos and results.dbos.get("reason"):
        print(f"DBOS Transact: {results.dbos['reason']}")
    for error in results.errors:
        print(f"FAILED {error['workload']}: {error['error'].splitlines()[0]}")
    progress(f"results written to {args.json}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
