-- durable-cluster 0008: the same guarantees, fewer round trips and per-row calls.

-- The fence for a whole batch in one call that raises (DC001) when any claim
-- is stale, so a worker can send its fence and its writes in one pipeline:
-- the usual case costs one round trip, a stale claim aborts the transaction
-- (and the worker asks durable.fence_check_v1 which partitions to let go).
CREATE FUNCTION durable.fence_all_v1(p_partitions integer[], p_epochs bigint[], p_secrets bytea[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stale integer[] := durable.fence_check_v1(p_partitions, p_epochs, p_secrets);
BEGIN
    IF pg_catalog.cardinality(v_stale) > 0 THEN
        RAISE EXCEPTION 'durable-cluster: stale claim on partitions %', v_stale USING ERRCODE = 'DC001';
    END IF;
END;
$$;
REVOKE ALL ON FUNCTION durable.fence_all_v1(integer[], bigint[], bytea[]) FROM PUBLIC;

-- Identity of inserted nodes, checked once per statement instead of once per
-- row (df.start inserts every node of a graph in one statement).
CREATE FUNCTION durable.nodes_after_insert_v1()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_nodes n
                WHERE n.submitted_by::oid IS DISTINCT FROM
                      (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user)) THEN
        RAISE EXCEPTION 'df.nodes.submitted_by must be the inserting role (%)', current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION durable.nodes_after_insert_v1() FROM PUBLIC;
DROP TRIGGER nodes_before_insert ON df.nodes;
DROP FUNCTION durable.nodes_before_insert_v1();
CREATE TRIGGER nodes_after_insert AFTER INSERT ON df.nodes
    REFERENCING NEW TABLE AS new_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION durable.nodes_after_insert_v1();

-- Node stamps and run rows are updated several times each: leave room on
-- each page for HOT updates (no index maintenance, less bloat).
ALTER TABLE df.nodes SET (fillfactor = 70);
ALTER TABLE durable.runs SET (fillfactor = 70);

-- Resetting the crash counter touches only the few instances that have one.
CREATE INDEX runs_crashed ON durable.runs (instance_id) WHERE crashes > 0;

-- The checkpoint of a SQL step, as in 0007, in fewer statements and without a
-- subtransaction: the session's role is read by OID from the backend's own
-- status (session_user raises once its role is dropped).
CREATE OR REPLACE FUNCTION df._checkpoint_v1(p_instance text, p_partition integer, p_epoch bigint, p_secret bytea,
                                             p_step_key text, p_value jsonb, p_guarantee text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_state integer;
    v_name text;
    v_status text;
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(1145241602, p_partition);
    SELECT CASE
             WHEN NOT EXISTS (SELECT 1 FROM durable.partitions d
                               WHERE d.partition = p_partition AND d.epoch = p_epoch
                                 AND d.secret_hash = pg_catalog.sha256(p_secret)) THEN 1
             WHEN r.submitted_by IS NULL OR a.oid IS NULL OR a.oid <> r.submitted_by THEN 3
             WHEN NOT a.rolcanlogin THEN 4
             ELSE 0
           END,
           a.rolname
      INTO v_state, v_name
      FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS s
      LEFT JOIN pg_catalog.pg_roles a ON a.oid = s.usesysid
      LEFT JOIN durable.runs r ON r.instance_id = p_instance AND r.partition = p_partition;
    IF v_state = 1 THEN
        RAISE EXCEPTION 'durable-cluster: stale claim on partition % (epoch %)', p_partition, p_epoch
            USING ERRCODE = 'DC001';
    ELSIF v_state = 3 OR v_state IS NULL THEN
        RAISE EXCEPTION 'durable-cluster: checkpoint refused for instance %', p_instance
            USING ERRCODE = 'DC003';
    ELSIF v_state = 4 THEN
        RAISE EXCEPTION 'durable-cluster: role "%" may no longer run steps of instance %: it no longer has the LOGIN privilege',
            v_name, p_instance
            USING ERRCODE = 'DC004';
    END IF;
    SELECT i.status INTO v_status FROM df.instances i WHERE i.id = p_instance FOR SHARE;
    IF v_status IS NULL OR v_status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'instance % is %', p_instance, coalesce(v_status, 'gone') USING ERRCODE = 'DC002';
    END IF;
    INSERT INTO durable.journal (instance_id, step_key, kind, ok, value, guarantee)
    VALUES (p_instance, p_step_key, 'step', true, p_value, p_guarantee);
END;
$$;

-- The DSL constructors and operator functions are pure (pg_durable declares
-- its operator functions IMMUTABLE): a graph written with literals is then
-- built once when the statement is planned, not once per row, e.g. in
-- SELECT df.start('a' ~> 'b') FROM generate_series(1, 1000).
ALTER FUNCTION df.sql(text) IMMUTABLE;
ALTER FUNCTION df.seq(text, text) IMMUTABLE;
ALTER FUNCTION df.as(text, text) IMMUTABLE;
ALTER FUNCTION df.as_op(text, text) IMMUTABLE;
ALTER FUNCTION df.sleep(bigint) IMMUTABLE;
ALTER FUNCTION df.wait_for_schedule(text) IMMUTABLE;
ALTER FUNCTION df.loop(text, text) IMMUTABLE;
ALTER FUNCTION df.loop_prefix_op(text) IMMUTABLE;
ALTER FUNCTION df.break(text) IMMUTABLE;
ALTER FUNCTION df.if(text, text, text) IMMUTABLE;
ALTER FUNCTION df.if_rows(text, text, text) IMMUTABLE;
ALTER FUNCTION df.if_then_op(text, text) IMMUTABLE;
ALTER FUNCTION df.if_else_op(text, text) IMMUTABLE;
ALTER FUNCTION df.join(text, text) IMMUTABLE;
ALTER FUNCTION df.join3(text, text, text) IMMUTABLE;
ALTER FUNCTION df.race(text, text) IMMUTABLE;
ALTER FUNCTION df.http(text, text, text, jsonb, integer) IMMUTABLE;
ALTER FUNCTION df.http_multipart(text, text, jsonb, jsonb, integer) IMMUTABLE;
ALTER FUNCTION df.wait_for_signal(text, integer) IMMUTABLE;
ALTER FUNCTION df.step(text, jsonb) IMMUTABLE;
ALTER FUNCTION df.retry(text, integer, double precision, double precision) IMMUTABLE;
ALTER FUNCTION df.timeout(text, double precision) IMMUTABLE;

-- df.start as in 0004, writing the instance and its nodes in one statement.
CREATE OR REPLACE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                                    transaction_mode text DEFAULT 'caller')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_graph jsonb;
    v_id text;
    v_user regrole;
    v_tries integer := 0;
BEGIN
    IF transaction_mode IS NULL OR transaction_mode NOT IN ('caller', 'new') THEN
        RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''',
            transaction_mode;
    END IF;
    IF transaction_mode = 'new' THEN
        RETURN df._start_new(fut, start.label, start.database);
    END IF;
    IF start.database IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.datname = start.database) THEN
        RAISE EXCEPTION 'database "%" does not exist', start.database USING ERRCODE = 'invalid_catalog_name';
    END IF;
    PERFORM df._check_submitter();
    v_graph := df._parse_strict(fut);
    v_user := pg_catalog.quote_ident(current_user)::regrole;
    LOOP
        v_id := pg_catalog.left(pg_catalog.gen_random_uuid()::text, 8);
        WITH f AS MATERIALIZED (
            SELECT * FROM df._flatten(v_graph)
        ), inst AS (
            INSERT INTO df.instances (id, label, root_node, submitted_by, database)
            SELECT v_id, start.label, f.id, v_user, start.database FROM f WHERE f.ord = 0
            ON CONFLICT (id) DO NOTHING
            RETURNING 1
        )
        INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node,
                              submitted_by, database)
        SELECT f.id, v_id, f.node_type, f.query, f.result_name, f.left_node, f.right_node, v_user,
               start.database
          FROM f
         WHERE EXISTS (SELECT 1 FROM inst);
        EXIT WHEN FOUND;
        v_tries := v_tries + 1;
        IF v_tries >= 10 THEN
            RAISE EXCEPTION 'Failed to create instance: no free instance id after 10 attempts';
        END IF;
    END LOOP;
    PERFORM df._submit_v1(v_id);
    RETURN v_id;
END;
$$;
