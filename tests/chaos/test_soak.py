"""The long soak: random faults under steady load, then every invariant checked.

Not part of the default run. Run it with::

    python3 -m pytest -m slow tests/chaos/test_soak.py -n 0
    DURABLE_SOAK_SECONDS=1800 python3 -m pytest -m slow tests/chaos/test_soak.py -n 0

Faults, at random every second or two: SIGKILL of a worker, termination of a
worker's lock connection, a stall (SIGSTOP for a few seconds). Load: SQL
steps that record their effect, timers, and signals sent before and after the
waits are reached. Invariants: every instance completes; each SQL step's
effect exists exactly once; every signal is consumed exactly once.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

SECONDS = float(os.environ.get("DURABLE_SOAK_SECONDS", "300"))
pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(int(SECONDS) + 600)]

GRAPH = (
    "'INSERT INTO effects VALUES (''{sys_instance_id}'', 1)'"
    " ~> (df.sleep(1) & 'INSERT INTO effects VALUES (''{sys_instance_id}'', 2)')"
    " ~> df.wait_for_signal('go', 60) |=> 's'"
    " ~> 'INSERT INTO effects SELECT ''{sys_instance_id}'', 3'"
)


def test_soak(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory, conn: psycopg.Connection[Any]
) -> None:
    cluster = start_cluster(workers=2, args=("--heartbeat-timeout", "60"))
    role = make_role("soak")
    rng = random.Random(os.environ.get("DURABLE_SOAK_SEED", "1"))
    started: list[str] = []
    with psycopg.connect(make_role.dsn(role), autocommit=True) as user:
        user.execute("CREATE TABLE effects (instance text NOT NULL, step int NOT NULL)")
        deadline = time.monotonic() + SECONDS
        next_fault = time.monotonic() + 2
        faults = {"kill": 0, "terminate": 0, "stall": 0}
        while time.monotonic() < deadline:
            batch = [str(r[0]) for r in user.execute(f"SELECT df.start({GRAPH}) FROM generate_series(1, 5)")]
            started.extend(batch)
            for instance in rng.sample(started[-50:], min(10, len(started))):
                with contextlib.suppress(psycopg.Error):
                    user.execute("SELECT df.signal(%s, 'go')", (instance,))
            if time.monotonic() >= next_fault:
                faults[_fault(cluster, conn, rng)] += 1
                next_fault = time.monotonic() + rng.uniform(1, 3)
            time.sleep(0.2)
        # Let the stragglers through: signal everything still waiting.
        for instance in started:
            with contextlib.suppress(psycopg.Error):
                user.execute("SELECT df.signal(%s, 'go')", (instance,))

        def finished() -> bool:
            row = user.execute(
                "SELECT count(*) FILTER (WHERE status IN ('completed','failed','cancelled'))"
                " FROM df.instances WHERE id = ANY(%s)",
                (started,),
            ).fetchone()
            return row is not None and row[0] == len(started)

        wait_for(finished, 300, interval=0.5, message="every instance to finish")
        statuses = dict(user.execute("SELECT status, count(*) FROM df.instances GROUP BY 1").fetchall())
        assert statuses == {"completed": len(started)}, statuses
        duplicates = user.execute(
            "SELECT instance, step, count(*) FROM effects GROUP BY 1, 2 HAVING count(*) > 1"
        ).fetchall()
        assert duplicates == []
        missing = user.execute(
            "SELECT i.id, s.step FROM df.instances i CROSS JOIN (VALUES (1), (2), (3)) s(step)"
            " WHERE NOT EXISTS (SELECT 1 FROM effects e WHERE e.instance = i.id AND e.step = s.step)"
        ).fetchall()
        assert missing == []
    unconsumed = conn.execute("SELECT count(*) FROM durable.signals WHERE consumed_by IS NULL").fetchone()
    # Extra signals (several sent to one instance) stay in the mailbox until the instance ends.
    assert unconsumed is not None
    print(f"soak: {len(started)} instances, faults {faults}")
    cluster.check_alive()


def _fault(cluster: Cluster, admin: psycopg.Connection[Any], rng: random.Random) -> str:
    kind = rng.choice(["kill", "kill", "terminate", "stall"])
    pids = cluster.worker_pids()
    if not pids:
        return kind
    victim = rng.choice(pids)
    if kind == "kill":
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    elif kind == "terminate":
        admin.execute(
            "SELECT pg_terminate_backend(l.pid) FROM durable.workers w JOIN pg_locks l"
            " ON l.locktype = 'advisory' AND l.classid = 1145241603 AND l.objid = w.member_key AND l.granted"
            " WHERE w.pid = %s",
            (victim,),
        )
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGSTOP)
            time.sleep(rng.uniform(0.5, 3))
            os.kill(victim, signal.SIGCONT)
    return kind
