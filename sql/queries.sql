-- Every runtime query of durable-cluster, by name (loaded by cluster/queries.py).
-- Only partitions.py, checkpoint.py and store.py use them.
-- Placeholders are psycopg's %(name)s.

-- name: lock_member
-- Take a membership key: the session lock is held for the worker's lifetime.
SELECT pg_catalog.pg_try_advisory_lock(1145241603, %(member_key)s) AS locked

-- name: live_members
-- Live workers of this database, across hosts: the membership locks held now.
SELECT count(*) AS live
  FROM pg_catalog.pg_locks l
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = 1145241603
   AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())

-- name: held_partitions
-- Partitions some worker holds right now.
SELECT l.objid::integer AS partition
  FROM pg_catalog.pg_locks l
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = 1145241601
   AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())

-- name: try_lock_partitions
-- The ones of these partitions whose session lock this connection got.
SELECT p AS partition
  FROM pg_catalog.unnest(%(partitions)s::integer[]) AS p
 WHERE pg_catalog.pg_try_advisory_lock(1145241601, p)

-- name: unlock_partitions
SELECT pg_catalog.pg_advisory_unlock(1145241601, p) AS unlocked
  FROM pg_catalog.unnest(%(partitions)s::integer[]) AS p

-- name: fence_exclusive
-- Inside the claim transaction: wait for in-flight checkpoints under the old
-- epochs. The caller passes the partitions sorted, so two claimers never wait
-- for each other in opposite orders.
SELECT pg_catalog.pg_advisory_xact_lock(1145241602, p)
  FROM pg_catalog.unnest(%(partitions)s::integer[]) AS p

-- name: bump_epoch
UPDATE durable.partitions p
   SET epoch = p.epoch + 1, worker_id = %(worker_id)s, secret_hash = pg_catalog.sha256(c.secret),
       claimed_at = pg_catalog.now()
  FROM ROWS FROM (pg_catalog.unnest(%(partitions)s::integer[]), pg_catalog.unnest(%(secrets)s::bytea[]))
       AS c(partition, secret)
 WHERE p.partition = c.partition
RETURNING p.partition, p.epoch

-- name: notify_rebalance
SELECT pg_catalog.pg_notify('durable_wake', %(payload)s)

-- name: wake_recovered
-- Inside the claim transaction: instances the previous owner held in memory,
-- and any with an unconsumed signal, are due now. Those still held in memory
-- ('infinity') were there when their worker died: count the crash (a worker
-- that stops gracefully parks them first), so a step that keeps killing its
-- worker is found out (--poison-threshold).
UPDATE durable.runs r
   SET wake_at = pg_catalog.now(),
       crashes = r.crashes + CASE WHEN r.wake_at = 'infinity' THEN 1 ELSE 0 END
 WHERE r.partition = ANY(%(partitions)s::integer[])
   AND (r.wake_at = 'infinity'
        OR EXISTS (SELECT 1 FROM durable.signals s WHERE s.instance_id = r.instance_id AND s.consumed_by IS NULL))

-- name: register_worker
-- Also after a reconnect: the same worker, maybe under a new membership key.
INSERT INTO durable.workers (id, member_key, cluster_id, host, pid, slot, cpu)
VALUES (%(id)s, %(member_key)s, %(cluster_id)s, %(host)s, %(pid)s, %(slot)s, %(cpu)s)
ON CONFLICT (id) DO UPDATE SET member_key = excluded.member_key, heartbeat_at = pg_catalog.now()

-- name: prune_member
-- Rows left by dead workers that held the membership key we just took.
DELETE FROM durable.workers WHERE member_key = %(member_key)s AND id <> %(id)s

-- name: heartbeat_worker
UPDATE durable.workers
   SET heartbeat_at = pg_catalog.now(), partitions = %(partitions)s, state = %(state)s
 WHERE id = %(id)s

-- name: remove_worker
DELETE FROM durable.workers WHERE id = %(id)s

