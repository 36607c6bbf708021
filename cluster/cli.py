"""The ``durable-cluster`` command line: thin functions over the package.

Commands:

- ``start``: run the cluster (embedded PostgreSQL 18 unless ``--dsn``);
- ``init``: install or upgrade the schema;
- ``dsn``: print the embedded server's connection string;
- ``plugins``: list the plugins and their step kinds, or ``--check`` that they load;
- ``settings``: print the settings reference;
- ``metrics``: serve the Prometheus endpoint (``start --metrics`` runs it for you);
- ``status``, ``list``, ``show``, ``explain``, ``top``: what the cluster does, as the connecting
  role (row-level security applies), as tables or ``--json`` (docs/cli.md);
- ``cancel``, ``signal``: ``df.cancel`` and ``df.signal`` as that role;
- ``doctor``: the environment self-check (PASS/WARN/FAIL lines);
- ``console``: the web console (``start --console`` runs it for you; docs/console.md).

Every flag has an environment variable, named in ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from . import config, db, embedded, logs, preflight, schema
from .config import Settings
from .errors import ConfigError, DurableClusterError, PluginLoadError, StepKindConflict
from .process import PLUGIN_LOAD_ERROR, WORKER_BOOT_ERROR
from .version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from rich.console import Console

    from . import console as console_module
    from . import inspect as inspect_module
    from .coordinator import Coordinator

logger = logging.getLogger("durable_cluster")

LOG_FORMAT = logs.LOG_FORMAT
#: The example printed at start-up ($ escaped for the shell).
EXAMPLE = "SELECT df.start('SELECT 1' |=> 'one' ~> 'SELECT \\$one + 1')"
CONNECT_DEADLINE = 300.0  # seconds start/init keep retrying an unreachable database
CONSOLE_BIND = "127.0.0.1:8484"  # `durable-cluster console` without --bind
INSTANCE_STATUSES = ("pending", "running", "completed", "failed", "cancelled")  # df.instances.status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        settings = Settings.from_args(args)
        configure_logging(settings.log_level, settings.log_format)
        result: int = args.func(args, settings)
        return result
    except DurableClusterError as exc:
        print(f"durable-cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durable-cluster",
        description="Durable execution for PostgreSQL: pg_durable-compatible workflows "
        "run by a worker cluster.",
    )
    parser.add_argument("--version", action="version", version=f"durable-cluster {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    start = commands.add_parser(
        "start",
        help="run the cluster",
        description="Run the coordinator and its workers. Without --dsn (or DURABLE_DSN), an embedded "
        "PostgreSQL 18 runs in --data-dir. Ctrl-C or SIGTERM stops gracefully; a second "
        "Ctrl-C stops at once. SIGHUP replaces the workers one by one.",
    )
    config.add_arguments(start, "start")
    start.set_defaults(func=cmd_start)

    init = commands.add_parser(
        "init",
        help="install or upgrade the schema",
        description="Install or upgrade the durable-cluster schema (idempotent; one runner at a time).",
    )
    config.add_arguments(init, "init")
    init.set_defaults(func=cmd_init)

    dsn = commands.add_parser("dsn", help="print the embedded server's connection string")
    config.add_arguments(dsn, "dsn")
    dsn.add_argument(
        "--admin",
        action="store_true",
        help="the superuser's connection string instead of the application role's",
    )
    dsn.set_defaults(func=cmd_dsn)

    plugins = commands.add_parser(
        "plugins",
        help="list the plugins and their step kinds",
        description="Load the plugins as a worker does (the --plugins-dir files, the durable_cluster "
        "entry-point group, the built-ins; minus DURABLE_DISABLE_PLUGINS), then list each one: "
        "where it came from, its version, its step kinds and hooks. A plugin that fails to load "
        f"prints its traceback and exits {PLUGIN_LOAD_ERROR}.",
    )
    config.add_arguments(plugins, "plugins")
    plugins.add_argument(
        "--check",
        action="store_true",
        help="only validate: import every plugin, register its steps and check hook names "
        f"(exit 0, or {PLUGIN_LOAD_ERROR} with the traceback)",
    )
    plugins.add_argument("--json", action="store_true", help="print the list as JSON")
    plugins.set_defaults(func=cmd_plugins)

    metrics = commands.add_parser(
        "metrics",
        help="serve the Prometheus metrics endpoint",
        description="Serve /metrics: the database gauges (instances by status, queue depth) and, when "
        "PROMETHEUS_MULTIPROC_DIR names the directory of a running cluster, its workers' counters and "
        "histograms. `start --metrics HOST:PORT` runs this for you. See docs/observability.md.",
    )
    config.add_arguments(metrics, "metrics")
    metrics.add_argument(
        "--bind",
        default="127.0.0.1:9464",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:9464, loopback only)",
    )
    metrics.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    metrics.set_defaults(func=cmd_metrics)

    bench = commands.add_parser(
        "bench",
        help="run the benchmark harness (ops/bench/run.py of a source checkout)",
        description="Runs ops/bench/run.py with the same arguments; `durable-cluster bench --help` "
        "shows them. The harness lives in the source tree, next to the package.",
        prefix_chars="+",  # every argument, --help included, goes to the harness
        add_help=False,
    )
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    add_read_commands(commands)

    settings = commands.add_parser("settings", help="print the settings reference (markdown)")
    settings.set_defaults(func=cmd_settings)
    return parser


def bench_harness() -> Path | None:
    """``ops/bench/run.py`` above the working directory, or above the package (an editable install)."""
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for directory in (start, *start.parents):
            candidate = directory / "ops" / "bench" / "run.py"
            if candidate.is_file():
                return candidate
    return None


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    harness = bench_harness()
    if harness is None:
        raise DurableClusterError(
            "the benchmark harness ships with the source, not the package: clone the repository and run "
            "`durable-cluster bench` (or `python ops/bench/run.py`) from it"
        )
    return subprocess.run([sys.executable, str(harness), *args.args], check=False).returncode


def configure_logging(level: str, fmt: str | None = None) -> None:
    """Text or JSON lines on stderr (:mod:`durable_cluster.logs`); ``fmt`` None: DURABLE_LOG_FORMAT."""
    logs.configure_logging(level, fmt or os.environ.get(config.option("log_format").env) or "text")


# -- commands -------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    watcher = reload_command(settings) if settings.reload else []
    metrics = metrics_command(settings) if settings.metrics else []
    console_address = console_plan(settings)  # refuse a bad --console before anything starts
    # Helpers started with posix_spawn (the reload watcher) log in the same format.
    os.environ[config.option("log_format").env] = settings.log_format
    server: embedded.EmbeddedPostgres | None = None
    if settings.dsn:
        dsn = settings.dsn
        where = "external PostgreSQL"
    else:
        server = embedded.EmbeddedPostgres(settings.data_dir)
        logger.info(
            "starting the embedded PostgreSQL in %s",
            server.data_dir,
            extra={"action": "embedded_starting"},
        )
        server.start()
        dsn = server.dsn()
        where = f"embedded PostgreSQL 18 in {settings.data_dir}"
    try:
        _, version = install(dsn, settings)
        if server is not None:
            ensure_app_role(dsn)
        run_preflight(dsn, settings)
    except BaseException:
        if server is not None:
            server.stop()
        raise

    from .coordinator import Coordinator  # noqa: PLC0415 - keeps `durable-cluster dsn` light
    from .worker import run_worker  # noqa: PLC0415

    app_dsn = server.dsn(embedded.APP_ROLE) if server is not None else dsn

    def ready(coordinator: Coordinator) -> None:
        print(
            f"durable-cluster {__version__}: {coordinator.num_workers} workers on {where} "
            f"(schema version {version})\n"
            f'  connect:  psql "{app_dsn}"\n'
            f'  try:      psql "{app_dsn}" -c "{EXAMPLE}"\n'
            f"  stop:     Ctrl-C (or SIGTERM to pid {os.getpid()})"
            + ("\n  reload:   on: saving a plugin replaces the workers" if watcher else "")
            + (f"\n  metrics:  http://{metrics_address(settings)}/metrics" if metrics else "")
            + (f"\n  console:  {console_address.url}" if console_address else ""),
            flush=True,
        )

    def stopped() -> None:
        if server is not None:
            logger.info("stopping the embedded PostgreSQL", extra={"action": "embedded_stopping"})
            server.stop()

    coordinator = Coordinator(
        settings,
        functools.partial(run_worker, settings=settings, dsn=dsn),
        on_ready=ready,
        on_stopped=stopped,
        watcher=watcher,
        metrics=metrics,
        metrics_env={"DURABLE_DSN": dsn},  # not on the command line, where ps shows it
        helpers=[console_address.helper(settings, app_dsn)] if console_address else [],
    )
    return coordinator.run()


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    server: embedded.EmbeddedPostgres | None = None
    if settings.dsn:
        dsn = settings.dsn
    else:
        server = embedded.EmbeddedPostgres(settings.data_dir)
        server.start()
        dsn = server.dsn()
    try:
        before, after = install(dsn, settings)
        if server is not None:
            ensure_app_role(dsn)
    finally:
        if server is not None:
            server.stop()
    if before == after:
        print(f"schema is up to date (version {after})")
    else:
        print(f"schema upgraded from version {before} to {after}")
    return 0


def cmd_dsn(args: argparse.Namespace, settings: Settings) -> int:
    if settings.dsn:
        print(settings.dsn)
        return 0
    server = embedded.EmbeddedPostgres(settings.data_dir)
    print(server.dsn() if args.admin else server.dsn(embedded.APP_ROLE))
    return 0


def cmd_plugins(args: argparse.Namespace, settings: Settings) -> int:
    from . import pluginmanager  # noqa: PLC0415 - imports plugin code: this command and workers only

    try:
        loaded = pluginmanager.build(settings.plugins_dir)
    except (PluginLoadError, StepKindConflict) as exc:
        print_failure(exc)
        return PLUGIN_LOAD_ERROR
    except Exception as exc:  # a plugin's durable_register_steps raised: a worker would not boot
        print_failure(exc)
        return WORKER_BOOT_ERROR
    infos = loaded.describe()

    def version(info: pluginmanager.PluginInfo) -> str | None:
        return info.version or (__version__ if info.source == "builtin" else None)

    if args.json:
        rows = [
            {
                "name": info.name,
                "source": info.source,
                "version": version(info),
                "step_kinds": list(info.kinds),
                "hooks": list(info.hooks),
            }
            for info in infos
        ]
        print(json.dumps(rows, indent=2))
    elif args.check:
        print(f"{len(infos)} plugins loaded; step kinds: {', '.join(loaded.registry.kinds())}")
    else:
        table = [("NAME", "VERSION", "STEP KINDS", "SOURCE", "HOOKS")] + [
            (info.name, version(info) or "-", ", ".join(info.kinds) or "-", info.source, " ".join(info.hooks))
            for info in infos
        ]
        widths = [max(len(line[column]) for line in table) for column in range(4)]
        for line in table:
            cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
            print("  ".join([*cells, line[4]]))
    return 0


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    from . import metrics  # noqa: PLC0415 - the metrics process only

    dsn = settings.dsn or embedded.EmbeddedPostgres(settings.data_dir).dsn()
    return metrics.serve(
        args.bind,
        dsn=dsn,
        multiproc_dir=os.environ.get(metrics.ENV) or None,
        parent_pid=args.parent_pid,
    )


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    print(config.markdown(), end="")
    return 0


# -- read commands: status, list, show, explain, top, cancel, signal, doctor, console ------------


def add_read_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that connect as a role and read (docs/cli.md has every --json shape)."""
    role_note = (
        " Runs as the connecting role (--dsn, DURABLE_DSN, or the embedded server's app role): "
        "row-level security decides what it sees."
    )

    def command(name: str, help_text: str, func: Any, description: str = "") -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=(description or help_text) + role_note)
        config.add_arguments(parser, name)
        parser.set_defaults(func=func)
        return parser

    command(
        "status",
        "workers, partitions and instances by status",
        cmd_status,
        "Workers (host, pid, CPU, partitions, heartbeat age), partitions and runs (runtime role only), "
        "instances by status and the oldest running one.",
    )
    listing = command("list", "list instances, newest first", cmd_list)
    listing.add_argument("--status", choices=INSTANCE_STATUSES, help="only instances with this status")
    listing.add_argument("--label", help="only instances with this exact label")
    listing.add_argument("--limit", type=int, default=50, help="rows per page (default 50)")
    listing.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    show = command(
        "show",
        "an instance: nodes with inferred status, attempts, timings, errors",
        cmd_show,
    )
    show.add_argument("instance", metavar="ID", help="the instance id (8 hex digits)")
    explain = command(
        "explain",
        "draw an instance or a workflow: text tree, mermaid, dot or svg",
        cmd_explain,
        "df.explain's text tree of an instance id, a DSL expression, Durofut JSON or a SQL statement; "
        "--format mermaid|dot|svg draws the same graph (an instance with each node's inferred status). "
        "A DSL expression is evaluated as the caller and rolled back.",
    )
    explain.add_argument("input", metavar="ID|DSL", help="an instance id, a DSL expression, JSON or SQL")
    explain.add_argument("--format", choices=("text", "mermaid", "dot", "svg"), default="text")
    explain.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")
    top = command("top", "live view of the active instances (Ctrl-C to quit)", cmd_top)
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    top.add_argument("--iterations", type=int, default=None, help="stop after N refreshes (default: never)")
    top.add_argument("--limit", type=int, default=20, help="active instances shown (default 20)")
    cancel = command("cancel", "cancel an instance (df.cancel)", cmd_cancel)
    cancel.add_argument("instance", metavar="ID")
    cancel.add_argument("--reason", default="Cancelled by user", help="recorded with the cancellation")
    signal = command("signal", "send a signal to an instance (df.signal)", cmd_signal)
    signal.add_argument("instance", metavar="ID")
    signal.add_argument("name", metavar="NAME", help="the signal's name")
    signal.add_argument(
        "data", metavar="DATA", nargs="?", default="{}", help="JSON (else a string); default {}"
    )
    command(
        "doctor",
        "check the environment: server, pooler, connections, keepalives, logins, clock skew",
        cmd_doctor,
        "Prints PASS/WARN/FAIL lines and exits 1 on any FAIL. Give the runtime DSN to check everything "
        "(submitter logins and workers need it).",
    )
    console = commands.add_parser(
        "console",
        help="serve the web console",
        description="Serve the web console (docs/console.md) as one database role: --console-role, or "
        "the DSN's user (the embedded server's app role). Prints its URL with the access token. "
        "`start --console HOST:PORT` runs it for you.",
    )
    config.add_arguments(console, "console")
    console.add_argument(
        "--bind",
        default=CONSOLE_BIND,
        metavar="HOST:PORT",
        help=f"address to listen on (default {CONSOLE_BIND}; loopback only unless --console-allow-remote)",
    )
    console.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    console.set_defaults(func=cmd_console)


