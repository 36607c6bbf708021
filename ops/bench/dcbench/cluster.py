"""``durable-cluster start`` as a subprocess: start, wait until ready, find its processes, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from durable_cluster import keys

from . import procfs
from .server import clean_env

READY_TIMEOUT = 60.0  # seconds
STOP_TIMEOUT = 60.0
PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins"

HOLDERS = """
SELECT count(*), count(DISTINCT pid), coalesce(max(n), 0) FROM (
    SELECT pid, count(*) OVER (PARTITION BY pid) AS n FROM pg_locks
     WHERE locktype = 'advisory' AND granted AND classid = %(ns)s AND objsubid = 2
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
) held
"""


class ClusterError(RuntimeError):
    pass


class Cluster:
    """One ``durable-cluster start --dsn ... --workers N --plugins-dir ops/bench/plugins``."""

    def __init__(
        self, dsn: str, logdir: Path, *, workers: int, name: str, args: tuple[str, ...] = ()
    ) -> None:
        self.dsn = dsn
        self.workers = workers
        self.args = args
        self.log_path = logdir / f"cluster-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "durable_cluster",
            "start",
            "--dsn",
            self.dsn,
            "--workers",
            str(self.workers),
            "--plugins-dir",
            str(PLUGINS_DIR),
            *self.args,
        ]

    def start(self) -> Cluster:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**clean_env(), "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        return self

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise ClusterError(f"the cluster exited with {self.process.returncode}; log:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        return procfs.children(self.pid)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Wait until every partition is claimed and each worker holds its share; return the wait."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            self.check_alive()
            with contextlib.suppress(psycopg.Error):
                if self._ready():
                    return time.monotonic() - started
            if time.monotonic() > deadline:
                raise ClusterError(f"cluster not ready after {timeout:.0f}s; log:\n{self.log_tail()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        if len(self.worker_pids()) != self.workers:
            return False
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT value::int FROM durable.settings WHERE name = 'partitions'").fetchone()
            total = int(row[0]) if row else 0
            held = conn.execute(HOLDERS, {"ns": keys.PARTITION_NS}).fetchone()
        if not held or not total:
            return False
        count, holders, most = (int(v) for v in held)
        share = -(-total // self.workers)
        return count == total and holders == self.workers and most <= share

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait (graceful stop); SIGKILL the process group if it takes too long."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop()
        finally:
            if self.process is not None and self.process.poll() is None:
                self.kill()
