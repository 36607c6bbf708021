"""The workloads: what each figure measures, and how.

Every durable-cluster workload runs in a fresh database (cloned from the
template) with its own ``durable-cluster start --dsn DB --workers N
--plugins-dir ops/bench/plugins`` subprocess, started before the clock and
waited for until every partition is claimed. Instances are started by the
login role ``dcbench`` (not a superuser) with ``df.start``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from . import pgbench, procfs, progressbar
from .cluster import Cluster
from .report import Figure, Goal, Results, percentile
from .server import ROLE, Server

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TERMINAL = ("completed", "failed", "cancelled")
SUBMIT_BATCH = 100  # df.start calls per transaction when submitting many instances
POLL = 0.001  # seconds between status polls in the latency workload
SLEEP_SECONDS = 3600  # how long the memory workload's instances sleep


class WorkloadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Options:
    runs: int
    workers: int
    instances: int  # throughput workloads: instances per run
    steps: int  # throughput workloads: steps per instance
    latency_samples: int  # latency: one-step instances per run
    recovery_per_worker: int  # recovery: instances per worker, each in one long step
    recovery_step_ms: int  # recovery: how long that step sleeps (it must outlast the kill)
    sleeping: int  # memory: sleeping instances
    cpu_window: float  # memory: seconds of CPU measurement while they sleep
    settle: float  # seconds of rest before memory is read
    pgbench_seconds: float
    pgbench_clients: tuple[int, ...]
    cluster_args: tuple[str, ...]

    @staticmethod
    def profile(quick: bool, runs: int, workers: int, cluster_args: tuple[str, ...]) -> Options:
        full = Options(
            runs=runs,
            workers=workers,
            instances=2000,
            steps=10,
            latency_samples=200,
            recovery_per_worker=100,
            recovery_step_ms=3000,
            sleeping=100_000,
            cpu_window=10.0,
            settle=2.0,
            pgbench_seconds=5,
            pgbench_clients=(1, 8),
            cluster_args=cluster_args,
        )
        if not quick:
            return full
        # The smoke mode: the same workloads, small.
        return dataclasses.replace(
            full,
            instances=100,
            latency_samples=20,
            recovery_per_worker=10,
            sleeping=1000,
            cpu_window=1.0,
            settle=0.5,
            pgbench_seconds=1,
        )


def define_figures(results: Results, options: Options, *, postgres_cpu: bool) -> None:
    """Every figure, in table order (the set the JSON always has)."""
    for rows, title in (("single", "1 row"), ("batch100", "100 rows")):
        for clients in options.pgbench_clients:
            unit = "commits/s" if rows == "single" else "rows/s"
            noun = "client" if clients == 1 else "clients"
            results.define(
                Figure(f"pgbench.{rows}_{clients}c", f"pgbench: {title} per commit, {clients} {noun}", unit)
            )
    results.define(Figure("pgbench.single_1c_latency_ms", "pgbench: 1-row commit latency, 1 client", "ms"))
    results.define(
        Figure(
            "pgbench.single_1c_paced_latency_ms",
            f"pgbench: 1-row commit latency, 1 client at {pgbench.PACED_RATE}/s (idle in between)",
            "ms",
        )
    )
    top = max(options.pgbench_clients)
    limit = f"pgbench.single_{top}c"
    n, s = options.instances, options.steps
    results.define(
        Figure(
            "noop.steps_per_s",
            f"no-op custom steps ({n:,} × {s}), df.start → completed",
            "steps/s",
            reference=limit,
            ratio_kind="percent",
            target=f"≥ 40% of pgbench {top}c; ≥ 20× DBOS",
            goals=(Goal("ratio", ">=", 0.40), Goal("dbos_ratio", ">=", 20.0)),
        )
    )
    results.define(
        Figure(
            "sql.steps_per_s",
            f"SQL steps, exactly-once ({n:,} × {s}), df.start → completed",
            "steps/s",
            reference=limit,
            ratio_kind="percent",
            target=f"≥ 25% of pgbench {top}c",
            goals=(Goal("ratio", ">=", 0.25),),
        )
    )
    for key, what, bound in (
        ("completed_p50_ms", "df.start → completed, one step, p50", 5.0),
        ("completed_p99_ms", "df.start → completed, one step, p99", 50.0),
        ("first_step_p50_ms", "df.start → first step running, p50", None),
        ("first_step_p99_ms", "df.start → first step running, p99", None),
    ):
        results.define(
            Figure(
                f"latency.{key}",
                f"{what} ({options.latency_samples} runs)",
                "ms",
                reference="pgbench.single_1c_paced_latency_ms",
                ratio_kind="times",
                target=f"≤ {bound:g} ms" if bound else "",
                goals=(Goal("value", "<=", bound),) if bound else (),
            )
        )
    victims = options.recovery_per_worker
    results.define(
        Figure(
            "recovery.all_s",
            f"worker SIGKILL → all its ~{victims} instances running again",
            "s",
            target="≤ 0.5 s median",
            goals=(Goal("value", "<=", 0.5),),
        )
    )
    results.define(Figure("recovery.first_s", "worker SIGKILL → first of its instances running again", "s"))
    sleeping = f"{options.sleeping:,} sleeping"
    results.define(Figure("memory.coordinator_rest_mib", "RSS coordinator, at rest", "MiB"))
    results.define(
        Figure(
            "memory.coordinator_loaded_mib",
            f"RSS coordinator, {sleeping}",
            "MiB",
            reference="memory.coordinator_rest_mib",
            ratio_kind="times",
        )
    )
    for index in range(options.workers):
        rest = f"memory.worker{index}_rest_mib"
        results.define(Figure(rest, f"RSS worker {index}, at rest", "MiB"))
        results.define(
            Figure(
                f"memory.worker{index}_loaded_mib",
                f"RSS worker {index}, {sleeping}",
                "MiB",
                reference=rest,
                ratio_kind="times",
                target="flat (≤ 1.10× at rest)",
                goals=(Goal("ratio", "<=", 1.10),),
            )
        )
        results.define(
            Figure(
                f"memory.worker{index}_peak_mib",
                f"peak RSS worker {index} (VmHWM), loading {sleeping}",
                "MiB",
                reference=rest,
                ratio_kind="times",
            )
        )
    results.define(
        Figure(
            "memory.cluster_cpu_pct",
            f"CPU coordinator + workers, {sleeping} waiting",
            "% of a core",
            target="idle (≤ 2% of a core)",
            goals=(Goal("value", "<=", 2.0),),
        )
    )
    if postgres_cpu:
        results.define(
            Figure("memory.postgres_cpu_pct", f"CPU PostgreSQL server, {sleeping} waiting", "% of a core")
        )


class Bench:
    def __init__(
        self,
        server: Server,
        workdir: Path,
        options: Options,
        results: Results,
        progress: Callable[[str], None],
    ) -> None:
        self.server = server
        self.workdir = workdir
        self.options = options
        self.results = results
        self.progress = progress

    # -- helpers -----------------------------------------------------------------------------

    def cluster(self, db: str, name: str) -> Cluster:
        return Cluster(
            self.server.db_dsn(db),
            self.workdir,
            workers=self.options.workers,
            name=name,
            args=self.options.cluster_args,
        )

    def connect(self, db: str) -> psycopg.Connection[tuple[Any, ...]]:
        """A connection as the benchmark role (the submitter of every instance)."""
        return psycopg.connect(self.server.db_dsn(db, ROLE), autocommit=True)

    # -- 1. the physical limit ------------------------------------------------------------------

    def run_pgbench(self) -> None:
        scripts = pgbench.write_scripts(self.workdir)
        with self.server.database("pgbench") as db:
            dsn = self.server.db_dsn(db)
            for number in range(self.options.runs):
                for rows in ("single", "batch100"):
                    for clients in self.options.pgbench_clients:
                        result = pgbench.run(
                            dsn,
                            scripts[rows],
                            clients=clients,
                            seconds=self.options.pgbench_seconds,
                            rows=pgbench.ROWS[rows],
                        )
                        value = result.commits_per_s if rows == "single" else result.rows_per_s
                        self.results.get(f"pgbench.{rows}_{clients}c").add(
                            value, commits_per_s=result.commits_per_s, latency_ms=result.latency_ms
                        )
                        if rows == "single" and clients == 1:
                            self.results.get("pgbench.single_1c_latency_ms").add(result.latency_ms)
                        self.progress(
                            f"pgbench {rows} {clients}c run {number + 1}/{self.options.runs}: "
                            f"{result.commits_per_s:,.0f} commits/s ({result.rows_per_s:,.0f} rows/s)"
                        )
                paced = pgbench.run(
                    dsn,
                    scripts["single"],
                    clients=1,
                    seconds=self.options.pgbench_seconds,
                    rows=1,
                    rate=pgbench.PACED_RATE,
                )
                self.results.get("pgbench.single_1c_paced_latency_ms").add(paced.latency_ms)
                self.progress(
                    f"pgbench single 1c at {pgbench.PACED_RATE}/s run {number + 1}/{self.options.runs}: "
                    f"{paced.latency_ms:.2f} ms per commit"
                )

    # -- 2 and 3. throughput ------------------------------------------------------------------

    def run_throughput(self, kind: str) -> None:
        """``kind``: ``noop`` (plugin steps that do nothing) or ``sql`` (one INSERT per step)."""
        opts = self.options
        figure = self.results.get(f"{kind}.steps_per_s")
        with self.server.database(kind) as db, self.cluster(db, kind) as cluster:
            ready = cluster.wait_ready()
            self.progress(f"{kind}: cluster ready in {ready:.1f}s")
            with self.connect(db) as conn:
                if kind == "noop":
                    step = scalar(conn, "SELECT df.step('noop', '{}'::jsonb)")
                else:
                    step = scalar(conn, "SELECT df.sql('INSERT INTO bench_rows (v) VALUES (1)')")
                graph = chain(conn, [step] * opts.steps)
                # Warm-up (connections, plans, caches): not counted.
                warm = max(10, opts.instances // 20)
                submit(conn, graph, f"{kind}-warmup", warm)
                wait_completed(conn, f"{kind}-warmup", warm, cluster)
                for number in range(opts.runs):
                    label = f"{kind}-{number}"
                    rows_before = scalar_int(conn, "SELECT count(*) FROM bench_rows")
                    started = time.perf_counter()
                    submit(conn, graph, label, opts.instances)
                    submitted = time.perf_counter() - started
                    wait_completed(conn, label, opts.instances, cluster, timeout=600)
                    elapsed = time.perf_counter() - started
                    steps = opts.instances * opts.steps
                    details: dict[str, Any] = {
                        "instances": opts.instances,
                        "steps": steps,
                        "submit_s": round(submitted, 3),
                        "total_s": round(elapsed, 3),
                    }
                    if kind == "sql":
                        inserted = scalar_int(conn, "SELECT count(*) FROM bench_rows") - rows_before
                        details["rows_inserted"] = inserted
                        if inserted != steps:
                            raise WorkloadError(f"SQL steps inserted {inserted} rows for {steps} steps")
                    figure.add(steps / elapsed, **details)
                    self.progress(
                        f"{kind} run {number + 1}/{opts.runs}: {steps / elapsed:,.0f} steps/s "
                        f"({elapsed:.2f}s end to end, of which {submitted:.2f}s submitting)"
                    )

    # -- 4. latency -------------------------------------------------------------------------------

    def run_latency(self) -> None:
        opts = self.options
        log = self.workdir / "latency-steps.log"
        with self.server.database("latency") as db, self.cluster(db, "latency") as cluster:
            cluster.wait_ready()
            time.sleep(opts.settle)  # an idle cluster: nothing in flight
            with self.connect(db) as conn:
                graph = scalar(
                    conn, "SELECT df.step('bench_mark', %s::jsonb)", (json.dumps({"log": str(log)}),)
                )
                for _ in range(5):  # warm-up
                    self._one_latency(conn, graph)
                reader = StepLog(log)
                reader.read()
                for number in range(opts.runs):
                    completed: list[float] = []
                    starts: dict[str, float] = {}
                    for _ in range(opts.latency_samples):
                        instance, wall, millis = self._one_latency(conn, graph)
                        completed.append(millis)
                        starts[instance] = wall
                        time.sleep(0.01)
                    reader.read()
                    missing = [i for i in starts if i not in reader.first]
                    if missing:
                        raise WorkloadError(f"no step start logged for {len(missing)} instances")
                    first = [(reader.first[i] - wall) * 1000 for i, wall in starts.items()]
                    values = {
                        "completed_p50_ms": statistics.median(completed),
                        "completed_p99_ms": percentile(completed, 0.99),
                        "first_step_p50_ms": statistics.median(first),
                        "first_step_p99_ms": percentile(first, 0.99),
                    }
                    for key, value in values.items():
                        self.results.get(f"latency.{key}").add(value)
                    text = "; ".join(f"{k.removesuffix('_ms')} {v:.2f} ms" for k, v in values.items())
                    self.progress(f"latency run {number + 1}/{opts.runs}: {text}")

    def _one_latency(self, conn: psycopg.Connection[tuple[Any, ...]], graph: str) -> tuple[str, float, float]:
        """Start one instance and poll (every POLL s, no LISTEN) until it is terminal."""
        wall = time.time()
        started = time.perf_counter()
        instance = scalar(conn, "SELECT df.start(%s)", (graph,))
        while True:
            status = scalar(conn, "SELECT status FROM df.instances WHERE id = %s", (instance,))
            if status in TERMINAL:
                break
            if time.perf_counter() - started > 60:
                raise WorkloadError(f"instance {instance} still {status} after 60s")
            time.sleep(POLL)
        elapsed = (time.perf_counter() - started) * 1000
        if status != "completed":
            raise WorkloadError(f"instance {instance} ended {status}")
        return instance, wall, elapsed

    # -- 5. recovery ------------------------------------------------------------------------------

    def run_recovery(self) -> None:
        opts = self.options
        for number in range(opts.runs):
            log = self.workdir / f"recovery-{number}-steps.log"
            with (
                self.server.database(f"recovery{number}") as db,
                self.cluster(db, f"recovery-{number}") as cluster,
            ):
                cluster.wait_ready()
                with self.connect(db) as conn:
                    args = json.dumps({"log": str(log), "ms": opts.recovery_step_ms})
                    # One long step: at the kill every victim is in the middle of it,
                    # so what follows is recovery alone (the new owner runs the step
                    # again: custom steps are at least once), not a loop's pacing.
                    graph = scalar(conn, "SELECT df.step('bench_mark', %s::jsonb)", (args,))
                    count = opts.recovery_per_worker * opts.workers
                    ids = submit(conn, graph, "recovery", count)
                reader = StepLog(log)
                # Every instance in its step, then half a second of steady state.
                deadline = time.monotonic() + 60
                while not set(ids) <= set(reader.last):
                    cluster.check_alive()
                    if time.monotonic() > deadline:
                        raise WorkloadError("the recovery instances did not all start within 60s")
                    time.sleep(0.05)
                    reader.read()
                time.sleep(0.5)
                reader.read()
                workers = cluster.worker_pids()
                owners = collections.Counter(reader.last[i][0] for i in ids if reader.last[i][0] in workers)
                if not owners:
                    raise WorkloadError("no worker runs the recovery instances")
                victim = owners.most_common(1)[0][0]
                killed_at = time.time()
                step_s = opts.recovery_step_ms / 1000
                victims = {
                    i for i in ids if reader.last[i][0] == victim and reader.last[i][1] > killed_at - step_s
                }
                os.kill(victim, signal.SIGKILL)
                resumed: dict[str, float] = {}
                deadline = time.monotonic() + 60
                while len(resumed) < len(victims):
                    for instance, _pid, started in reader.read():
                        if instance in victims and started > killed_at and instance not in resumed:
                            resumed[instance] = started
                    if time.monotonic() > deadline:
                        raise WorkloadError(
                            f"{len(victims) - len(resumed)} of {len(victims)} instances did not run again "
                            f"within 60s of the SIGKILL; log:\n{cluster.log_tail()}"
                        )
                    time.sleep(0.01)
                delays = sorted(t - killed_at for t in resumed.values())
                self.results.get("recovery.all_s").add(
                    delays[-1],
                    victims=len(victims),
                    instances=count,
                    median_s=round(statistics.median(delays), 4),
                    first_s=round(delays[0], 4),
                )
                self.results.get("recovery.first_s").add(delays[0])
                self.progress(
                    f"recovery run {number + 1}/{opts.runs}: SIGKILL of a worker running {len(victims)} "
                    f"instances; first ran again after {delays[0]:.3f}s, all after {delays[-1]:.3f}s"
                )

    # -- 6. memory and idle CPU ----------------------------------------------------------------------

    def run_memory(self) -> None:
        opts = self.options
        for number in range(opts.runs):
            with (
                self.server.database(f"memory{number}") as db,
                self.cluster(db, f"memory-{number}") as cluster,
            ):
                cluster.wait_ready()
                time.sleep(opts.settle)
                workers = sorted(cluster.worker_pids())
                pids = [cluster.pid, *workers]
                rest = {pid: procfs.memory(pid) for pid in pids}
                with self.connect(db) as conn:
                    graph = scalar(conn, "SELECT df.sleep(%s)", (SLEEP_SECONDS,))
                    started = time.perf_counter()
                    submit(conn, graph, "sleeping", opts.sleeping, batch=1000)
                    submitted = time.perf_counter() - started
                with self.server.admin(db) as admin:
                    deadline = time.monotonic() + max(120.0, opts.sleeping / 200)
                    with progressbar.bar("sleeping: parked", opts.sleeping) as bar:
                        while True:
                            parked = scalar_int(
                                admin,
                                "SELECT count(*) FROM durable.runs WHERE wake_at < 'infinity'"
                                " AND wake_at > now() + interval '10 minutes'",
                            )
                            bar.update(parked)
                            if parked >= opts.sleeping:
                                break
                            cluster.check_alive()
                            if time.monotonic() > deadline:
                                raise WorkloadError(f"only {parked} of {opts.sleeping} instances parked")
                            time.sleep(0.25)
                parked_after = time.perf_counter() - started
                time.sleep(opts.settle)
                if sorted(cluster.worker_pids()) != workers:
                    raise WorkloadError(f"a worker died while loading; log:\n{cluster.log_tail()}")
                loaded = {pid: procfs.memory(pid) for pid in pids}
                vacuums = [self._autovacuums(db)]
                cpu_before = procfs.total_cpu_seconds(pids)
                pg_before = self.server.postgres_cpu_seconds()
                window_start = time.perf_counter()
                time.sleep(opts.cpu_window)
                window = time.perf_counter() - window_start
                cluster_cpu = (procfs.total_cpu_seconds(pids) - cpu_before) / window * 100
                pg_after = self.server.postgres_cpu_seconds()
                vacuums.append(self._autovacuums(db))
                get = self.results.get
                get("memory.coordinator_rest_mib").add(rest[cluster.pid].rss_mib)
                get("memory.coordinator_loaded_mib").add(loaded[cluster.pid].rss_mib)
                for index, pid in enumerate(workers):
                    get(f"memory.worker{index}_rest_mib").add(rest[pid].rss_mib)
                    get(f"memory.worker{index}_loaded_mib").add(loaded[pid].rss_mib)
                    get(f"memory.worker{index}_peak_mib").add(loaded[pid].peak_mib)
                get("memory.cluster_cpu_pct").add(
                    cluster_cpu,
                    sleeping=opts.sleeping,
                    submit_s=round(submitted, 2),
                    all_parked_after_s=round(parked_after, 2),
                    window_s=round(window, 2),
                )
                if (
                    pg_before is not None
                    and pg_after is not None
                    and "memory.postgres_cpu_pct" in self.results.figures
                ):
                    get("memory.postgres_cpu_pct").add(
                        (pg_after - pg_before) / window * 100,
                        # autovacuum after the bulk start counts here, and it is not waiting
                        autovacuum_workers_at_start_and_end=vacuums,
                    )
                worker_text = ", ".join(
                    f"{rest[p].rss_mib:.0f}→{loaded[p].rss_mib:.0f} (peak {loaded[p].peak_mib:.0f})"
                    for p in workers
                )
                self.progress(
                    f"memory run {number + 1}/{opts.runs}: {opts.sleeping:,} sleeping (submitted in "
                    f"{submitted:.1f}s, all parked after {parked_after:.1f}s); RSS MiB coordinator "
                    f"{rest[cluster.pid].rss_mib:.0f}→{loaded[cluster.pid].rss_mib:.0f}, "
                    f"workers {worker_text}; "
                    f"cluster CPU {cluster_cpu:.2f}% of a core"
                )

    def _autovacuums(self, db: str) -> int:
        """Autovacuum workers running now (the server's housekeeping, not the cluster's)."""
        with self.server.admin(db) as admin:
            return scalar_int(
                admin, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            )


# -- SQL helpers ------------------------------------------------------------------------------------


def scalar(conn: psycopg.Connection[tuple[Any, ...]], query: Any, params: tuple[Any, ...] = ()) -> str:
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise WorkloadError(f"no row from {query}")
    return str(row[0])


def scalar_int(conn: psycopg.Connection[tuple[Any, ...]], query: Any, params: tuple[Any, ...] = ()) -> int:
    return int(scalar(conn, query, params))


def chain(conn: psycopg.Connection[tuple[Any, ...]], steps: list[str]) -> str:
    """``steps[0] ~> steps[1] ~> ...`` (built with df.seq, left-associative like ~>)."""
    graph = steps[0]
    for step in steps[1:]:
        graph = scalar(conn, "SELECT df.seq(%s, %s)", (graph, step))
    return graph


def submit(
    conn: psycopg.Connection[tuple[Any, ...]],
    graph: str,
    label: str,
    count: int,
    *,
    batch: int = SUBMIT_BATCH,
) -> list[str]:
    """Start ``count`` instances of ``graph``, ``batch`` df.start calls per transaction."""
    ids: list[str] = []
    with progressbar.bar(f"{label}: started", count) as bar:
        for offset in range(0, count, batch):
            size = min(batch, count - offset)
            with conn.transaction():
                rows = conn.execute(
                    "SELECT df.start(%s, %s) FROM generate_series(1, %s)", (graph, label, size)
                ).fetchall()
            ids.extend(str(r[0]) for r in rows)
            bar.update(len(ids))
    return ids


def wait_completed(
    conn: psycopg.Connection[tuple[Any, ...]],
    label: str,
    count: int,
    cluster: Cluster,
    *,
    timeout: float = 120.0,
    interval: float = 0.01,
) -> None:
    deadline = time.monotonic() + timeout
    with progressbar.bar(f"{label}: completed", count) as bar:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'completed'),"
                " count(*) FILTER (WHERE status IN ('failed', 'cancelled'))"
                " FROM df.instances WHERE label = %s",
                (label,),
            ).fetchone()
            done, failed = (int(v) for v in row) if row else (0, 0)
            bar.update(done)
            if failed:
                raise WorkloadError(f"{failed} instances labelled {label} failed; log:\n{cluster.log_tail()}")
            if done >= count:
                return
            if time.monotonic() > deadline:
                raise WorkloadError(
                    f"{done} of {count} instances labelled {label} completed after {timeout:.0f}s"
                )
            cluster.check_alive()
            time.sleep(interval)


class StepLog:
    """Reads the lines ``bench_mark`` steps append: ``<instance> <worker pid> <start time>``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.first: dict[str, float] = {}
        self.last: dict[str, tuple[int, float]] = {}
        self._partial = b""

    def read(self) -> list[tuple[str, int, float]]:
        """New complete lines since the last read."""
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        found = []
        for line in lines:
            instance, pid, started = line.decode().split()
            entry = (instance, int(pid), float(started))
            found.append(entry)
            self.first.setdefault(instance, entry[2])
            self.last[instance] = (entry[1], entry[2])
        return found


def progress_printer(clock_start: float) -> Callable[[str], None]:
    def progress(message: str) -> None:
        print(f"[bench +{time.perf_counter() - clock_start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return progress
