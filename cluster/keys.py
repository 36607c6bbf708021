"""Advisory-lock keys and the instance-to-partition hash.

Every advisory lock uses the two-integer form ``(namespace, key)`` so the
project's locks cannot clash with an application's single-bigint locks. The
namespaces spell "DC" followed by a number. They are repeated as literals in
the SQL migrations; ``tests/unit/test_keys.py`` checks that both agree.
"""

from __future__ import annotations

PARTITION_NS = 0x44430001  # held (session) by the worker owning the partition
FENCE_NS = 0x44430002  # shared by checkpoints, exclusive while a claim bumps the epoch
MEMBER_NS = 0x44430003  # held (session) by every live worker: membership
MIGRATE_NS = 0x44430004  # held by the one schema migration runner
RECONCILE_NS = 0x44430005  # held (transaction) by the one reconciler at work
NEW_START_NS = 0x50474446  # "PGDF": pg_durable's launch slots for transaction_mode 'new'

MIGRATION_LOCK = (MIGRATE_NS, 0)

#: LISTEN/NOTIFY channel: payload "<partition>" or "<partition>:<instance id>".
WAKE_CHANNEL = "durable_wake"
#: A payload on WAKE_CHANNEL: a worker is gone, every worker looks for free
#: partitions now (sent by a worker its coordinator pokes with SIGUSR1).
REBALANCE = "rebalance"


def partition_of(instance_id: str, partitions: int) -> int:
    """The partition of an instance: its 8-hex id as an integer, modulo P.

    Mirrors ``df._partition_of`` in SQL.
    """
    return int(instance_id, 16) % partitions
