"""Row-level security and the runtime-owned columns (spec §3.2, §3.3), with two or more roles."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from tests.security.conftest import ident

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory
    from tests.security.conftest import Conn, User

pytestmark = [pytest.mark.timeout(180)]

DENIED = psycopg.errors.InsufficientPrivilege


def test_each_role_sees_and_controls_only_its_own_rows(
    cluster: Cluster, conn: Conn, users: Callable[..., User]
) -> None:
    alice, bob = users("alice"), users("bob")
    alice.conn.execute("SELECT df.setvar('secret', 'alice-only')")
    done = alice.start("'SELECT 41 + 1 AS answer'")
    assert alice.await_(done) == "completed"
    waiting = alice.start("df.wait_for_signal('go') ~> 'SELECT 1'")
    bob_own = bob.start("'SELECT 2'")
    assert bob.await_(bob_own) == "completed"

    # Tables: bob sees only his rows, alice only hers.
    assert bob.scalar("SELECT array_agg(DISTINCT submitted_by::text) FROM df.instances") == [bob.role]
    assert bob.scalar("SELECT count(*) FROM df.nodes WHERE submitted_by::text <> %s", bob.role) == 0
    assert bob.scalar("SELECT count(*) FROM df.vars") == 0
    assert bob.scalar("SELECT df.getvar('secret')") is None
    assert alice.scalar("SELECT count(*) FROM df.instances WHERE submitted_by::text = %s", bob.role) == 0

    # Lifecycle and monitoring functions: alice's instances do not exist for bob.
    for instance in (done, waiting):
        assert bob.scalar("SELECT df.status(%s)", instance) is None
        assert bob.scalar("SELECT df.result(%s)", instance) is None
        assert bob.scalar("SELECT count(*) FROM df.instance_nodes(%s)", instance) == 0
        assert bob.scalar("SELECT count(*) FROM df.instance_nodes(%s, 5)", instance) == 0
        assert bob.scalar("SELECT df.explain(%s)", instance) == f"Instance '{instance}' not found"
        with pytest.raises(psycopg.errors.RaiseException, match="Instance not found or access denied"):
            bob.conn.execute("SELECT df.cancel(%s)", (instance,))
        with pytest.raises(psycopg.errors.RaiseException, match="Instance not found or access denied"):
            bob.conn.execute("SELECT df.signal(%s, 'go')", (instance,))
        assert bob.scalar("SELECT count(*) FROM df.instance_info(%s)", instance) == 0
        with pytest.raises(psycopg.Error, match="Instance not found"):
            bob.conn.execute("SELECT * FROM df.instance_executions(%s)", (instance,))
        with pytest.raises(psycopg.Error, match="Instance not found"):
            bob.conn.execute("SELECT df.await_instance(%s, 1)", (instance,))
    assert bob.scalar("SELECT array_agg(instance_id) FROM df.list_instances()") == [bob_own]
    assert bob.scalar("SELECT count(*) FROM df.list_instances(NULL, 100, NULL, NULL)") == 1
    with pytest.raises(DENIED, match="permission denied for function metrics"):
        bob.conn.execute("SELECT * FROM df.metrics()")
    # Direct writes to her rows touch nothing.
    assert (
        bob.conn.execute("UPDATE df.instances SET status = 'cancelled' WHERE id = %s", (waiting,)).rowcount
        == 0
    )
    assert bob.conn.execute("DELETE FROM df.vars WHERE name = 'secret'").rowcount == 0

    # Alice's instance is untouched and still hers to control.
    assert alice.result(done) == {"rows": [{"answer": 42}], "row_count": 1}
    assert alice.scalar("SELECT status FROM df.instance_info(%s)", done) == "completed"
    assert alice.scalar("SELECT df.signal(%s, 'go')", waiting) == "OK"
    assert alice.await_(waiting) == "completed"
    assert alice.scalar("SELECT df.getvar('secret')") == "alice-only"


def test_runtime_owned_and_identity_columns_cannot_be_forged(conn: Conn, users: Callable[..., User]) -> None:
    alice, bob = users("alice"), users("bob")
    mine = alice.start("'SELECT 1' ~> 'SELECT 2'")
    root = alice.scalar("SELECT root_node FROM df.instances WHERE id = %s", mine)
    forged_rows = (
        # runtime-owned columns at insert
        "INSERT INTO df.instances (id, root_node, submitted_by, status)"
        " VALUES ('0000aaaa', '0000aaab', current_user::regrole, 'completed')",
        "INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by, status, result)"
        f" VALUES ('0000aaac', '{mine}', 'SQL', 'x', current_user::regrole, 'completed', '1')",
        "INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by, status_details)"
        f" VALUES ('0000aaac', '{mine}', 'SQL', 'x', current_user::regrole, '{{}}')",
        "INSERT INTO df.instances (id, root_node, submitted_by, completed_at)"
        " VALUES ('0000aaaa', '0000aaab', current_user::regrole, now())",
        # runtime-owned columns later
        f"UPDATE df.nodes SET result = '\"forged\"' WHERE instance_id = '{mine}'",
        f"UPDATE df.nodes SET status = 'completed' WHERE instance_id = '{mine}'",
        f"UPDATE df.instances SET completed_at = now() WHERE id = '{mine}'",
        # identity columns
        f"UPDATE df.instances SET submitted_by = '{bob.role}'::regrole WHERE id = '{mine}'",
        f"UPDATE df.instances SET root_node = '0000aaab' WHERE id = '{mine}'",
        f"UPDATE df.instances SET label = 'x' WHERE id = '{mine}'",
        f"UPDATE df.nodes SET query = 'SELECT 3' WHERE instance_id = '{mine}'",
        f"UPDATE df.nodes SET submitted_by = '{bob.role}'::regrole WHERE instance_id = '{mine}'",
        # history
        f"DELETE FROM df.instances WHERE id = '{mine}'",
        f"DELETE FROM df.nodes WHERE instance_id = '{mine}'",
        "TRUNCATE df.instances",
        # statuses only the runtime sets
        f"UPDATE df.instances SET status = 'completed' WHERE id = '{mine}'",
        f"UPDATE df.instances SET status = 'running' WHERE id = '{mine}'",
        # somebody else's identity
        "INSERT INTO df.instances (id, root_node, submitted_by)"
        f" VALUES ('0000aaaa', '0000aaab', '{bob.role}'::regrole)",
        f"INSERT INTO df.vars (name, value, owner) VALUES ('x', 'y', '{bob.role}'::regrole)",
    )
    for statement in forged_rows:
        with pytest.raises(psycopg.Error) as caught:
            alice.conn.execute(statement.encode())
        assert caught.value.sqlstate == "42501", (statement, caught.value)
    assert alice.scalar("SELECT count(*) FROM df.instances") == 1
    assert alice.scalar("SELECT root_node FROM df.instances WHERE id = %s", mine) == root
    assert conn.execute("SELECT count(*) FROM df.nodes WHERE result IS NOT NULL").fetchone() == (0,)
    # Cancelling is the one status change users make; a terminal status is final.
    assert alice.scalar("SELECT df.cancel(%s)", mine).startswith(f"Instance {mine} cancelled")
    with pytest.raises(psycopg.Error) as caught:
        alice.conn.execute("UPDATE df.instances SET status = 'pending' WHERE id = %s", (mine,))
    assert caught.value.sqlstate == "DC002"


def test_bypassrls_roles_cannot_act_as_others(conn: Conn, users: Callable[..., User]) -> None:
    """RLS does not bind a BYPASSRLS grantee; the identity triggers do (0002, 0007)."""
    alice, carol = users("alice"), users("carol")
    conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(ident(carol.role)))
    alice.conn.execute("SELECT df.setvar('table', 'accounts')")
    theirs = alice.start("df.wait_for_signal('go')")
    for statement in (
        f"INSERT INTO df.vars (name, value, owner) VALUES ('planted', 'x', '{alice.role}'::regrole)",
        f"UPDATE df.vars SET value = 'accounts; DROP TABLE x' WHERE owner = '{alice.role}'::regrole",
        f"UPDATE df.vars SET owner = '{carol.role}'::regrole WHERE owner = '{alice.role}'::regrole",
        f"DELETE FROM df.vars WHERE owner = '{alice.role}'::regrole",
        "INSERT INTO df.instances (id, root_node, submitted_by)"
        f" VALUES ('0000bbbb', '0000bbbc', '{alice.role}'::regrole)",
        f"INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by)"
        f" VALUES ('0000bbbd', '{theirs}', 'SQL', 'SELECT 1', '{alice.role}'::regrole)",
        f"UPDATE df.instances SET status = 'cancelled' WHERE id = '{theirs}'",
        f"SELECT df.cancel('{theirs}')",
        f"SELECT df.signal('{theirs}', 'go')",
    ):
        with pytest.raises(psycopg.Error) as caught:
            carol.conn.execute(statement.encode())
        assert caught.value.sqlstate == "42501", (statement, caught.value)
    assert alice.scalar("SELECT df.getvar('table')") == "accounts"
    assert alice.scalar("SELECT count(*) FROM df.vars") == 1
    assert alice.scalar("SELECT status FROM df.instances WHERE id = %s", theirs) == "pending"
    assert alice.scalar("SELECT count(*) FROM df.nodes WHERE instance_id = %s", theirs) == 1
    assert conn.execute("SELECT count(*) FROM durable.signals").fetchone() == (0,)


def test_definer_entry_points_refuse_forged_arguments(conn: Conn, users: Callable[..., User]) -> None:
    """What each SECURITY DEFINER function allows a df user given another role's instance id."""
    alice, bob = users("alice"), users("bob")
    theirs = alice.start("df.wait_for_signal('go') ~> 'SELECT 1'")
    for call, message in (
        ("SELECT df._submit_v1(%s)", "was not created by this transaction"),
        ("SELECT df._signal_v1(%s, 'go', '{}')", "was not touched by this transaction"),
        ("SELECT df._cancelled_v1(%s, 'forged')", "was not cancelled by this transaction"),
    ):
        with pytest.raises(DENIED, match=message):
            bob.conn.execute(call, (theirs,))
    # Even in a transaction that touched rows of its own.
    with bob.conn.transaction():
        mine = bob.start("'SELECT 1'")
        bob.conn.execute("UPDATE df.instances SET updated_at = now() WHERE id = %s", (mine,))
        with pytest.raises(DENIED):
            bob.conn.execute("SELECT df._signal_v1(%s, 'go', '{}')", (theirs,))
    # The checkpoint needs the worker's per-claim secret.
    for partition in range(8):
        for epoch in range(3):
            with pytest.raises(psycopg.Error) as caught:
                bob.conn.execute(
                    "SELECT df._checkpoint_v1(%s, %s, %s, %s, 'forged', '{}', 'exactly-once')",
                    (theirs, partition, epoch, b"\x00" * 32),
                )
            assert caught.value.sqlstate == "DC001"
    assert conn.execute("SELECT count(*) FROM durable.journal").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM durable.signals").fetchone() == (0,)
    assert conn.execute("SELECT status FROM df.instances WHERE id = %s", (theirs,)).fetchone() == ("pending",)
    # Settings and the version are all the other definer functions reveal.
    assert bob.scalar("SELECT df._setting('partitions')") == "8"
    assert "durable-cluster" in bob.scalar("SELECT df.version()")


