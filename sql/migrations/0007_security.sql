-- durable-cluster 0007: security review fixes (spec §3; docs/security.md).
--
-- 1. df._checkpoint_v1 identifies the connection's login role by OID and
--    refuses a role that lost LOGIN (DC004) or no longer exists (DC003).
--    Without this, a role stripped of LOGIN mid-run kept running steps on
--    the connections the worker had pooled for it, and a dropped role's step
--    failed with "invalid role OID".
-- 2. df._start_new_v1 (transaction_mode => 'new') required only membership
--    in the target role. From PostgreSQL 16 on, a member granted the role
--    WITH SET FALSE cannot SET ROLE to it, yet could start instances as it.
--    It now needs the SET privilege (PostgreSQL 16+; membership on 15, where
--    every member may SET ROLE).
-- 3. df._submit_v1 makes df.start's admission checks (LOGIN, the superuser
--    gate) itself, on the row's submitter: a role that writes df.instances
--    and df.nodes rows directly and calls df._submit_v1 no longer skips them.
-- 4. Identity columns are pinned for BYPASSRLS roles too (RLS alone does not
--    bind them): df.nodes rows name their inserter, df.vars rows are written
--    and deleted by their owner, and only the submitter (or the runtime)
--    updates an instance row.
--    A BYPASSRLS role granted df usage could otherwise plant variables that
--    another role's next df.start substitutes raw into its SQL, or cancel and
--    signal other roles' instances.
-- 5. Nothing in schema durable is executable by PUBLIC (the schema already
--    had no PUBLIC USAGE; this holds even if someone grants it), including the
--    dblink functions 0006 installs there.

