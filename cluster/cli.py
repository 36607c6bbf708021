"""The ``durable-cluster`` command line: thin functions over the package.

Commands:

- ``start``: run the cluster (embedded PostgreSQL 18 unless ``--dsn``);
- ``init``: install or upgrade the schema;
- ``dsn``: print the embedded server's connection string;
- ``plugins``: list the plugins and their step kinds, or ``--check`` that they load;
- ``settings``: print the settings reference.

Every flag has an environment variable, named in ``--help``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from . import config, db, embedded, preflight, schema
from .config import Settings
from .errors import ConfigError, DurableClusterError, PluginLoadError, StepKindConflict
from .process import PLUGIN_LOAD_ERROR, WORKER_BOOT_ERROR
from .version import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .coordinator import Coordinator

logger = logging.getLogger("durable_cluster")

LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"
#: The example printed at start-up ($ escaped for the shell).
EXAMPLE = "SELECT df.start('SELECT 1' |=> 'one' ~> 'SELECT \\$one + 1')"
CONNECT_DEADLINE = 300.0  # seconds start/init keep retrying an unreachable database


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        settings = Settings.from_args(args)
        configure_logging(settings.log_level)
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

    settings = commands.add_parser("settings", help="print the settings reference (markdown)")
    settings.set_defaults(func=cmd_settings)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True)
    logging.getLogger("psycopg").setLevel(logging.WARNING)
    # httpx logs every request URL at INFO (credentials included); steps log their own audit line.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


# -- commands -------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    watcher = reload_command(settings) if settings.reload else []
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
            + ("\n  reload:   on: saving a plugin replaces the workers" if watcher else ""),
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


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    print(config.markdown(), end="")
    return 0


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
