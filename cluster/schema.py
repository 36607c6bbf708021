"""Install and upgrade the schema: numbered plain-SQL migrations from ``sql/``.

Migrations are read from the installed package (``durable_cluster.sql``), so
a wheel carries everything ``durable-cluster init`` needs. Applied versions
are recorded in ``durable.migrations``. One runner at a time: a session
advisory lock on a dedicated autocommit connection, with a lock timeout that
fails instead of carrying on without the lock. Each migration runs in its own
transaction, so a failure leaves the schema at the previous version.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from . import keys
from .errors import SchemaError
from .version import __version__

if TYPE_CHECKING:
    from collections.abc import Mapping

logger = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
DEFAULT_PARTITIONS = 64
LOCK_TIMEOUT = 60  # seconds to wait for another runner
#: Oldest PostgreSQL major version supported.
MIN_SERVER_VERSION = 150000


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def migrations() -> list[Migration]:
    """All migrations shipped with the package, in order."""
    folder = resources.files("durable_cluster.sql") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"migration versions are not contiguous from 1: {versions}")
    return found


def latest_version() -> int:
    return len(migrations())


def check_server(conn: psycopg.Connection[Any]) -> None:
    version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        raise SchemaError(f"PostgreSQL {version // 10000} is not supported: durable-cluster needs 15 to 18")


def installed_version(conn: psycopg.Connection[Any]) -> int:
    """The highest applied migration, 0 when the schema is not installed."""
    row = conn.execute("SELECT pg_catalog.to_regclass('durable.migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM durable.migrations").fetchone()
    return int(row[0]) if row else 0


def apply(
    dsn: str,
    *,
    partitions: int | None = None,
    settings: Mapping[str, str] | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> list[str]:
    """Install or upgrade the schema; return the names of the migrations applied.

    :param partitions: the partition count. Fixed at the first install
        (default 64); passing a different number later is an error.
    :param settings: values for ``durable.settings`` (written every time, so
        ``start`` flags reach the SQL surface).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        check_server(conn)
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout * 1000)}ms")))
        try:
            conn.execute("SELECT pg_catalog.pg_advisory_lock(%s, %s)", keys.MIGRATION_LOCK)
        except psycopg.errors.LockNotAvailable as exc:
            raise SchemaError(
                f"another durable-cluster is migrating this database; gave up after {lock_timeout}s"
            ) from exc
        conn.execute("RESET lock_timeout")
        try:
            applied = _apply_locked(conn, partitions)
            _write_settings(conn, settings or {})
        finally:
            conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s, %s)", keys.MIGRATION_LOCK)
    return applied


def _apply_locked(conn: psycopg.Connection[Any], partitions: int | None) -> list[str]:
    _bootstrap(conn)
    done = {
        int(v): str(c) for v, c in conn.execute("SELECT version, checksum FROM durable.migrations").fetchall()
    }
    available = migrations()
    if done and max(done) > len(available):
        raise SchemaError(
            f"the database schema is at version {max(done)}, newer than this durable-cluster "
            f"({__version__}, version {len(available)}): upgrade durable-cluster"
        )
    applied = []
    for migration in available:
        if migration.version in done:
            continue
        logger.info("applying migration %s", migration.name, extra={"action": "migration_apply"})
        with conn.transaction():
            conn.execute(migration.text.encode())
            conn.execute(
                "INSERT INTO durable.migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
        applied.append(migration.name)
    _ensure_partitions(conn, partitions)
    return applied


def _bootstrap(conn: psycopg.Connection[Any]) -> None:
    """Create the durable schema and the migrations table, refusing a foreign schema."""
    row = conn.execute(
        "SELECT pg_catalog.pg_get_userbyid(nspowner), pg_catalog.pg_has_role(nspowner, 'USAGE')"
        " FROM pg_catalog.pg_namespace WHERE nspname = 'durable'"
    ).fetchone()
    if row is None:
        with conn.transaction():
            conn.execute("CREATE SCHEMA durable")
            conn.execute(
                "CREATE TABLE durable.migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT pg_catalog.now())"
            )
        return
    owner, mine = row
    if not mine:
        raise SchemaError(f'schema "durable" exists and belongs to "{owner}": refusing to install into it')
    if conn.execute("SELECT pg_catalog.to_regclass('durable.migrations')").fetchone() == (None,):
        raise SchemaError('schema "durable" exists but was not created by durable-cluster')


def _ensure_partitions(conn: psycopg.Connection[Any], partitions: int | None) -> None:
    row = conn.execute("SELECT value FROM durable.settings WHERE name = 'partitions'").fetchone()
    if row is not None:
        current = int(row[0])
        if partitions is not None and partitions != current:
            raise SchemaError(
                f"this database has {current} partitions, fixed at init; "
                f"--partitions {partitions} cannot change it"
            )
        return
    count = partitions or DEFAULT_PARTITIONS
    if not 1 <= count <= 4096:
        raise SchemaError(f"--partitions must be between 1 and 4096, not {count}")
    with conn.transaction():
        conn.execute("INSERT INTO durable.settings (name, value) VALUES ('partitions', %s)", (str(count),))
        conn.execute("INSERT INTO durable.partitions (partition) SELECT generate_series(0, %s - 1)", (count,))


def _write_settings(conn: psycopg.Connection[Any], settings: Mapping[str, str]) -> None:
    values = {"version": __version__, **settings}
    with conn.transaction():
        for name, value in values.items():
            conn.execute(
                "INSERT INTO durable.settings (name, value) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = now()",
                (name, value),
            )


def partition_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT value FROM durable.settings WHERE name = 'partitions'").fetchone()
    if row is None:
        raise SchemaError("the durable-cluster schema is not installed: run durable-cluster init")
    return int(row[0])
