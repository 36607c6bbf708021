"""Migrations: shipped in the wheel, applied once, serialized, recorded."""

from __future__ import annotations

import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from durable_cluster import schema
from durable_cluster.errors import SchemaError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_the_wheel_ships_the_sql(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("durable_cluster-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(m.name for m in schema.migrations())
    for name in migrations:
        assert f"durable_cluster/sql/migrations/{name}" in names
    assert "durable_cluster/sql/queries.sql" in names
    assert "durable_cluster/plugins/sql.py" in names
    assert "durable_cluster/py.typed" in names
    assert not any(n.startswith(("cluster/", "plugins/", "sql/")) for n in names), (
        "generic top-level packages"
    )


def test_fresh_install_records_every_version(pg_server: Any) -> None:
    name = "mig_fresh"
    with pg_server.admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg_server.db_dsn(name)
    try:
        applied = schema.apply(dsn, partitions=16)
        assert applied == [m.name for m in schema.migrations()]
        assert schema.apply(dsn) == []
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT version, name, checksum FROM durable.migrations ORDER BY 1"
            ).fetchall()
            assert [(v, n, c) for v, n, c in rows] == [
                (m.version, m.name, m.checksum) for m in schema.migrations()
            ]
            assert schema.partition_count(conn) == 16
            assert conn.execute("SELECT count(*) FROM durable.partitions").fetchone() == (16,)
        with pytest.raises(SchemaError, match="this database has 16 partitions, fixed at init"):
            schema.apply(dsn, partitions=32)
    finally:
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_concurrent_runners_apply_once(pg_server: Any) -> None:
    name = "mig_race"
    with pg_server.admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg_server.db_dsn(name)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(schema.apply(dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        assert sorted(len(r) for r in results) == [0, 0, 0, len(schema.migrations())]
    finally:
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_foreign_durable_schema_is_refused(pg_server: Any) -> None:
    name = "mig_foreign"
    with pg_server.admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg_server.db_dsn(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA durable")
        with pytest.raises(
            SchemaError, match='schema "durable" exists but was not created by durable-cluster'
        ):
            schema.apply(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA durable")
            conn.execute("CREATE SCHEMA df")
        with pytest.raises(psycopg.errors.DuplicateSchema):
            schema.apply(dsn)
    finally:
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_newer_schema_is_refused(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO durable.migrations VALUES (999, '0999_future.sql', 'x')")
    with pytest.raises(SchemaError, match="newer than this durable-cluster"):
        schema.apply(dsn)