def test_start_new_needs_the_right_to_become_the_role(conn: Conn, users: Callable[..., User]) -> None:
    """df._start_new_v1 (transaction_mode => 'new') opens a session as the role it is given."""
    if conn.info.server_version < 160000:
        pytest.skip("GRANT ... WITH SET FALSE needs PostgreSQL 16")
    alice, bob, dave = users("alice"), users("bob"), users("dave")
    conn.execute(
        sql.SQL("GRANT {} TO {} WITH SET FALSE, INHERIT FALSE").format(ident(bob.role), ident(alice.role))
    )
    conn.execute(sql.SQL("GRANT {} TO {} WITH SET TRUE").format(ident(bob.role), ident(dave.role)))
    for who in (alice, users("eve")):
        with pytest.raises(DENIED, match="cannot start instances as"):
            who.conn.execute("SELECT df._start_new_v1('\"SELECT 1\"', NULL, NULL, %s)", (bob.role,))
    assert bob.scalar("SELECT count(*) FROM df.instances") == 0
    # Who may SET ROLE may start as the role (as SET ROLE + df.start would).
    started = dave.scalar("SELECT df._start_new_v1('\"SELECT 1\"', NULL, NULL, %s)", bob.role)
    assert bob.scalar("SELECT submitted_by::text FROM df.instances WHERE id = %s", started) == bob.role


