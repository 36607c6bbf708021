"""The benchmark harness (``durable-cluster bench``, ops/bench/run.py) in its smoke mode.

Every figure, numeric, in JSON and table.

Performance numbers are never asserted: the harness measures, this test only
checks that one quick run produces every figure.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from durable_cluster import cli

pytestmark = [pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ("pgbench", "noop", "sql", "latency", "recovery", "memory")


def expected_figures(workers: int) -> set[str]:
    figures = {
        "pgbench.single_1c",
        "pgbench.single_8c",
        "pgbench.batch100_1c",
        "pgbench.batch100_8c",
        "pgbench.single_1c_latency_ms",
        "pgbench.single_1c_paced_latency_ms",
        "noop.steps_per_s",
        "sql.steps_per_s",
        "latency.completed_p50_ms",
        "latency.completed_p99_ms",
        "latency.first_step_p50_ms",
        "latency.first_step_p99_ms",
        "recovery.all_s",
        "recovery.first_s",
        "memory.coordinator_rest_mib",
        "memory.coordinator_loaded_mib",
        "memory.cluster_cpu_pct",
        "memory.postgres_cpu_pct",
    }
    for index in range(workers):
        figures |= {
            f"memory.worker{index}_rest_mib",
            f"memory.worker{index}_loaded_mib",
            f"memory.worker{index}_peak_mib",
        }
    return figures


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    """Through ``durable-cluster bench``, which hands every argument to ops/bench/run.py."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "durable_cluster",
            "bench",
            "--quick",
            "--runs",
            "1",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-6000:]}"
    data = json.loads(out.read_text())
    assert data["errors"] == []
    assert data["postgres"]["fsync"] == "on"
    assert data["postgres"]["synchronous_commit"] == "on"
    workers = data["options"]["workers"]
    figures = data["figures"]
    assert set(figures) == expected_figures(workers)
    for key, figure in figures.items():
        assert len(figure["runs"]) == 1, key
        assert all(is_number(v) for v in figure["runs"]), key
        for field in ("median", "min", "max"):
            assert is_number(figure[field]), (key, field)
        assert figure["min"] <= figure["median"] <= figure["max"], key
        if figure["reference"] is not None:
            assert figure["reference"]["figure"] in figures, key
            assert is_number(figure["ratio"]), key
    # Throughput is compared with pgbench's 8-client single-row commit rate.
    assert figures["noop.steps_per_s"]["reference"]["figure"] == "pgbench.single_8c"
    assert figures["sql.steps_per_s"]["reference"]["figure"] == "pgbench.single_8c"
    # Latency on an idle cluster is compared with commits paced to meet an idle server.
    assert figures["latency.completed_p50_ms"]["reference"]["figure"] == "pgbench.single_1c_paced_latency_ms"
    # The SQL workload checked exactly-once: one row per step.
    sql_run = figures["sql.steps_per_s"]["details"][0]
    assert sql_run["rows_inserted"] == sql_run["steps"]
    # The table, side by side, with every figure's label.
    header = next(line for line in result.stdout.splitlines() if line.startswith("| figure "))
    for column in ("durable-cluster", "reference", "ratio", "target"):
        assert f"| {column} " in header, column
    for figure in figures.values():
        assert figure["label"] in result.stdout
    # A progress line per workload on stderr.
    for workload in WORKLOADS:
        assert f"] {workload}: done in" in result.stderr, workload


def test_bench_outside_a_source_checkout_says_where_the_harness_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "bench_harness", lambda: None)
    assert cli.main(["bench", "--quick"]) == 1
    assert "the benchmark harness ships with the source, not the package" in capsys.readouterr().err