-- 1 ------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION df._checkpoint_v1(p_instance text, p_partition integer, p_epoch bigint, p_secret bytea,
                                             p_step_key text, p_value jsonb, p_guarantee text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_owner oid;
    v_status text;
    v_login oid;
    v_name text;
    v_can_login boolean;
BEGIN
    PERFORM durable.fence_v1(p_partition, p_epoch, p_secret);
    SELECT r.submitted_by INTO v_owner FROM durable.runs r
     WHERE r.instance_id = p_instance AND r.partition = p_partition;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'durable-cluster: checkpoint refused for instance %', p_instance
            USING ERRCODE = 'DC003';
    END IF;
    -- The role this connection logged in as. session_user raises
    -- "invalid role OID" once that role has been dropped.
    BEGIN
        SELECT a.oid, a.rolname, a.rolcanlogin INTO v_login, v_name, v_can_login
          FROM pg_catalog.pg_roles a WHERE a.rolname OPERATOR(pg_catalog.=) session_user;
    EXCEPTION WHEN undefined_object THEN
        v_login := NULL;
    END;
    IF v_login IS NULL THEN
        RAISE EXCEPTION 'durable-cluster: checkpoint refused for instance %: the role this step logged in as no longer exists',
            p_instance
            USING ERRCODE = 'DC003';
    END IF;
    IF v_owner IS DISTINCT FROM v_login THEN
        RAISE EXCEPTION 'durable-cluster: checkpoint refused for instance %', p_instance
            USING ERRCODE = 'DC003';
    END IF;
    IF NOT v_can_login THEN
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

-- 2 ------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION df._start_new_v1(p_fut text, p_label text, p_database text, p_role text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema text;
    v_slots integer := coalesce(df._setting('max_new_transaction_starts')::integer, 2);
    v_timeout integer := coalesce(df._setting('new_transaction_start_timeout')::integer, 5);
    v_deadline timestamptz;
    v_slot integer;
    v_socket text;
    v_conninfo text;
    v_name text := 'durable_new_start_' || pg_catalog.pg_backend_pid();
    v_id text;
    -- PostgreSQL 16 separated SET from membership (GRANT ... WITH SET FALSE).
    v_privilege text := CASE WHEN pg_catalog.current_setting('server_version_num')::integer >= 160000
                             THEN 'SET' ELSE 'MEMBER' END;
BEGIN
    IF p_role IS NULL OR NOT (p_role = session_user OR pg_catalog.pg_has_role(session_user, p_role, v_privilege)) THEN
        RAISE EXCEPTION 'transaction_mode => ''new'': session user "%" cannot start instances as "%"', session_user, p_role
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT n.nspname INTO v_schema
      FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'dblink';
    IF v_schema IS NULL THEN
        RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' needs the dblink extension, which this server does not have'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    v_deadline := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => v_timeout);
    <<admission>>
    LOOP
        FOR v_slot IN 1 .. v_slots LOOP
            EXIT admission WHEN pg_catalog.pg_try_advisory_lock(1346847814, v_slot);
        END LOOP;
        IF pg_catalog.clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION 'pg_durable: transaction_mode => ''new'' launch limit reached (max_new_transaction_starts=%). Timed out after %s waiting for a launch slot before opening the loopback session.',
                v_slots, v_timeout;
        END IF;
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;
    BEGIN
        v_socket := pg_catalog.split_part(pg_catalog.current_setting('unix_socket_directories'), ',', 1);
        v_conninfo := pg_catalog.format(
            'host=%s port=%s dbname=%s user=%s application_name=%s options=%s',
            durable.quote_conninfo(coalesce(nullif(pg_catalog.btrim(v_socket), ''), 'localhost')),
            pg_catalog.current_setting('port'),
            durable.quote_conninfo(pg_catalog.current_database()),
            durable.quote_conninfo(p_role),
            'durable-cluster-new-start',
            durable.quote_conninfo('-c df.in_workflow=false -c lock_timeout=30s -c statement_timeout=30s'));
        EXECUTE pg_catalog.format('SELECT %I.dblink_connect_u(%L, %L)', v_schema, v_name, v_conninfo);
        EXECUTE pg_catalog.format('SELECT t.id FROM %I.dblink(%L, %L) AS t(id text)', v_schema, v_name,
            pg_catalog.format('SELECT df.start(%L, %L, %L)', p_fut, p_label, p_database))
           INTO v_id;
        EXECUTE pg_catalog.format('SELECT %I.dblink_disconnect(%L)', v_schema, v_name);
        PERFORM pg_catalog.pg_advisory_unlock(1346847814, v_slot);
    EXCEPTION WHEN OTHERS THEN
        BEGIN
            EXECUTE pg_catalog.format('SELECT %I.dblink_disconnect(%L)', v_schema, v_name);
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
        PERFORM pg_catalog.pg_advisory_unlock(1346847814, v_slot);
        RAISE;
    END;
    RETURN v_id;
END;
$$;

-- 3 ------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION df._submit_v1(p_id text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    v_partition integer;
    v_login boolean;
    v_super boolean;
    v_name text;
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
    -- df.start's admission checks (df._check_submitter), on the row's submitter
    -- (the inserting role: durable.instances_before_insert_v1 pins it).
    SELECT a.rolname, a.rolcanlogin, a.rolsuper INTO v_name, v_login, v_super
      FROM pg_catalog.pg_roles a WHERE a.oid = r.submitted_by::oid;
    IF NOT coalesce(v_login, false) THEN
        RAISE EXCEPTION 'current_user "%" does not have LOGIN privilege. Each step runs on a connection that logs in as the submitting role; grant LOGIN to "%" or start the workflow as a login role.',
            v_name, v_name
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF v_super AND coalesce(df._setting('enable_superuser_instances'), 'off') <> 'on' THEN
        RAISE EXCEPTION 'pg_durable: superuser instances are disabled. current_user "%" is a superuser, but pg_durable.enable_superuser_instances is off. Set pg_durable.enable_superuser_instances = on to allow this.',
            v_name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Start the cluster with --enable-superuser-instances, or start the workflow as a non-superuser role.';
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

-- 4 ------------------------------------------------------------------------
-- Trigger functions run as the role that fires them, which has no access to
-- schema durable: each is self-contained and reads only pg_catalog. "Acts
-- for all" is the runtime (the tables' owner) and superusers, as in 0002.

-- A node names its inserter, for everyone (as instances do): with the
-- composite foreign key, a node belongs to an instance of the same role.
CREATE FUNCTION durable.nodes_before_insert_v1()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.submitted_by::oid IS DISTINCT FROM
       (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user) THEN
        RAISE EXCEPTION 'df.nodes.submitted_by must be the inserting role (%)', current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER nodes_before_insert BEFORE INSERT ON df.nodes
    FOR EACH ROW EXECUTE FUNCTION durable.nodes_before_insert_v1();

-- Variables are written and deleted by their owner (a BYPASSRLS role
-- included), or by the runtime and superusers.
CREATE FUNCTION durable.vars_before_write_v1()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_me oid := (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user);
    v_foreign boolean := false;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        v_foreign := NEW.owner::oid IS DISTINCT FROM v_me;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        v_foreign := v_foreign OR OLD.owner::oid IS DISTINCT FROM v_me;
    END IF;
    IF v_foreign AND NOT pg_catalog.pg_has_role(current_user,
           (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
        RAISE EXCEPTION 'df.vars.owner must be the writing role (%)', current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER vars_before_write BEFORE INSERT OR UPDATE OR DELETE ON df.vars
    FOR EACH ROW EXECUTE FUNCTION durable.vars_before_write_v1();

-- Only the submitter (or the runtime, or a superuser) updates an instance
-- row; then the rules of 0002 apply.
CREATE OR REPLACE FUNCTION durable.instances_before_update_v1()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_all boolean := pg_catalog.pg_has_role(current_user,
                         (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID), 'USAGE');
BEGIN
    IF NOT v_all AND OLD.submitted_by::oid IS DISTINCT FROM
       (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user) THEN
        RAISE EXCEPTION 'instance % belongs to another role', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status IN ('completed', 'failed', 'cancelled') AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'instance % is % and cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'DC002';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NEW.status IS DISTINCT FROM 'cancelled' AND NOT v_all THEN
        RAISE EXCEPTION 'only the runtime sets an instance''s status (users may set it to cancelled)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

-- 5 ------------------------------------------------------------------------
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA durable FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA durable FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA durable FROM PUBLIC;
