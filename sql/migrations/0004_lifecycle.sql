-- durable-cluster 0004: starting, observing and controlling instances
-- (pg_durable spec §1.6, §1.7, §1.9) and the checkpoint entry point used by
-- SQL steps.
--
-- Every df function runs with the caller's rights, as in pg_durable, so RLS
-- decides what a caller may see and touch. The few SECURITY DEFINER functions
-- below (df._submit_v1, df._cancelled_v1, df._signal_v1, df._setting,
-- df._checkpoint_v1, df.metrics, df.version) are the only ways into the
-- private durable schema. A definer function cannot see its caller's
-- current_user, so those that act on an instance require proof that the
-- caller wrote that instance's row under RLS in the current transaction
-- (durable.written_by_current_xact_v1 on the row's xmin).

CREATE FUNCTION df._partition_of(p_id text, p_partitions integer)
RETURNS integer
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT (('x' || lpad(p_id, 16, '0'))::bit(64)::bigint % p_partitions)::integer $$;

CREATE FUNCTION df._setting(p_name text)
RETURNS text
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT s.value FROM durable.settings s WHERE s.name = p_name $$;

-- The admission checks df.start makes for the effective role (spec §2.2).
CREATE FUNCTION df._check_submitter()
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_login boolean;
    v_super boolean;
BEGIN
    SELECT r.rolcanlogin, r.rolsuper INTO v_login, v_super
      FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
    IF NOT coalesce(v_login, false) THEN
        RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege. Each step runs on a connection that logs in as the submitting role; grant LOGIN to "%" or start the workflow as a login role.',
            current_user, current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF v_super AND coalesce(df._setting('enable_superuser_instances'), 'off') <> 'on' THEN
        RAISE EXCEPTION 'pg_durable: superuser instances are disabled. current_user "%" is a superuser, but pg_durable.enable_superuser_instances is off. Set pg_durable.enable_superuser_instances = on to allow this.',
            current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Start the cluster with --enable-superuser-instances, or start the workflow as a non-superuser role.';
    END IF;
END;
$$;

-- Freeze a freshly inserted instance into the runtime: the graph from
-- df.nodes, the submitter, the caller's variables (a snapshot), and a wake-up.
CREATE FUNCTION df._submit_v1(p_id text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    v_partition integer;
BEGIN
    SELECT i.id, i.label, i.root_node, i.submitted_by, i.database, i.status, i.xmin AS row_xmin
      INTO r FROM df.instances i WHERE i.id = p_id;
    IF NOT FOUND OR NOT durable.written_by_current_xact_v1(r.row_xmin) THEN
        RAISE EXCEPTION 'df._submit_v1: instance % was not created by this transaction', p_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF r.status IS DISTINCT FROM 'pending' OR EXISTS (SELECT 1 FROM durable.runs WHERE instance_id = p_id) THEN
        RAISE EXCEPTION 'instance % was already started', p_id USING ERRCODE = 'DC002';
    END IF;
    v_partition := df._partition_of(p_id, (SELECT s.value::integer FROM durable.settings s WHERE s.name = 'partitions'));
    INSERT INTO durable.runs (instance_id, partition, submitted_by, database, label, root_node, graph, vars)
    SELECT p_id, v_partition, r.submitted_by, r.database, r.label, r.root_node,
           (SELECT pg_catalog.jsonb_object_agg(n.id, pg_catalog.jsonb_build_object(
                       't', n.node_type, 'q', n.query, 'r', n.result_name, 'l', n.left_node, 'rt', n.right_node))
              FROM df.nodes n WHERE n.instance_id = p_id),
           coalesce((SELECT pg_catalog.jsonb_object_agg(v.name, v.value)
                       FROM df.vars v WHERE v.owner = r.submitted_by AND v.value IS NOT NULL), '{}');
    PERFORM pg_catalog.pg_notify('durable_wake', v_partition::text);
END;
$$;

CREATE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
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
    v_ids text[];
    v_types text[];
    v_queries text[];
    v_names text[];
    v_lefts text[];
    v_rights text[];
BEGIN
    IF transaction_mode IS NULL OR transaction_mode NOT IN ('caller', 'new') THEN
        RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''',
            transaction_mode;
    END IF;
    IF transaction_mode = 'new' THEN
        RETURN df._start_new(fut, label, database);
    END IF;
    IF database IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.datname = database) THEN
        RAISE EXCEPTION 'database "%" does not exist', database USING ERRCODE = 'invalid_catalog_name';
    END IF;
    PERFORM df._check_submitter();
    v_graph := df._parse_strict(fut);
    SELECT pg_catalog.array_agg(f.id ORDER BY f.ord), pg_catalog.array_agg(f.node_type ORDER BY f.ord),
           pg_catalog.array_agg(f.query ORDER BY f.ord), pg_catalog.array_agg(f.result_name ORDER BY f.ord),
           pg_catalog.array_agg(f.left_node ORDER BY f.ord), pg_catalog.array_agg(f.right_node ORDER BY f.ord)
      INTO v_ids, v_types, v_queries, v_names, v_lefts, v_rights
      FROM df._flatten(v_graph) f;
    v_user := pg_catalog.quote_ident(current_user)::regrole;
    LOOP
        v_id := df._random_id();
        INSERT INTO df.instances (id, label, root_node, submitted_by, database)
        VALUES (v_id, label, v_ids[1], v_user, database)
        ON CONFLICT (id) DO NOTHING;
        EXIT WHEN FOUND;
        v_tries := v_tries + 1;
        IF v_tries >= 10 THEN
            RAISE EXCEPTION 'Failed to create instance: no free instance id after 10 attempts';
        END IF;
    END LOOP;
    INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node,
                          submitted_by, database)
    SELECT u.id, v_id, u.t, u.q, u.r, u.l, u.rt, v_user, database
      FROM unnest(v_ids, v_types, v_queries, v_names, v_lefts, v_rights)
           AS u(id, t, q, r, l, rt);
    PERFORM df._submit_v1(v_id);
    RETURN v_id;
END;
$$;

-- transaction_mode => 'new' arrives with the complete surface; until then it
-- says so clearly.
CREATE FUNCTION df._start_new(fut text, label text, database text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' is not available yet in this durable-cluster version'
        USING ERRCODE = 'feature_not_supported';
END;
$$;

CREATE FUNCTION df.status(instance_id text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT i.status FROM df.instances i WHERE i.id = status.instance_id $$;

CREATE FUNCTION df.result(instance_id text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.result::text
      FROM df.instances i
      JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node
     WHERE i.id = result.instance_id AND n.status = 'completed'
$$;

-- Marks a non-future helper for the DSL's guard (spec §1.3).
CREATE FUNCTION df._mark_helper(p_name text)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.set_config('df.non_future_helper', p_name || E'\n' || pg_catalog.statement_timestamp()::text, true) $$;

CREATE FUNCTION df._refuse_in_workflow(p_message text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.current_setting('df.in_workflow', true) = 'true' THEN
        RAISE EXCEPTION '%', p_message;
    END IF;
END;
$$;

CREATE FUNCTION df.await_instance(instance_id text, timeout_seconds integer DEFAULT 30)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_status text;
    v_deadline timestamptz;
    v_pause double precision := 0.002;
BEGIN
    PERFORM df._refuse_in_workflow('df.await_instance() cannot be called inside a workflow - it would block a worker thread while waiting. Compose the work into one graph instead.');
    PERFORM df._mark_helper('df.await_instance()');
    IF timeout_seconds IS NULL OR timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive';
    END IF;
    v_deadline := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => timeout_seconds);
    LOOP
        SELECT i.status INTO v_status FROM df.instances i WHERE i.id = instance_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'Instance not found: %', instance_id;
        END IF;
        IF v_status IN ('completed', 'failed', 'cancelled') THEN
            RETURN v_status;
        END IF;
        IF pg_catalog.clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION 'Timeout after %s waiting for instance % (status: %). Check if background worker is running.',
                timeout_seconds, instance_id, v_status;
        END IF;
        -- Poll quickly at first (most instances finish in milliseconds), then every 100 ms.
        PERFORM pg_catalog.pg_sleep(v_pause);
        v_pause := least(v_pause * 2, 0.1);
    END LOOP;
END;
$$;

CREATE FUNCTION df.wait_for_completion(instance_id text, timeout_seconds integer DEFAULT 30)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE WARNING 'df.wait_for_completion() is deprecated; use df.await_instance() instead';
    RETURN df.await_instance(instance_id, timeout_seconds);
END;
$$;

-- Records why an instance was cancelled and wakes its worker. The caller
-- proves ownership by having just set the row to cancelled under RLS.
CREATE FUNCTION df._cancelled_v1(p_id text, p_reason text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_xmin xid;
    v_partition integer;
BEGIN
    SELECT i.xmin INTO v_xmin FROM df.instances i WHERE i.id = p_id AND i.status = 'cancelled';
    IF NOT FOUND OR NOT durable.written_by_current_xact_v1(v_xmin) THEN
        RAISE EXCEPTION 'df._cancelled_v1: instance % was not cancelled by this transaction', p_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT r.partition INTO v_partition FROM durable.runs r WHERE r.instance_id = p_id;
    IF FOUND THEN
        -- Due now, unless a worker holds it in memory ('infinity'): the NOTIFY reaches that one.
        UPDATE durable.runs SET wake_at = pg_catalog.now()
         WHERE instance_id = p_id AND wake_at IS DISTINCT FROM 'infinity';
        INSERT INTO durable.journal (instance_id, step_key, kind, value)
        VALUES (p_id, '!cancel', 'cancel', pg_catalog.jsonb_build_object('reason', p_reason))
        ON CONFLICT DO NOTHING;
        PERFORM pg_catalog.pg_notify('durable_wake', v_partition::text || ':' || p_id);
    END IF;
END;
$$;

CREATE FUNCTION df.cancel(instance_id text, reason text DEFAULT 'Cancelled by user')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE df.instances i SET status = 'cancelled', updated_at = pg_catalog.now()
     WHERE i.id = instance_id AND i.status NOT IN ('completed', 'failed', 'cancelled');
    IF FOUND THEN
        PERFORM df._cancelled_v1(instance_id, reason);
    ELSIF NOT EXISTS (SELECT 1 FROM df.instances i WHERE i.id = instance_id) THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', instance_id;
    END IF;
    RETURN pg_catalog.format('Instance %s cancelled: %s', instance_id, reason);
END;
$$;

-- Puts a signal in the instance's mailbox (kept until a wait consumes it) and
-- wakes its worker. The caller proves ownership by having just touched the
-- instance row under RLS.
CREATE FUNCTION df._signal_v1(p_id text, p_name text, p_data jsonb)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_xmin xid;
    v_partition integer;
BEGIN
    SELECT i.xmin INTO v_xmin FROM df.instances i WHERE i.id = p_id;
    IF NOT FOUND OR NOT durable.written_by_current_xact_v1(v_xmin) THEN
        RAISE EXCEPTION 'df._signal_v1: instance % was not touched by this transaction', p_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT r.partition INTO v_partition FROM durable.runs r WHERE r.instance_id = p_id;
    IF FOUND THEN
        INSERT INTO durable.signals (instance_id, name, data) VALUES (p_id, p_name, p_data);
        UPDATE durable.runs SET wake_at = pg_catalog.now()
         WHERE instance_id = p_id AND wake_at IS DISTINCT FROM 'infinity';
        PERFORM pg_catalog.pg_notify('durable_wake', v_partition::text || ':' || p_id);
    END IF;
END;
$$;

CREATE FUNCTION df.signal(instance_id text, signal_name text, signal_data text DEFAULT '{}')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_data jsonb;
BEGIN
    IF instance_id IS NULL OR instance_id = '' THEN
        RAISE EXCEPTION 'Instance ID cannot be empty';
    END IF;
    IF signal_name IS NULL OR signal_name = '' THEN
        RAISE EXCEPTION 'Signal name cannot be empty';
    END IF;
    UPDATE df.instances i SET updated_at = pg_catalog.now() WHERE i.id = instance_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', instance_id;
    END IF;
    BEGIN
        v_data := signal_data::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        v_data := pg_catalog.to_jsonb(signal_data);
    END;
    PERFORM df._signal_v1(instance_id, signal_name, v_data);
    RETURN 'OK';
END;
$$;

CREATE FUNCTION df.run(instance_id text DEFAULT NULL)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN instance_id IS NULL THEN 'Triggered run for all pending instances'
                ELSE 'Triggered run for instance: ' || instance_id END
$$;

-- Variables (spec §1.7): per owner, set outside workflows only.
CREATE FUNCTION df.setvar(name text, value text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM df._refuse_in_workflow('df.setvar() cannot be called inside a workflow - set variables before starting the workflow');
    PERFORM df._mark_helper('df.setvar()');
    INSERT INTO df.vars AS v (name, value) VALUES (setvar.name, setvar.value)
    ON CONFLICT (owner, name) DO UPDATE SET value = excluded.value;
    RETURN 'OK';
END;
$$;

CREATE FUNCTION df.getvar(name text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT v.value FROM df.vars v
     WHERE v.name = getvar.name AND v.owner = pg_catalog.quote_ident(current_user)::regrole
$$;

CREATE FUNCTION df.unsetvar(name text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM df._refuse_in_workflow('df.unsetvar() cannot be called inside a workflow - set variables before starting the workflow');
    PERFORM df._mark_helper('df.unsetvar()');
    DELETE FROM df.vars v
     WHERE v.name = unsetvar.name AND v.owner = pg_catalog.quote_ident(current_user)::regrole;
    RETURN 'OK';
END;
$$;

CREATE FUNCTION df.clearvars()
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM df._refuse_in_workflow('df.clearvars() cannot be called inside a workflow - set variables before starting the workflow');
    PERFORM df._mark_helper('df.clearvars()');
    DELETE FROM df.vars v WHERE v.owner = pg_catalog.quote_ident(current_user)::regrole;
    RETURN 'OK';
END;
$$;

CREATE FUNCTION df.version()
RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(max(s.value) FILTER (WHERE s.name = 'version'), 'unknown')
           || ' (durable-cluster, schema ' || (SELECT max(m.version) FROM durable.migrations m)::text
           || ', installed ' || pg_catalog.to_char(min(s.updated_at), 'YYYY-MM-DD') || ')'
      FROM durable.settings s
$$;

CREATE FUNCTION df.target_database()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.current_database()::text $$;

CREATE FUNCTION df.duroxide_schema()
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '_duroxide'::text $$;

-- Engine-wide counts (all users): restricted, granted with grant_usage(with_grant).
CREATE FUNCTION df.metrics()
RETURNS TABLE(total_instances bigint, running_instances bigint, completed_instances bigint,
              failed_instances bigint, total_executions bigint, total_events bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*),
           count(*) FILTER (WHERE i.status = 'running'),
           count(*) FILTER (WHERE i.status = 'completed'),
           count(*) FILTER (WHERE i.status = 'failed'),
           count(*) + coalesce((SELECT sum(g.n) FROM (SELECT count(*) AS n FROM durable.journal j
                                 WHERE j.kind = 'gate' GROUP BY j.instance_id) g), 0)::bigint,
           (SELECT count(*) FROM durable.journal)
      FROM df.instances i
$$;
REVOKE EXECUTE ON FUNCTION df.metrics() FROM PUBLIC;

-- The checkpoint of a SQL step, called on the submitter's own connection in
-- the step's transaction, after the step's statement: the statement and its
-- checkpoint commit together or not at all (exactly once). Refused unless the
-- worker's claim is current (fence + a per-claim secret the step's SQL never
-- sees), the connection is authenticated as the instance's submitter, and the
-- instance is not terminal (a cancel committed first rolls the step back).
CREATE FUNCTION df._checkpoint_v1(p_instance text, p_partition integer, p_epoch bigint, p_secret bytea,
                                  p_step_key text, p_value jsonb, p_guarantee text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_owner oid;
    v_status text;
BEGIN
    PERFORM durable.fence_v1(p_partition, p_epoch, p_secret);
    SELECT r.submitted_by INTO v_owner FROM durable.runs r
     WHERE r.instance_id = p_instance AND r.partition = p_partition;
    IF NOT FOUND OR v_owner IS DISTINCT FROM
       (SELECT a.oid FROM pg_catalog.pg_roles a WHERE a.rolname = session_user) THEN
        RAISE EXCEPTION 'durable-cluster: checkpoint refused for instance %', p_instance
            USING ERRCODE = 'DC003';
    END IF;
    SELECT i.status INTO v_status FROM df.instances i WHERE i.id = p_instance FOR SHARE;
    IF v_status IS NULL OR v_status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'instance % is %', p_instance, coalesce(v_status, 'gone') USING ERRCODE = 'DC002';
    END IF;
    INSERT INTO durable.journal (instance_id, step_key, kind, ok, value, guarantee)
    VALUES (p_instance, p_step_key, 'step', true, p_value, p_guarantee);
END;
$$;

-- Privileges (spec §3.2): grant_usage grants exactly pg_durable's bundle.
CREATE FUNCTION df.grant_usage(p_role text, include_http boolean DEFAULT false, with_grant boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role text := CASE WHEN pg_catalog.upper(p_role) = 'PUBLIC' THEN 'PUBLIC' ELSE pg_catalog.quote_ident(p_role) END;
    v_opt text := CASE WHEN with_grant THEN ' WITH GRANT OPTION' ELSE '' END;
BEGIN
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA df TO %s%s', v_role, v_opt);
    IF include_http THEN
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION df.http(text,text,text,jsonb,integer), df.http_multipart(text,text,jsonb,jsonb,integer) TO %s%s', v_role, v_opt);
    END IF;
    IF with_grant THEN
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION df.grant_usage(text,boolean,boolean), df.revoke_usage(text), df.metrics() TO %s%s', v_role, v_opt);
    END IF;
    EXECUTE pg_catalog.format('GRANT SELECT ON df.instances TO %s%s', v_role, v_opt);
    EXECUTE pg_catalog.format('GRANT UPDATE (status, updated_at) ON df.instances TO %s%s', v_role, v_opt);
    EXECUTE pg_catalog.format('GRANT SELECT ON df.nodes TO %s%s', v_role, v_opt);
    EXECUTE pg_catalog.format('GRANT INSERT (id, label, root_node, submitted_by, database) ON df.instances TO %s%s', v_role, v_opt);
    EXECUTE pg_catalog.format('GRANT INSERT (id, instance_id, node_type, query, result_name, left_node, right_node, submitted_by, database) ON df.nodes TO %s%s', v_role, v_opt);
    EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON df.vars TO %s%s', v_role, v_opt);
    RAISE NOTICE 'pg_durable: granted df usage privileges to "%"', p_role;
END;
$$;

CREATE FUNCTION df.revoke_usage(p_role text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role text := CASE WHEN pg_catalog.upper(p_role) = 'PUBLIC' THEN 'PUBLIC' ELSE pg_catalog.quote_ident(p_role) END;
    v_fn text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY['df.http(text,text,text,jsonb,integer)', 'df.http_multipart(text,text,jsonb,jsonb,integer)',
                                'df.grant_usage(text,boolean,boolean)', 'df.revoke_usage(text)', 'df.metrics()'] LOOP
        BEGIN
            EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM %s CASCADE', v_fn, v_role);
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;
        END;
    END LOOP;
    EXECUTE pg_catalog.format('REVOKE SELECT, INSERT, UPDATE, DELETE ON df.vars FROM %s CASCADE', v_role);
    EXECUTE pg_catalog.format('REVOKE INSERT (id, instance_id, node_type, query, result_name, left_node, right_node, submitted_by, database) ON df.nodes FROM %s CASCADE', v_role);
    EXECUTE pg_catalog.format('REVOKE INSERT (id, label, root_node, submitted_by, database) ON df.instances FROM %s CASCADE', v_role);
    EXECUTE pg_catalog.format('REVOKE SELECT ON df.nodes FROM %s CASCADE', v_role);
    EXECUTE pg_catalog.format('REVOKE UPDATE (status, updated_at) ON df.instances FROM %s CASCADE', v_role);
    EXECUTE pg_catalog.format('REVOKE SELECT ON df.instances FROM %s CASCADE', v_role);
    EXECUTE pg_catalog.format('REVOKE USAGE ON SCHEMA df FROM %s CASCADE', v_role);
    RAISE NOTICE 'pg_durable: revoked df usage privileges granted by "%" from "%"', current_user, p_role;
END;
$$;
REVOKE EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION df.revoke_usage(text) FROM PUBLIC;

-- The operators also in pg_catalog, which every search_path includes, so
-- `SELECT df.start('SELECT 1' ~> 'SELECT 2')` works as it does with
-- pg_durable (an extension whose schema is pg_catalog). Only a superuser may
-- create them there; other installers get them in df alone, and users then
-- add df to their search_path or write OPERATOR(df.~>).
DO $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        CREATE OPERATOR pg_catalog.~> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.seq);
        CREATE OPERATOR pg_catalog.|=> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.as_op);
        CREATE OPERATOR pg_catalog.& (LEFTARG = text, RIGHTARG = text, FUNCTION = df.join);
        CREATE OPERATOR pg_catalog.| (LEFTARG = text, RIGHTARG = text, FUNCTION = df.race);
        CREATE OPERATOR pg_catalog.?> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.if_then_op);
        CREATE OPERATOR pg_catalog.!> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.if_else_op);
        CREATE OPERATOR pg_catalog.@> (RIGHTARG = text, FUNCTION = df.loop_prefix_op);
    ELSE
        RAISE WARNING 'durable-cluster: not a superuser, so the df operators (~> |=> & | ?> !> @>) exist only in schema df: add df to search_path or write OPERATOR(df.~>)';
    END IF;
END;
$$;
