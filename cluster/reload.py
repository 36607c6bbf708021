"""Development reload: a watcher process that rolls the workers when plugin code changes.

``durable-cluster start --reload`` runs this module as a child of the
coordinator, started with ``os.posix_spawn`` (``python -m
durable_cluster.reload``), never forked from it, so the coordinator stays
single-threaded and never imports plugin code. uvicorn's reloader and
watchfiles' ``run_process`` also keep the watcher in a process that never
forks; here it is a sibling of the workers rather than their parent, so the
coordinator keeps its slots, heartbeats and rolling restart.

For every batch of changes (watchfiles groups the events of one save):

1. **Validate** in a fresh interpreter: ``python -m durable_cluster plugins
   --check --plugins-dir DIR`` imports every plugin, registers the step kinds
   and checks the hook names (``check_pending``).
2. If that succeeds, **send SIGHUP to the coordinator**: its rolling restart
   replaces each worker by one of the next generation, which imports the
   plugins afresh after the fork, while the old worker drains (its in-flight
   steps finish and checkpoint).
3. If it fails, **log its output** (the traceback) and wait for the next
   save: the running workers keep the code they have (gunicorn's
   ``load_wsgi`` in reload mode).

Watched: ``--plugins-dir``, and in a source checkout also ``sql/`` and the
built-in ``plugins/`` (workers import those after the fork too, and read
``sql/queries.sql``). Only ``*.py`` and ``*.sql`` files count (watchfiles'
``PythonFilter``); ``__pycache__`` and editor droppings are ignored. Where
file events do not arrive (some bind-mounted container volumes), set
``WATCHFILES_FORCE_POLLING=1``. A changed migration is not applied by a
roll: restart ``durable-cluster start`` (or run ``durable-cluster init``).

The watcher stops on SIGTERM (the coordinator sends it at shutdown), ignores
SIGINT (Ctrl-C belongs to the coordinator, which then stops it), and exits by
itself when the coordinator is gone.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import process

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = ["CheckResult", "Watcher", "check_plugins", "command", "main", "source_checkout", "watch_paths"]

log = logging.getLogger("durable_cluster.reload")

WATCH_EXTENSIONS = (".sql",)  # on top of PythonFilter's .py, .pyx and .pyd
TICK_MS = 500  # milliseconds: how often the watcher looks for a stop or a vanished coordinator
CHECK_TIMEOUT = 120.0  # seconds a validation interpreter may take
MAX_LISTED_CHANGES = 5  # changed files named in one log line


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one validation run."""

    ok: bool
    output: str  # what the check printed (the traceback when it failed)
    seconds: float


def source_checkout() -> Path | None:
    """The repository root when durable_cluster runs from a source checkout (editable install)."""
    sql_package = importlib.import_module("durable_cluster.sql")
    if not sql_package.__file__:
        return None
    root = Path(sql_package.__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "cluster").is_dir() and (root / "plugins").is_dir():
        return root
    return None


def watch_paths(plugins_dir: Path | None, checkout: Path | None = None) -> list[Path]:
    """What ``--reload`` watches: the plugins directory, plus sql/ and plugins/ of a checkout."""
    paths = [plugins_dir.resolve()] if plugins_dir is not None else []
    if checkout is not None:
        paths += [checkout / "sql", checkout / "plugins"]
    return [path for path in paths if path.is_dir()]


def command(
    *, coordinator_pid: int, paths: Iterable[Path], plugins_dir: Path | None, log_level: str
) -> list[str]:
    """The watcher's argv, for ``os.posix_spawn`` (absolute interpreter first)."""
    argv = [
        sys.executable,
        "-m",
        "durable_cluster.reload",
        "--coordinator-pid",
        str(coordinator_pid),
        "--log-level",
        log_level,
    ]
    if plugins_dir is not None:
        argv += ["--plugins-dir", str(plugins_dir.resolve())]
    for path in paths:
        argv += ["--watch", str(path)]
    return argv


def check_plugins(plugins_dir: Path | None, *, timeout: float = CHECK_TIMEOUT) -> CheckResult:
    """Run ``durable-cluster plugins --check`` in a fresh interpreter.

    The child gets its own session (a Ctrl-C in the terminal is for the
    coordinator) and writes no bytecode: a ``.pyc`` written for one save
    could be taken for a later save within the same second of the same size.
    """
    argv = [sys.executable, "-m", "durable_cluster", "plugins", "--check"]
    if plugins_dir is not None:
        argv += ["--plugins-dir", str(plugins_dir)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            start_new_session=True,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"the plugin check did not finish within {timeout:g}s", timeout)
    output = "\n".join(part.strip() for part in (done.stdout, done.stderr) if part.strip())
    return CheckResult(done.returncode == 0, output, time.monotonic() - started)


