from __future__ import annotations

import re
from importlib import resources

import pytest

from durable_cluster import keys, queries


def test_parse_names_and_bodies() -> None:
    text = "-- name: one\n-- a description\nSELECT 1\n\n-- name: two\nSELECT\n  2\n"
    assert queries.parse(text) == {"one": "SELECT 1", "two": "SELECT\n  2"}


def test_parse_rejects_duplicates_and_empty() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        queries.parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")
    with pytest.raises(ValueError, match="is empty"):
        queries.parse("-- name: a\n-- only a comment\n")


def test_every_query_the_runtime_uses_exists() -> None:
    used = set()
    for module in ("checkpoint.py", "partitions.py", "engine.py", "worker.py"):
        text = (resources.files("durable_cluster") / module).read_text()
        used |= set(re.findall(r'queries\.get\("([a-z_]+)"\)', text))
    assert used, "no query references found"
    assert used <= set(queries.all_queries())


def test_lock_namespaces_match_the_sql() -> None:
    """The advisory-lock namespaces are literals in the SQL; they must equal keys.py."""
    sql_text = (resources.files("durable_cluster.sql") / "queries.sql").read_text()
    migrations = "".join(
        entry.read_text()
        for entry in (resources.files("durable_cluster.sql") / "migrations").iterdir()
        if entry.name.endswith(".sql")
    )
    assert str(keys.PARTITION_NS) in sql_text
    assert str(keys.MEMBER_NS) in sql_text
    assert str(keys.FENCE_NS) in sql_text
    assert str(keys.FENCE_NS) in migrations
    literals = {int(n) for n in re.findall(r"\b(114524160\d)\b", sql_text + migrations)}
    assert literals <= {keys.PARTITION_NS, keys.FENCE_NS, keys.MEMBER_NS, keys.MIGRATE_NS, keys.RECONCILE_NS}


@pytest.mark.parametrize("instance_id", ["00000000", "ffffffff", "0792a12a", "3f2a9c01"])
def test_partition_hash(instance_id: str) -> None:
    assert keys.partition_of(instance_id, 64) == int(instance_id, 16) % 64
    assert 0 <= keys.partition_of(instance_id, 7) < 7