def read_dsn(settings: Settings) -> str:
    """--dsn / DURABLE_DSN, else the embedded server's application role."""
    return settings.dsn or embedded.EmbeddedPostgres(settings.data_dir).dsn(embedded.APP_ROLE)


@contextlib.contextmanager
def reading(settings: Settings) -> Iterator[inspect_module.Conn]:
    """A connection as the reading role; database errors become one line on stderr (exit 1)."""
    from . import inspect  # noqa: PLC0415

    conn = inspect.connect(read_dsn(settings))
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise DurableClusterError(db.primary_message(exc)) from exc


def emit(settings: Settings, document: Any, view: Callable[[Any], Any]) -> None:
    """One JSON document (--json), or the view's tables: colours only on a terminal without NO_COLOR."""
    from . import inspect  # noqa: PLC0415

    if settings.json:
        print(json.dumps(inspect.jsonable(document), indent=2))
        return
    terminal().print(view(document))


def terminal() -> Console:
    """Standard output for tables: plain text unless it is a terminal and NO_COLOR is unset."""
    from rich.console import Console  # noqa: PLC0415

    tty = sys.stdout.isatty()
    plain = not tty or "NO_COLOR" in os.environ  # no colours, no bold: plain text
    return Console(
        color_system=None if plain else "auto",
        no_color=plain,
        highlight=False,
        markup=False,
        emoji=False,
        width=None if tty else int(os.environ.get("COLUMNS") or 160),
    )


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from . import inspect  # noqa: PLC0415

    with reading(settings) as conn:
        emit(settings, inspect.status(conn), inspect.status_view)
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from . import inspect  # noqa: PLC0415

    with reading(settings) as conn:
        page = inspect.list_instances(
            conn, status=args.status, label=args.label, limit=args.limit, cursor=args.cursor
        )
        emit(settings, page, inspect.list_view)
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from . import inspect  # noqa: PLC0415

    with reading(settings) as conn:
        emit(settings, inspect.show(conn, args.instance), inspect.show_view)
    return 0


