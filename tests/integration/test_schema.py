from __future__ import annotations

import psycopg

from durable_cluster import schema


def test_migrations_recorded_and_idempotent(dsn: str) -> None:
    assert schema.apply(dsn) == []
    with psycopg.connect(dsn) as conn:
        assert schema.installed_version(conn) == schema.latest_version()
        assert schema.partition_count(conn) == 8
