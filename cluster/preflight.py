"""Start-up checks: refuse clearly what would fail obscurely later.

Run by ``durable-cluster start`` (in the coordinator, on a connection it
closes before forking) and by ``durable-cluster doctor``:

- the server is PostgreSQL 15 or newer and not a read-only standby;
- the connection is not going through a transaction-mode pooler (session
  advisory locks and LISTEN need a session-mode connection);
- ``max_connections`` can fit the configured workers;
- the runtime can log in as the roles whose instances are waiting (a
  warning: the role may be fixed while the cluster runs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from . import db
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger(__name__)

#: Connections one worker opens besides its SQL-step connections: the lock
#: connection, the checkpoint writer, and a pool of up to 4 for loads.
CONNECTIONS_PER_WORKER = 6
POOLER_PROBES = 5


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def raise_for_problems(self) -> None:
        if self.problems:
            raise ConfigError("refusing to start:\n  - " + "\n  - ".join(self.problems))


def needed_connections(settings: Settings) -> int:
    return settings.worker_count * CONNECTIONS_PER_WORKER + settings.max_user_connections


def check(dsn: str, settings: Settings, *, check_roles: bool = True) -> Report:
    """Inspect the server behind ``dsn``; the report lists problems (refuse) and warnings."""
    report = Report()
    with psycopg.connect(db.runtime_conninfo(dsn), autocommit=True) as conn:
        _server(conn, report)
        _pooler(conn, report)
        _budget(conn, settings, report)
        if check_roles:
            _roles(dsn, conn, report)
    return report


def _server(conn: psycopg.Connection[Any], report: Report) -> None:
    version = conn.info.server_version
    report.facts["server_version"] = version
    if version < 150000:
        report.problems.append(
            f"PostgreSQL {version // 10000} is not supported: durable-cluster needs 15 to 18"
        )
    elif version >= 190000:
        report.warnings.append(f"PostgreSQL {version // 10000} is newer than the versions tested (15 to 18)")
    row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
    in_recovery = bool(row and row[0])
    report.facts["in_recovery"] = in_recovery
    if in_recovery:
        report.problems.append(
            "the server is a read-only standby (pg_is_in_recovery() is true): point --dsn at the primary"
        )


def _pooler(conn: psycopg.Connection[Any], report: Report) -> None:
    pids = set()
    for _ in range(POOLER_PROBES):
        row = conn.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()
        pids.add(int(row[0]) if row else 0)
    report.facts["backend_pids_seen"] = len(pids)
    if len(pids) > 1:
        report.problems.append(
            "the connection goes through a transaction-mode pooler (the server process changed between "
            "statements): partition locks and LISTEN need a session-mode connection. Connect to PostgreSQL "
            "directly or use a session-mode pool."
        )


def _budget(conn: psycopg.Connection[Any], settings: Settings, report: Report) -> None:
    row = conn.execute(
        "SELECT current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int,"
        " coalesce(current_setting('reserved_connections', true), '0')::int,"
        " (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend')::int"
    ).fetchone()
    assert row is not None
    maximum, superuser_reserved, reserved, used = (int(v) for v in row)
    free = maximum - superuser_reserved - reserved - used
    needed = needed_connections(settings)
    report.facts.update(max_connections=maximum, connections_used=used, connections_needed=needed)
    if needed > free:
        report.problems.append(
            f"max_connections ({maximum}) cannot fit the configured workers: they need about {needed} "
            f"connections ({settings.worker_count} workers x {CONNECTIONS_PER_WORKER} + "
            f"--max-user-connections {settings.max_user_connections}) and {free} are free "
            f"({used} in use, {superuser_reserved + reserved} reserved). Lower --workers or "
            "--max-user-connections, or raise max_connections."
        )


def _roles(dsn: str, conn: psycopg.Connection[Any], report: Report) -> None:
    exists = conn.execute("SELECT pg_catalog.to_regclass('durable.runs') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return
    roles = [
        str(r[0])
        for r in conn.execute(
            "SELECT DISTINCT a.rolname FROM durable.runs r"
            " JOIN pg_catalog.pg_roles a ON a.oid = r.submitted_by ORDER BY 1 LIMIT 20"
        ).fetchall()
    ]
    for role in roles:
        try:
            with psycopg.connect(db.conninfo(dsn, user=role, connect_timeout="5"), autocommit=True):
                pass
        except psycopg.OperationalError as exc:
            report.warnings.append(
                f'cannot log in as role "{role}", which has instances waiting: {db.primary_message(exc)}. '
                "Each SQL step logs in as its submitter: allow it with trust or peer on a local socket, a "
                "pg_ident map, a client certificate or a password file (docs/security.md)."
            )
