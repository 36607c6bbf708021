-- durable-cluster 0006: df.start(..., transaction_mode => 'new') (spec §2.2).
--
-- The start is persisted by a separate loopback session, logged in as the
-- calling role, so it survives a rollback of the caller's transaction. The
-- loopback uses dblink (contrib), installed into the durable schema when the
-- server has it; without it, 'new' mode fails with a clear message.
-- Admission control: max_new_transaction_starts slots, each a session
-- advisory lock (class 0x50474446, "PGDF", as pg_durable), polled every
-- 100 ms for up to new_transaction_start_timeout seconds.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'dblink') THEN
        BEGIN
            CREATE EXTENSION dblink SCHEMA durable;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'durable-cluster: the dblink extension is not available (%): df.start(..., transaction_mode => ''new'') is disabled', SQLERRM;
        END;
    END IF;
END;
$$;

-- A libpq connection-string value: single-quoted, with \ and ' escaped.
CREATE FUNCTION durable.quote_conninfo(p_value text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT '''' || pg_catalog.replace(pg_catalog.replace(p_value, E'\\', E'\\\\'), '''', E'\\''') || '''' $fn$;

-- The privileged half: opens the loopback session as p_role. Callable by any
-- df user, so it checks that the session's login role could become p_role
-- anyway (it is p_role or a member of it): nobody starts work as a role they
-- cannot SET ROLE to.
CREATE FUNCTION df._start_new_v1(p_fut text, p_label text, p_database text, p_role text)
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
BEGIN
    IF NOT (p_role = session_user OR pg_catalog.pg_has_role(session_user, p_role, 'MEMBER')) THEN
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

CREATE OR REPLACE FUNCTION df._start_new(fut text, label text, database text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.current_setting('df.in_workflow', true) = 'true' THEN
        RAISE EXCEPTION 'df.start() with transaction_mode => ''new'' cannot be called inside a workflow - start the instance from the workflow''s transaction instead (the default transaction_mode => ''caller'')';
    END IF;
    PERFORM df._check_submitter();
    RETURN df._start_new_v1(fut, label, database, current_user);
END;
$$;