-- name: heartbeat_epoch
INSERT INTO df._worker_epoch (epoch_id) VALUES (%(cluster_id)s)
ON CONFLICT (epoch_id) DO UPDATE SET last_seen_at = pg_catalog.now()

-- name: mark_ready
INSERT INTO _duroxide._worker_ready (sentinel, schema_version) VALUES (true, 1)
ON CONFLICT (sentinel) DO NOTHING

-- name: fetch_due
-- Instances of these partitions that need a worker now (by the worker's clock).
SELECT r.instance_id
  FROM durable.runs r
 WHERE r.partition = ANY(%(partitions)s) AND r.wake_at <= %(now)s
 ORDER BY r.wake_at
 LIMIT %(limit)s

-- name: next_wake
SELECT pg_catalog.date_part('epoch', min(r.wake_at))::float8 AS next
  FROM durable.runs r
 WHERE r.partition = ANY(%(partitions)s) AND r.wake_at > %(now)s AND r.wake_at <> 'infinity'

-- name: stuck_runs
-- Safety net: waiting instances with an unconsumed signal or a cancel they were not woken for.
UPDATE durable.runs r
   SET wake_at = pg_catalog.now()
 WHERE r.partition = ANY(%(partitions)s)
   AND (r.wake_at IS NULL OR r.wake_at > pg_catalog.now()) AND r.wake_at <> 'infinity'
   AND (EXISTS (SELECT 1 FROM durable.signals s WHERE s.instance_id = r.instance_id AND s.consumed_by IS NULL)
        OR EXISTS (SELECT 1 FROM df.instances i WHERE i.id = r.instance_id
                    AND i.status IN ('completed', 'failed', 'cancelled')))

-- name: async_commit
-- For transactions whose writes may be lost in a database crash without harm.
SET LOCAL synchronous_commit = off

-- name: load_runs
-- Take these instances into the worker's memory ('infinity': due for nobody
-- else) and read what running them needs. Run after fence_check in the same
-- transaction, with the partitions found current.
UPDATE durable.runs r
   SET wake_at = 'infinity'
 WHERE r.instance_id = ANY(%(ids)s) AND r.partition = ANY(%(partitions)s)
RETURNING r.instance_id, r.partition, r.submitted_by::bigint AS role_oid,
          (SELECT a.rolname FROM pg_catalog.pg_roles a WHERE a.oid = r.submitted_by) AS rolname,
          (SELECT a.rolsuper FROM pg_catalog.pg_roles a WHERE a.oid = r.submitted_by) AS rolsuper,
          (SELECT a.rolcanlogin FROM pg_catalog.pg_roles a WHERE a.oid = r.submitted_by) AS rolcanlogin,
          r.database, r.label, r.root_node, r.graph, r.vars, r.crashes,
          (SELECT i.status FROM df.instances i WHERE i.id = r.instance_id) AS status

-- name: load_journal
SELECT j.instance_id, j.step_key, j.kind, j.ok, j.value, j.guarantee
  FROM durable.journal j
 WHERE j.instance_id = ANY(%(ids)s)

-- name: load_signals
SELECT s.id, s.instance_id, s.name, s.data
  FROM durable.signals s
 WHERE s.instance_id = ANY(%(ids)s) AND s.consumed_by IS NULL
 ORDER BY s.id

-- name: load_stamps
SELECT n.instance_id, n.id, n.status, n.status_details ->> 'execution_id' AS scope,
       (n.status_details ->> 'attempt')::int AS attempt
  FROM df.nodes n
 WHERE n.instance_id = ANY(%(ids)s) AND n.status <> 'pending'

-- name: instance_status
SELECT i.id, i.status FROM df.instances i WHERE i.id = ANY(%(ids)s)

-- name: fence_check
SELECT durable.fence_check_v1(%(partitions)s, %(epochs)s, %(secrets)s) AS stale