def test_direct_inserts_and_submit_keep_the_admission_checks(
    conn: Conn, users: Callable[..., User], make_role: RoleFactory
) -> None:
    """Writing df rows by hand and calling df._submit_v1 skips df.start, not its checks."""
    group = make_role("group", login=False)
    alice = users("alice")
    conn.execute(sql.SQL("GRANT {} TO {}").format(ident(group), ident(alice.role)))

    def submit_by_hand(c: Conn, role: str) -> None:
        with c.transaction():
            c.execute(sql.SQL("SET LOCAL ROLE {}").format(ident(role)))
            c.execute(
                "INSERT INTO df.instances (id, root_node, submitted_by)"
                " VALUES ('0000cccc', '0000cccd', %s::regrole)",
                (role,),
            )
            c.execute(
                "INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by)"
                " VALUES ('0000cccd', '0000cccc', 'SQL', 'SELECT 1', %s::regrole)",
                (role,),
            )
            c.execute("SELECT df._submit_v1('0000cccc')")

    with pytest.raises(DENIED, match="does not have LOGIN privilege"):
        submit_by_hand(alice.conn, group)
    superuser = conn.execute("SELECT current_user::text").fetchone()
    assert superuser is not None
    with pytest.raises(DENIED, match="superuser instances are disabled"):
        submit_by_hand(conn, str(superuser[0]))
    # df.start says the same.
    alice.conn.execute(sql.SQL("SET ROLE {}").format(ident(group)))
    with pytest.raises(DENIED, match="does not have LOGIN privilege"):
        alice.conn.execute("SELECT df.start('SELECT 1')")
    with pytest.raises(DENIED, match="superuser instances are disabled"):
        conn.execute("SELECT df.start('SELECT 1')")
    assert conn.execute("SELECT count(*) FROM durable.runs").fetchone() == (0,)