def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    from . import inspect, render  # noqa: PLC0415

    with reading(settings) as conn:
        if args.format == "text":
            output = inspect.explain_text(conn, args.input) + "\n"
        else:
            nodes, root = inspect.graph(conn, args.input)
            output = render.render(nodes, root, args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(output)
    if settings.json:
        print(json.dumps({"input": args.input, "format": args.format, "output": output}, indent=2))
    elif not args.output:
        print(output, end="")
    return 0


def cmd_top(args: argparse.Namespace, settings: Settings) -> int:
    from . import inspect  # noqa: PLC0415

    with reading(settings) as conn:
        if settings.json:
            print(json.dumps(inspect.top(conn, limit=args.limit), indent=2))
            return 0
        out = terminal()
        count = 0
        if not out.is_terminal:  # no screen to redraw: one snapshot after another
            while args.iterations is None or count < args.iterations:
                if count:
                    time.sleep(args.interval)
                out.print(inspect.top_view(inspect.top(conn, limit=args.limit)))
                count += 1
            return 0
        from rich.live import Live  # noqa: PLC0415

        with Live(inspect.top_view(inspect.top(conn, limit=args.limit)), console=out, screen=False) as live:
            count = 1
            while args.iterations is None or count < args.iterations:
                time.sleep(args.interval)
                live.update(inspect.top_view(inspect.top(conn, limit=args.limit)))
                count += 1
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from . import inspect  # noqa: PLC0415

    with reading(settings) as conn:
        result = inspect.cancel(conn, args.instance, args.reason)
    print(json.dumps(result, indent=2) if settings.json else result["message"])
    return 0


def cmd_signal(args: argparse.Namespace, settings: Settings) -> int:
    from . import inspect  # noqa: PLC0415

    with reading(settings) as conn:
        result = inspect.signal(conn, args.instance, args.name, args.data)
    print(json.dumps(result, indent=2) if settings.json else result["message"])
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from . import inspect  # noqa: PLC0415

    report = inspect.doctor(read_dsn(settings), settings)
    emit(settings, report, inspect.doctor_view)
    return 0 if report["ok"] else 1


def cmd_console(args: argparse.Namespace, settings: Settings) -> int:
    from . import console  # noqa: PLC0415

    def announce(address: str) -> None:
        print(f"durable-cluster console: {address}", flush=True)

    return console.serve(
        settings,
        dsn=read_dsn(settings),
        bind=args.bind,
        parent_pid=args.parent_pid,
        announce=None if args.parent_pid is not None else announce,
    )


# -- helpers ----------------------------------------------------------------------------------


def install(dsn: str, settings: Settings) -> tuple[int, int]:
    """Apply migrations (waiting for the database with backoff); return the versions before and after."""
    deadline = time.monotonic() + CONNECT_DEADLINE
    conn = db.connect_with_retry(dsn, "database", deadline=deadline)
    with conn:
        before = schema.installed_version(conn)
    applied = schema.apply(dsn, partitions=settings.partitions, settings=settings.sql_settings())
    after = before + len(applied)
    for name in applied:
        logger.info("applied migration %s", name, extra={"action": "migration_applied"})
    return before, after


def run_preflight(dsn: str, settings: Settings) -> None:
    """Refuse to start on a standby, behind a transaction pooler or without enough connections."""
    report = preflight.check(dsn, settings)
    for warning in report.warnings:
        logger.warning("%s", warning, extra={"action": "preflight_warning"})
    report.raise_for_problems()


def reload_command(settings: Settings) -> list[str]:
    """``start --reload``: the reload watcher's argv (the coordinator starts it after the workers)."""
    from . import reload  # noqa: PLC0415 - only in reload mode

    paths = reload.watch_paths(settings.plugins_dir, reload.source_checkout())
    if not paths:
        raise ConfigError(
            "--reload has nothing to watch: give --plugins-dir DIR (a directory of plugin files)"
        )
    # Every new worker imports the plugin files again. A .pyc written for one save could be
    # taken for a later save of the same size within the same second: in reload mode, write none.
    sys.dont_write_bytecode = True
    return reload.command(
        coordinator_pid=os.getpid(),  # the coordinator runs in this process
        paths=paths,
        plugins_dir=settings.plugins_dir,
        log_level=settings.log_level,
    )


def metrics_command(settings: Settings) -> list[str]:
    """``start --metrics``: the metrics server's argv (the coordinator starts it after the workers)."""
    from . import metrics  # noqa: PLC0415 - imports no prometheus_client (see its module doc)

    assert settings.metrics is not None
    return metrics.command(
        bind=settings.metrics,
        coordinator_pid=os.getpid(),  # the coordinator runs in this process
        log_level=settings.log_level,
        log_format=settings.log_format,
    )


def metrics_address(settings: Settings) -> str:
    from . import metrics  # noqa: PLC0415

    host, port = metrics.parse_bind(settings.metrics or "")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def console_plan(settings: Settings) -> console_module.Plan | None:
    """``start --console``: the checked address and the token (None without --console)."""
    if not settings.console:
        return None
    from . import console  # noqa: PLC0415

    return console.plan(settings)


def print_failure(exc: BaseException) -> None:
    """A plugin failure for a person: the message, then the whole traceback (causes first)."""
    print(f"durable-cluster: {exc}", file=sys.stderr)
    print("".join(traceback.format_exception(exc)).rstrip(), file=sys.stderr, flush=True)


def ensure_app_role(dsn: str) -> None:
    """The embedded server's application role: LOGIN, not a superuser, granted df usage."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (embedded.APP_ROLE,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(embedded.APP_ROLE)))
            conn.execute(
                sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(embedded.APP_ROLE))
            )
        conn.execute("SELECT df.grant_usage(%s)", (embedded.APP_ROLE,))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