class Watcher:
    """Watch ``paths``; on a change validate the plugins, then SIGHUP the coordinator."""

    def __init__(
        self,
        *,
        coordinator_pid: int,
        paths: Sequence[Path],
        plugins_dir: Path | None,
        check: Callable[[Path | None], CheckResult] = check_plugins,
    ) -> None:
        self.coordinator_pid = coordinator_pid
        self.paths = list(paths)
        self.plugins_dir = plugins_dir
        self.check = check
        self.stop_event = threading.Event()  # set by SIGTERM; watchfiles polls it
        self.rolls = 0

    def coordinator_alive(self) -> bool:
        return process.parent_alive(self.coordinator_pid)

    def request_stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        """The SIGTERM handler: only set the event (watchfiles returns within a step)."""
        self.stop_event.set()

    def run(self) -> int:
        # Imported here: only this process needs watchfiles (the coordinator imports this module
        # to build the command line, and keeps its imports lean).
        import watchfiles  # noqa: PLC0415

        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # we log our own line per save
        ready = False
        for changes in watchfiles.watch(
            *self.paths,
            watch_filter=watchfiles.PythonFilter(extra_extensions=WATCH_EXTENSIONS),
            stop_event=self.stop_event,
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if not ready:  # the first yield: the file watches are in place
                ready = True
                log.info(
                    "reload: watching %s",
                    ", ".join(str(path) for path in self.paths),
                    extra={"action": "reload_watching"},
                )
            if not self.coordinator_alive():
                log.info("reload: the coordinator is gone; stopping", extra={"action": "reload_stopped"})
                return 0
            if changes:
                self.changed(sorted(path for _, path in changes))
        return 0

    def changed(self, paths: list[str]) -> None:
        """Validate the plugins after a save; roll the workers only if they load."""
        shown = ", ".join(paths[:MAX_LISTED_CHANGES]) + (" ..." if len(paths) > MAX_LISTED_CHANGES else "")
        log.info("reload: changed %s; checking the plugins", shown, extra={"action": "reload_changed"})
        if any(f"{os.sep}migrations{os.sep}" in path for path in paths):
            log.warning(
                "reload: a migration changed; a rolling restart does not apply migrations "
                "(restart durable-cluster start, or run durable-cluster init)",
                extra={"action": "reload_migration_changed"},
            )
        result = self.check(self.plugins_dir)
        if self.stop_event.is_set() or not self.coordinator_alive():
            return
        if not result.ok:
            log.error(
                "reload: the plugins failed to load; the workers keep running the previous code. "
                "Fix the error and save again.\n%s",
                result.output,
                extra={"action": "reload_failed"},
            )
            return
        self.rolls += 1
        log.info(
            "reload: plugins checked in %.2fs; rolling the workers (SIGHUP to pid %d)",
            result.seconds,
            self.coordinator_pid,
            extra={"action": "reload_rolling"},
        )
        os.kill(self.coordinator_pid, signal.SIGHUP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m durable_cluster.reload",
        description="The reload watcher of `durable-cluster start --reload` (started by the coordinator).",
    )
    parser.add_argument("--coordinator-pid", type=int, required=True, help="the pid to send SIGHUP to")
    parser.add_argument("--plugins-dir", type=Path, default=None, help="the --plugins-dir to validate")
    parser.add_argument(
        "--watch", type=Path, action="append", default=[], help="a directory to watch (repeatable)"
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .cli import configure_logging  # noqa: PLC0415 - the CLI's log format, in this process only

    configure_logging(args.log_level)
    process.set_process_title("durable-cluster: reload watcher")
    watcher = Watcher(coordinator_pid=args.coordinator_pid, paths=args.watch, plugins_dir=args.plugins_dir)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, watcher.request_stop)
    process.set_parent_death_signal(signal.SIGTERM)
    if not watcher.coordinator_alive():
        return 0  # the coordinator died before prctl: nobody to signal
    if not watcher.paths:
        log.error("reload: nothing to watch", extra={"action": "reload_stopped"})
        return 2
    try:
        return watcher.run()
    except Exception:
        log.exception("reload: the watcher failed", extra={"action": "reload_stopped"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
