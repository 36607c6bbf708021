"""The optional DBOS Transact column (``--with-dbos``).

DBOS is installed from PyPI (``pip install dbos``) into a virtual environment
of its own under the work directory, never into the harness's environment.
``ops/bench/dbos_workload.py`` then runs the same workloads with DBOS against
the same PostgreSQL server (its own application and system databases). If
the installation or the run fails (no network, for instance), the column is
reported unavailable with the reason and the rest of the run goes on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .server import clean_env

if TYPE_CHECKING:
    from collections.abc import Callable

    from .report import Results
    from .server import Server
    from .workloads import Options

SCRIPT = Path(__file__).resolve().parent.parent / "dbos_workload.py"
INSTALL_TIMEOUT = 900  # seconds
#: DBOS result keys -> harness figures.
FIGURES = {
    "noop_steps_per_s": "noop.steps_per_s",
    "sql_steps_per_s": "sql.steps_per_s",
    "latency_completed_p50_ms": "latency.completed_p50_ms",
    "latency_completed_p99_ms": "latency.completed_p99_ms",
    "latency_first_step_p50_ms": "latency.first_step_p50_ms",
    "latency_first_step_p99_ms": "latency.first_step_p99_ms",
}


class Unavailable(RuntimeError):
    pass


def ensure_venv(root: Path, progress: Callable[[str], None], spec: str = "dbos") -> Path:
    """The Python of a virtual environment with ``spec`` installed (created on first use)."""
    python = root / "bin" / "python"
    ready = root / ".dcbench-installed"
    if python.exists() and ready.exists() and ready.read_text() == spec:
        return python
    progress(f"DBOS: creating a virtual environment in {root} and installing {spec!r} from PyPI")
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec],
            capture_output=True,
            text=True,
            check=False,
            timeout=INSTALL_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"could not create the virtual environment: {exc}") from exc
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
        raise Unavailable(f"pip install {spec} failed: {' '.join(errors)[-600:]}")
    ready.write_text(spec)
    return python


def run(
    server: Server,
    *,
    options: Options,
    results: Results,
    venv_root: Path,
    progress: Callable[[str], None],
    spec: str = "dbos",
) -> None:
    results.dbos = {"requested": True, "available": False, "reason": ""}
    try:
        python = ensure_venv(venv_root, progress, spec)
        app = server.create_database("dbos_app", template=False)
        with server.admin(app) as conn:
            conn.execute("CREATE TABLE bench_rows (v integer)")
        system = f"{server.prefix}_dbos_sys"  # created by DBOS itself
        server.adopt_database(system)
        command = [
            str(python),
            str(SCRIPT),
            "--system-database-url",
            server.db_url(system),
            "--app-database-url",
            server.db_url(app),
            "--instances",
            str(options.instances),
            "--steps",
            str(options.steps),
            "--latency-samples",
            str(options.latency_samples),
            "--runs",
            str(options.runs),
        ]
        progress("DBOS: running the workloads (no-op, SQL, latency)")
        proc = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            check=False,
            timeout=7200,
            env=clean_env(),
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise Unavailable(f"dbos_workload.py exited with {proc.returncode} and printed no result")
        data: dict[str, Any] = json.loads(lines[-1])
    except Unavailable as exc:
        results.dbos["reason"] = str(exc)
        progress(f"DBOS column unavailable: {exc}")
        return
    except subprocess.TimeoutExpired:
        results.dbos["reason"] = "dbos_workload.py timed out"
        progress("DBOS column unavailable: the DBOS run timed out")
        return
    errors = [str(e) for e in data.get("errors", [])]
    results.dbos.update(
        available=True,
        reason="; ".join(f"failed: {e}" for e in errors),
        version=data.get("version"),
        python=sys.version.split()[0],
        errors=errors,
    )
    for source, key in FIGURES.items():
        values = data.get(source)
        if isinstance(values, list) and key in results.figures:
            results.get(key).dbos = [float(v) for v in values]
