-- durable-cluster 0001: the schemas and the private runtime tables.
--
-- Three schemas:
--   df         the pg_durable-compatible user surface (tables, DSL, lifecycle)
--   durable    the runtime: partitions, workers, frozen runs, the journal of
--              checkpoints, the signal mailbox. Nothing here is granted to
--              anyone; users reach it only through df functions.
--   _duroxide  emulates pg_durable's engine schema, for tools that probe
--              readiness (_worker_ready).
--
-- Plain CREATE SCHEMA for df (no IF NOT EXISTS): a pre-existing df schema is
-- an object pre-creation attack (pg_durable T14) and must fail the install.
-- durable is created by the migration runner (it holds the migrations table)
-- after checking that, if it exists, it belongs to the installing role.

CREATE SCHEMA df;
CREATE SCHEMA _duroxide;
REVOKE ALL ON SCHEMA df FROM PUBLIC;
REVOKE ALL ON SCHEMA durable FROM PUBLIC;

-- Settings the SQL surface needs (written by `durable-cluster init/start`).
CREATE TABLE durable.settings (
    name text PRIMARY KEY,
    value text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- P partitions, fixed at init. A worker owns a partition while it holds the
-- session advisory lock (PARTITION_NS, partition); every claim bumps epoch and
-- stores the hash of a fresh secret. Checkpoint writes carry (epoch, secret)
-- and are rejected when stale (durable.fence_v1).
CREATE TABLE durable.partitions (
    partition integer PRIMARY KEY,
    epoch bigint NOT NULL DEFAULT 0,
    worker_id uuid,
    secret_hash bytea,
    claimed_at timestamptz
);

-- Live workers, for fair share and for `durable-cluster status`. Liveness
-- itself is the session advisory lock (MEMBER_NS, member_key) held by the
-- worker's lock connection; heartbeat_at is for people and for pruning.
CREATE TABLE durable.workers (
    id uuid PRIMARY KEY,
    member_key integer NOT NULL,
    cluster_id uuid NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    slot integer NOT NULL,
    cpu integer,
    state text NOT NULL DEFAULT 'running',
    partitions integer[] NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    heartbeat_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- One row per started, non-terminal instance: the graph, identity and
-- variables frozen at df.start (so later edits to df rows never change what
-- runs or as whom), and when the instance next needs a worker.
CREATE TABLE durable.runs (
    instance_id varchar(8) PRIMARY KEY,
    partition integer NOT NULL,
    submitted_by oid NOT NULL,
    database text,
    label text,
    root_node varchar(8) NOT NULL,
    graph jsonb NOT NULL,
    vars jsonb NOT NULL DEFAULT '{}',
    -- NULL: nothing to do until a signal or a cancel arrives.
    wake_at timestamptz DEFAULT pg_catalog.now(),
    -- consecutive worker deaths while this instance had a step in flight
    crashes integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX runs_partition_wake ON durable.runs (partition, wake_at);

-- The journal: one row per recorded fact of an instance's execution, keyed by
-- a deterministic step key (node id qualified by loop iterations and attempt).
-- kind: step (a leaf's result), timer (a durable due time), race (a decided
-- winner), gate (a loop iteration's start), signal (a consumed signal).
-- The primary key is what makes a step's checkpoint happen at most once.
CREATE TABLE durable.journal (
    instance_id varchar(8) NOT NULL,
    step_key text NOT NULL,
    kind text NOT NULL,
    ok boolean NOT NULL DEFAULT true,
    value jsonb,
    guarantee text,
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (instance_id, step_key)
);

-- The signal mailbox: a signal sent before its wait is reached is kept and
-- consumed exactly once (consumed_by = the consuming wait's step key).
CREATE TABLE durable.signals (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id varchar(8) NOT NULL,
    name text NOT NULL,
    data jsonb,
    sent_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    consumed_by text
);
CREATE INDEX signals_pending ON durable.signals (instance_id, name, id) WHERE consumed_by IS NULL;

-- pg_durable's readiness probe: schema_version >= 1 once a worker has claimed
-- partitions. PUBLIC may read it (clients poll it), as in pg_durable.
CREATE TABLE _duroxide._worker_ready (
    sentinel boolean PRIMARY KEY DEFAULT true CHECK (sentinel),
    schema_version integer NOT NULL,
    initialized_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
GRANT USAGE ON SCHEMA _duroxide TO PUBLIC;
GRANT SELECT ON _duroxide._worker_ready TO PUBLIC;

-- Fencing. Called at the top of every checkpoint transaction, by workers on
-- their own connections and by df._checkpoint_v1 on submitters' connections.
-- The shared transaction-level lock conflicts with the exclusive one a claim
-- takes while bumping the epoch, so a checkpoint either commits before the new
-- owner loads the partition or sees the new epoch and is rejected.
CREATE FUNCTION durable.fence_v1(p_partition integer, p_epoch bigint, p_secret bytea)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(1145241602, p_partition);
    PERFORM 1 FROM durable.partitions
     WHERE partition = p_partition
       AND epoch = p_epoch
       AND secret_hash = pg_catalog.sha256(p_secret);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'durable-cluster: stale claim on partition % (epoch %)', p_partition, p_epoch
            USING ERRCODE = 'DC001';
    END IF;
END;
$$;

-- True when the row version with this xmin was written by the current
-- transaction (top level or a subtransaction). A visible row whose xmin is
-- still in progress can only be our own. Used as proof of an RLS-checked write
-- by the SECURITY DEFINER entry points (a definer function cannot see the
-- caller's current_user).
CREATE FUNCTION durable.written_by_current_xact_v1(p_xmin xid)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_top bigint := pg_catalog.pg_current_xact_id()::text::bigint;
    v_delta bigint;
BEGIN
    -- Distance from the top-level xid modulo 2^32; our subtransactions come
    -- after it, anything "behind" it is older and committed.
    v_delta := (p_xmin::text::bigint - (v_top & 4294967295)) & 4294967295;
    IF v_delta >= 2147483648 THEN
        RETURN false;
    END IF;
    BEGIN
        RETURN pg_catalog.pg_xact_status((v_top + v_delta)::text::xid8) = 'in progress';
    EXCEPTION WHEN OTHERS THEN
        -- "transaction ID is in the future": not ours.
        RETURN false;
    END;
END;
$$;

-- The batched form of fence_v1 for a worker's group commit: takes the shared
-- fence lock of every partition in the batch and returns the ones whose claim
-- is stale (their writes are dropped from the batch; the worker lets them go).
CREATE FUNCTION durable.fence_check_v1(p_partitions integer[], p_epochs bigint[], p_secrets bytea[])
RETURNS integer[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_partition integer;
    v_stale integer[];
BEGIN
    FOREACH v_partition IN ARRAY p_partitions LOOP
        PERFORM pg_catalog.pg_advisory_xact_lock_shared(1145241602, v_partition);
    END LOOP;
    SELECT coalesce(pg_catalog.array_agg(u.p), '{}') INTO v_stale
      FROM unnest(p_partitions, p_epochs, p_secrets) AS u(p, e, s)
     WHERE NOT EXISTS (SELECT 1 FROM durable.partitions d
                        WHERE d.partition = u.p AND d.epoch = u.e
                          AND d.secret_hash = pg_catalog.sha256(u.s));
    RETURN v_stale;
END;
$$;
