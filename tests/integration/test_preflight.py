from __future__ import annotations

from typing import Any

import psycopg
import pytest

from durable_cluster import preflight
from durable_cluster.config import Settings
from durable_cluster.errors import ConfigError


def test_a_healthy_server_passes(dsn: str) -> None:
    report = preflight.check(dsn, Settings(workers=2))
    assert report.problems == []
    assert report.facts["in_recovery"] is False
    assert report.facts["backend_pids_seen"] == 1
    report.raise_for_problems()


def test_too_many_workers_for_max_connections(dsn: str) -> None:
    report = preflight.check(dsn, Settings(workers=1000, max_user_connections=10))
    assert len(report.problems) == 1
    assert "cannot fit the configured workers: they need about 6010 connections" in report.problems[0]
    with pytest.raises(ConfigError, match="refusing to start"):
        report.raise_for_problems()


def test_a_role_that_cannot_log_in_is_reported(
    dsn: str, make_role: Any, conn: psycopg.Connection[Any]
) -> None:
    role = make_role("gone")
    with psycopg.connect(make_role.dsn(role), autocommit=True) as user:
        user.execute("SELECT df.start(df.wait_for_signal('x'))")
    conn.execute(f'ALTER ROLE "{role}" NOLOGIN')
    report = preflight.check(dsn, Settings(workers=1))
    assert report.problems == []
    assert any(
        f'cannot log in as role "{role}"' in w and "not permitted to log in" in w for w in report.warnings
    )


class _Row:
    def __init__(self, value: Any) -> None:
        self.value = value

    def fetchone(self) -> tuple[Any, ...]:
        return (self.value,)


class FakeConnection:
    """Answers the probes as a transaction-mode pooler or a standby would."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = answers

    def execute(self, query: str) -> Any:
        for key, values in self.answers.items():
            if key in query:
                return _Row(values.pop(0) if len(values) > 1 else values[0])
        raise AssertionError(f"unexpected query {query}")


def test_a_transaction_mode_pooler_is_refused() -> None:
    report = preflight.Report()
    preflight._pooler(FakeConnection({"pg_backend_pid": [101, 102, 101, 103, 104]}), report)  # type: ignore[arg-type]
    assert len(report.problems) == 1
    assert "transaction-mode pooler" in report.problems[0]


def test_a_standby_is_refused() -> None:
    class Info:
        server_version = 170002

    fake = FakeConnection({"pg_is_in_recovery": [True]})
    fake.info = Info()  # type: ignore[attr-defined]
    report = preflight.Report()
    preflight._server(fake, report)  # type: ignore[arg-type]
    assert report.problems == [
        "the server is a read-only standby (pg_is_in_recovery() is true): point --dsn at the primary"
    ]
