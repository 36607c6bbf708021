"""Authentication of submitting roles (docs/security.md): the embedded posture and the start-up check."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from psycopg import sql

from tests.fix_cluster import wait_for
from tests.security.conftest import ident

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.fix_cluster import Cluster
    from tests.fix_db import Server
    from tests.security.conftest import Conn, User

pytestmark = [pytest.mark.timeout(180)]


def test_embedded_server_trusts_only_its_private_socket(pg_server: Server) -> None:
    """The embedded server (the one these tests run on unless --test-dsn is given)."""
    if pg_server.embedded is None:
        pytest.skip("an external server (--test-dsn): its authentication is the operator's")
    with pg_server.admin() as admin:
        rules = admin.execute(
            "SELECT type, auth_method, error FROM pg_hba_file_rules ORDER BY rule_number"
        ).fetchall()
        assert rules, "pg_hba.conf has no rules"
        for kind, method, error in rules:
            assert error is None
            assert (kind, method) == ("local", "trust") or method == "reject", (kind, method)
        assert any(kind == "local" and method == "trust" for kind, method, _ in rules)
        settings = dict(
            admin.execute(
                "SELECT name, setting FROM pg_settings"
                " WHERE name IN ('listen_addresses', 'unix_socket_permissions')"
            ).fetchall()
        )
    assert settings == {"listen_addresses": "", "unix_socket_permissions": "0700"}


def test_start_warns_when_it_cannot_log_in_as_a_submitter(
    start_cluster: Callable[..., Cluster], conn: Conn, users: Callable[..., User]
) -> None:
    alice = users("alice")
    alice.start("df.wait_for_signal('go') ~> 'SELECT 1'")
    conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident(alice.role)))
    cluster = start_cluster()
    line = wait_for(
        lambda: next(
            (x for x in cluster.log().splitlines() if f'cannot log in as role "{alice.role}"' in x), None
        ),
        30,
        message="the preflight warning",
    )
    for hint in (
        "not permitted to log in",
        "trust or peer",
        "pg_ident",
        "client certificate",
        "password file",
    ):
        assert hint in line
    assert "docs/security.md" in line