-- name: fence_all
-- The fence of a whole batch: raises DC001 if any claim is stale.
SELECT durable.fence_all_v1(%(partitions)s, %(epochs)s, %(secrets)s)

-- name: write_records
-- One statement for a flush's journal records, fed one JSON array: insert them
-- (a key recorded before keeps its stored value), and for the rows really
-- inserted, mark the signals they consume and drop the finished loop scopes
-- they replace. Returns the inserted keys.
WITH input AS (
    SELECT * FROM pg_catalog.jsonb_to_recordset(%(rows)s::jsonb)
        AS u(iid text, key text, kind text, ok boolean, value jsonb, guarantee text, signal bigint,
             drops text[])
), inserted AS (
    INSERT INTO durable.journal (instance_id, step_key, kind, ok, value, guarantee)
    SELECT i.iid, i.key, i.kind, i.ok, i.value, i.guarantee FROM input i
    ON CONFLICT DO NOTHING
    RETURNING instance_id, step_key
), consumed AS (
    UPDATE durable.signals s
       SET consumed_by = i.key
      FROM input i JOIN inserted n ON n.instance_id = i.iid AND n.step_key = i.key
     WHERE i.signal IS NOT NULL AND s.id = i.signal AND s.consumed_by IS NULL
), dropped AS (
    DELETE FROM durable.journal j
     USING input i JOIN inserted n ON n.instance_id = i.iid AND n.step_key = i.key
     CROSS JOIN LATERAL unnest(i.drops) AS d(prefix)
     WHERE i.drops IS NOT NULL AND j.instance_id = i.iid AND pg_catalog.starts_with(j.step_key, d.prefix)
)
SELECT instance_id, step_key FROM inserted

-- name: get_records
SELECT j.instance_id, j.step_key, j.kind, j.ok, j.value, j.guarantee
  FROM durable.journal j
  JOIN pg_catalog.jsonb_to_recordset(%(rows)s::jsonb) AS u(iid text, key text)
    ON j.instance_id = u.iid AND j.step_key = u.key

-- name: stamp_nodes
UPDATE df.nodes n
   SET status = u.status, result = CASE WHEN u.status = 'running' THEN NULL ELSE u.result END,
       status_details = pg_catalog.jsonb_build_object('execution_id', u.scope) || coalesce(u.details, '{}'),
       updated_at = pg_catalog.now()
  FROM pg_catalog.jsonb_to_recordset(%(rows)s::jsonb)
       AS u(iid text, nid text, status text, result jsonb, scope text, details jsonb)
 WHERE n.instance_id = u.iid AND n.id = u.nid

-- name: made_progress
-- These instances wrote a checkpoint: they are not the ones killing workers.
UPDATE durable.runs SET crashes = 0
 WHERE crashes > 0 AND instance_id IN (SELECT pg_catalog.jsonb_array_elements_text(%(ids)s::jsonb))

-- name: mark_running
UPDATE df.instances SET status = 'running', updated_at = pg_catalog.now()
 WHERE id IN (SELECT pg_catalog.jsonb_array_elements_text(%(ids)s::jsonb)) AND status = 'pending'

-- name: set_wake
-- Park instances until their next timer (NULL: until a signal). A signal or a
-- cancel that arrived since the worker looked wins: the instance is due now.
UPDATE durable.runs r
   SET wake_at = CASE
         WHEN EXISTS (SELECT 1 FROM durable.signals s
                       WHERE s.instance_id = r.instance_id AND s.consumed_by IS NULL AND s.id > u.seen
                         AND u.wake IS DISTINCT FROM 'infinity')
           OR (u.wake IS DISTINCT FROM 'infinity'
               AND EXISTS (SELECT 1 FROM df.instances i WHERE i.id = r.instance_id AND i.status = 'cancelled'))
         THEN pg_catalog.now()
         ELSE u.wake END,
       crashes = 0
  FROM pg_catalog.jsonb_to_recordset(%(rows)s::jsonb) AS u(iid text, wake timestamptz, seen bigint)
 WHERE r.instance_id = u.iid

