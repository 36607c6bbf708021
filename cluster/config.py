"""Settings: each declared once, giving its CLI flag, environment variable and docs.

Every setting is a :class:`Option`. ``add_arguments`` turns the options of a
command into argparse flags (help text names the environment variable);
``Settings.from_args`` reads flags, then ``DURABLE_<NAME>`` environment
variables, then defaults. ``docs/settings.md`` is generated from the same
table (``durable-cluster settings --markdown``), so flags, env vars and docs
cannot drift apart.

Names mirror pg_durable's GUCs where one exists (``max_user_connections``,
``execution_acquire_timeout``, ``enable_superuser_instances`` ...).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "DURABLE_"


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str
    commands: tuple[str, ...]
    minimum: float | None = None
    maximum: float | None = None
    flag_false: str | None = None  # for booleans that default to True: "--no-pin"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, raw: str) -> Any:
        try:
            value = _bool(raw) if self.type is bool else self.type(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.flag} / {self.env}: {exc}") from exc
        return self.check(value)

    def check(self, value: Any) -> Any:
        if value is None or self.type is bool:
            return value
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{self.flag} must be at least {self.minimum:g}, not {value}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{self.flag} must be at most {self.maximum:g}, not {value}")
        return value


RUN = ("start", "worker")
#: the commands that read (and cancel, signal) as the connecting role
READ = ("status", "list", "show", "explain", "top", "cancel", "signal", "doctor")
CONNECT = ("start", "init", "worker", "dsn", "metrics", *READ, "console")

OPTIONS: tuple[Option, ...] = (
    Option(
        "dsn",
        str,
        None,
        "PostgreSQL connection string (15-18). Without it, an embedded PostgreSQL 18 runs in --data-dir.",
        CONNECT,
    ),
    Option(
        "data_dir",
        Path,
        Path(".durable"),
        "Directory of the embedded PostgreSQL server (used when no DSN is given).",
        CONNECT,
    ),
    Option(
        "partitions",
        int,
        None,
        "Number of partitions, fixed when the schema is first installed (default 64).",
        ("init", "start"),
        minimum=1,
        maximum=4096,
    ),
    Option(
        "workers",
        int,
        None,
        "Worker processes (default: number of CPUs).",
        (*RUN, "doctor"),
        minimum=1,
        maximum=1024,
    ),
    Option(
        "pin",
        bool,
        True,
        "Pin each worker process to one CPU (slot modulo CPU count).",
        RUN,
        flag_false="--no-pin",
    ),
    Option(
        "graceful_timeout",
        float,
        30.0,
        "Seconds a stopping worker may take to finish in-flight steps before it is killed.",
        RUN,
        minimum=0,
    ),
    Option(
        "respawn_backoff",
        float,
        30.0,
        "Longest pause before respawning a worker whose predecessors in its slot kept dying young "
        "(3 in a row within 5 s of their start: 0.25 s, doubling per further death); 0 respawns at once.",
        RUN,
        minimum=0,
    ),
    Option(
        "heartbeat_timeout",
        float,
        30.0,
        "Seconds without a heartbeat before the coordinator kills a stuck worker.",
        RUN,
        minimum=1,
    ),
    Option(
        "step_statement_timeout",
        float,
        3600.0,
        "statement_timeout (seconds) of every SQL step's connection; 0 disables it. A step may "
        "still SET its own.",
        RUN,
        minimum=0,
    ),
    Option(
        "max_user_connections",
        int,
        10,
        "Concurrent SQL steps per host (pg_durable.max_user_connections), shared among "
        "the workers of this host.",
        (*RUN, "doctor"),
        minimum=1,
        maximum=10000,
    ),
    Option(
        "execution_acquire_timeout",
        float,
        30.0,
        "Seconds a SQL step waits for a free execution slot before failing "
        "(pg_durable.execution_acquire_timeout).",
        RUN,
        minimum=1,
        maximum=3600,
    ),
    Option(
        "enable_superuser_instances",
        bool,
        False,
        "Allow superusers to start instances (pg_durable.enable_superuser_instances).",
        RUN,
    ),
    Option(
        "list_instances_max_limit",
        int,
        1000,
        "Largest limit_count df.list_instances accepts (pg_durable.list_instances_max_limit).",
        RUN,
        minimum=1,
        maximum=1_000_000,
    ),
    Option(
        "retention_days",
        int,
        30,
        "Terminal instances older than this many days are deleted, and at most the newest "
        "10,000 are kept (pg_durable.retention_days; 0 keeps none).",
        RUN,
        minimum=0,
        maximum=36500,
    ),
    Option(
        "reconcile_interval",
        int,
        3600,
        "Seconds between retention and orphan clean-ups (pg_durable.reconcile_interval; 0 = off).",
        RUN,
        minimum=0,
        maximum=86400,
    ),
    Option(
        "max_new_transaction_starts",
        int,
        2,
        "Concurrent df.start(..., transaction_mode => 'new') launches "
        "(pg_durable.max_new_transaction_starts).",
        RUN,
        minimum=1,
        maximum=1000,
    ),
    Option(
        "new_transaction_start_timeout",
        int,
        5,
        "Seconds df.start(..., transaction_mode => 'new') waits for a launch slot "
        "(pg_durable.new_transaction_start_timeout).",
        RUN,
        minimum=1,
        maximum=3600,
    ),
    Option(
        "poison_threshold",
        int,
        3,
        "Fail a step that was running when its worker died this many times in a row, instead of "
        "letting it crash-loop the cluster.",
        RUN,
        minimum=1,
        maximum=1000,
    ),
    Option(
        "poll_interval",
        float,
        5.0,
        "Seconds between safety polls for due work (wake-ups normally come by NOTIFY).",
        RUN,
        minimum=0.05,
    ),
    Option(
        "http_allow_hosts",
        str,
        "",
        "Comma-separated host patterns HTTP steps may reach (fnmatch style, e.g. "
        "'api.example.com,*.internal.example'); empty: any public host.",
        RUN,
    ),
    Option(
        "http_allow_private",
        bool,
        False,
        "Let HTTP steps reach loopback, private, link-local and metadata addresses "
        "(tests and trusted networks only).",
        RUN,
    ),
    Option(
        "http_max_request_bytes",
        int,
        10 * 1024 * 1024,
        "Largest HTTP step request body, in bytes.",
        RUN,
        minimum=0,
    ),
    Option(
        "http_max_response_bytes",
        int,
        10 * 1024 * 1024,
        "Largest HTTP step response body, in bytes; larger responses fail the step.",
        RUN,
        minimum=0,
    ),
    Option(
        "http_timeout_ceiling",
        float,
        300.0,
        "Upper bound on an HTTP step's timeout_seconds.",
        RUN,
        minimum=1,
    ),
    Option(
        "plugins_dir",
        Path,
        None,
        "Directory of plugin files (*.py) defining custom steps.",
        (*RUN, "plugins"),
    ),
    Option(
        "reload",
        bool,
        False,
        "Development: watch the --plugins-dir files (and sql/ and plugins/ in a source checkout) "
        "and, on each valid save, replace every worker one at a time (in-flight steps finish and "
        "checkpoint). Works with any --workers. A plugin that fails to import keeps the running "
        "workers until the next save.",
        ("start",),
    ),
    Option(
        "log_level",
        str,
        "info",
        "Log level: debug, info, warning, error.",
        ("start", "worker", "init", "metrics", "console"),
    ),
    Option(
        "log_format",
        str,
        "text",
        "Log format: text, or json (one object per line: ts, level, logger, pid, event, message "
        "and the record's ids). Workers, the reload watcher and the metrics server follow it.",
        ("start", "worker", "init", "metrics", "console"),
    ),
    Option(
        "metrics",
        str,
        None,
        "Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464) from a "
        "separate process the coordinator starts; see docs/observability.md.",
        ("start",),
    ),
    Option(
        "otel",
        str,
        None,
        "OTLP/HTTP endpoint for OpenTelemetry traces, one span per step (e.g. http://localhost:4318; "
        "OTEL_EXPORTER_OTLP_ENDPOINT works too). Needs the otel extra.",
        RUN,
    ),
    Option(
        "json",
        bool,
        False,
        "Print one JSON document instead of tables (the shapes are in docs/cli.md).",
        READ,
    ),
    Option(
        "console",
        str,
        None,
        "Also serve the web console on HOST:PORT (e.g. 127.0.0.1:8484) from a separate process the "
        "coordinator starts; its URL, with the access token, is printed once. See docs/console.md.",
        ("start",),
    ),
    Option(
        "console_role",
        str,
        None,
        "Database role the web console acts as: row-level security decides what it shows "
        "(default: the DSN's user; with the embedded server, the app role).",
        ("start", "console"),
    ),
    Option(
        "console_token",
        str,
        None,
        "Secret token of the web console URL, at least 16 characters (default: a new random one "
        "each start, printed once).",
        ("start", "console"),
    ),
    Option(
        "console_allow_remote",
        bool,
        False,
        "Let the web console listen on a non-loopback address (put a TLS reverse proxy in front).",
        ("start", "console"),
    ),
)

_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one command."""

    dsn: str | None = None
    data_dir: Path = Path(".durable")
    partitions: int | None = None
    workers: int | None = None
    pin: bool = True
    graceful_timeout: float = 30.0
    respawn_backoff: float = 30.0
    heartbeat_timeout: float = 30.0
    step_statement_timeout: float = 3600.0
    max_user_connections: int = 10
    execution_acquire_timeout: float = 30.0
    enable_superuser_instances: bool = False
    list_instances_max_limit: int = 1000
    retention_days: int = 30
    reconcile_interval: int = 3600
    max_new_transaction_starts: int = 2
    new_transaction_start_timeout: int = 5
    poison_threshold: int = 3
    poll_interval: float = 5.0
    http_allow_hosts: str = ""
    http_allow_private: bool = False
    http_max_request_bytes: int = 10 * 1024 * 1024
    http_max_response_bytes: int = 10 * 1024 * 1024
    http_timeout_ceiling: float = 300.0
    plugins_dir: Path | None = None
    reload: bool = False
    log_level: str = "info"
    log_format: str = "text"
    metrics: str | None = None
    otel: str | None = None
    json: bool = False
    console: str | None = None
    console_role: str | None = None
    console_token: str | None = None
    console_allow_remote: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        values: dict[str, Any] = {}
        names = {f.name for f in fields(cls)}
        for option in OPTIONS:
            if option.name not in names:
                continue
            given = getattr(args, option.name, None)
            if given is not None:
                values[option.name] = option.check(given)
            elif option.env in env:
                values[option.name] = option.parse(env[option.env])
        return cls(**values)

    def sql_settings(self) -> dict[str, str]:
        """The settings the SQL surface reads from ``durable.settings``."""
        return {
            "enable_superuser_instances": "on" if self.enable_superuser_instances else "off",
            "list_instances_max_limit": str(self.list_instances_max_limit),
            "max_new_transaction_starts": str(self.max_new_transaction_starts),
            "new_transaction_start_timeout": str(self.new_transaction_start_timeout),
        }


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the flags of ``command`` to ``parser`` (defaults stay None: env and defaults apply later)."""
    for option in OPTIONS:
        if command not in option.commands:
            continue
        default = option.default.__str__() if option.default is not None else "none"
        help_text = f"{option.help} [env {option.env}; default {default}]"
        if option.type is bool:
            group = parser.add_mutually_exclusive_group()
            if option.flag_false:
                group.add_argument(
                    option.flag, dest=option.name, action="store_true", default=None, help=help_text
                )
                group.add_argument(
                    option.flag_false,
                    dest=option.name,
                    action="store_false",
                    default=None,
                    help=f"Turn off {option.flag}.",
                )
            else:
                group.add_argument(
                    option.flag, dest=option.name, action="store_true", default=None, help=help_text
                )
        else:
            parser.add_argument(
                option.flag,
                dest=option.name,
                type=option.type,
                default=None,
                metavar=option.name.upper(),
                help=help_text,
            )


def option(name: str) -> Option:
    return _BY_NAME[name]


def markdown() -> str:
    """The settings reference, generated from OPTIONS."""
    lines = [
        "| flag | environment | default | commands | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for opt in OPTIONS:
        flag = opt.flag + (f" / {opt.flag_false}" if opt.flag_false else "")
        lines.append(f"| `{flag}` | `{opt.env}` | `{opt.default}` | {', '.join(opt.commands)} | {opt.help} |")
    return "\n".join(lines) + "\n"