-- name: finish_instances
-- Terminal: the status (unless the instance already is terminal, e.g. cancelled)
-- and away with the runtime rows.
WITH input AS (
    SELECT * FROM pg_catalog.jsonb_to_recordset(%(rows)s::jsonb) AS u(iid text, status text)
), finished AS (
    UPDATE df.instances i
       SET status = u.status, updated_at = pg_catalog.now(),
           completed_at = CASE WHEN u.status = 'completed' THEN pg_catalog.now() END
      FROM input u
     WHERE i.id = u.iid AND u.status IS NOT NULL AND i.status NOT IN ('completed', 'failed', 'cancelled')
), gone_runs AS (
    DELETE FROM durable.runs r USING input u WHERE r.instance_id = u.iid
), gone_journal AS (
    DELETE FROM durable.journal j USING input u WHERE j.instance_id = u.iid
)
DELETE FROM durable.signals s USING input u WHERE s.instance_id = u.iid

-- name: try_reconcile_lock
-- One reconciler per database at a time (transaction-level lock).
SELECT pg_catalog.pg_try_advisory_xact_lock(1145241605, 0) AS locked

-- name: purge_old_terminal
-- Retention: terminal instances older than the window (by completed_at, else
-- created_at), and any beyond the newest 10,000 terminal ones. Nodes go with
-- their instance (ON DELETE CASCADE).
WITH terminal AS (
    SELECT i.id, coalesce(i.completed_at, i.created_at) AS at,
           row_number() OVER (ORDER BY coalesce(i.completed_at, i.created_at) DESC, i.id) AS newest
      FROM df.instances i
     WHERE i.status IN ('completed', 'failed', 'cancelled')
), doomed AS (
    SELECT t.id FROM terminal t
     WHERE t.at < pg_catalog.now() - pg_catalog.make_interval(days => %(days)s) OR t.newest > 10000
     LIMIT %(batch)s
)
DELETE FROM df.instances i USING doomed d WHERE i.id = d.id
RETURNING i.id

-- name: purge_orphans
-- Runtime rows whose instance is gone (deleted by hand) or already terminal.
WITH orphans AS (
    SELECT r.instance_id FROM durable.runs r
     WHERE NOT EXISTS (SELECT 1 FROM df.instances i WHERE i.id = r.instance_id)
     LIMIT %(batch)s
), gone_journal AS (
    DELETE FROM durable.journal j USING orphans o WHERE j.instance_id = o.instance_id
), gone_signals AS (
    DELETE FROM durable.signals s USING orphans o WHERE s.instance_id = o.instance_id
)
DELETE FROM durable.runs r USING orphans o WHERE r.instance_id = o.instance_id
RETURNING r.instance_id

-- name: purge_old_epochs
-- df._worker_epoch gets a row per `durable-cluster start`; a run not seen for
-- a day is over (live runs refresh theirs every 2 s).
DELETE FROM df._worker_epoch WHERE last_seen_at < pg_catalog.now() - interval '1 day'

-- name: purge_stray_records
-- Journal rows and signals of instances no longer running (a late write after the end).
WITH stray_journal AS (
    DELETE FROM durable.journal j
     WHERE j.ctid = ANY(ARRAY(SELECT j2.ctid FROM durable.journal j2
                               WHERE NOT EXISTS (SELECT 1 FROM durable.runs r WHERE r.instance_id = j2.instance_id)
                               LIMIT %(batch)s))
    RETURNING 1
)
DELETE FROM durable.signals s
 WHERE NOT EXISTS (SELECT 1 FROM durable.runs r WHERE r.instance_id = s.instance_id)
   AND s.sent_at < pg_catalog.now() - interval '1 minute'
RETURNING (SELECT count(*) FROM stray_journal)
