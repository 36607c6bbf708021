-- durable-cluster 0002: the df tables, as pg_durable 0.2.6 defines them
-- (spec §1.10), with row-level security and the triggers that keep users
-- from writing what only the runtime may write.

CREATE TABLE df.instances (
    id varchar(8) PRIMARY KEY,
    label text,
    root_node varchar(8) NOT NULL,
    status text DEFAULT 'pending',
    submitted_by regrole NOT NULL,
    database text,
    created_at timestamptz DEFAULT pg_catalog.now(),
    updated_at timestamptz DEFAULT pg_catalog.now(),
    completed_at timestamptz,
    CONSTRAINT instances_id_submitted_by_key UNIQUE (id, submitted_by)
);
ALTER TABLE df.instances
    ADD CONSTRAINT instances_id_format CHECK (id OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') NOT VALID,
    ADD CONSTRAINT instances_root_node_format CHECK (root_node OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') NOT VALID,
    ADD CONSTRAINT instances_status_check
        CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'running', 'completed', 'failed', 'cancelled'])) NOT VALID;
CREATE INDEX instances_status_created ON df.instances (status, created_at DESC, id);
CREATE INDEX instances_created ON df.instances (created_at DESC, id);
CREATE INDEX instances_label_created ON df.instances (label, created_at DESC, id) WHERE label IS NOT NULL;

CREATE TABLE df.nodes (
    id varchar(8) NOT NULL,
    instance_id varchar(8) NOT NULL,
    node_type text NOT NULL,
    query text,
    result_name text,
    left_node varchar(8),
    right_node varchar(8),
    status text DEFAULT 'pending',
    result jsonb,
    error text,
    submitted_by regrole,
    database text,
    created_at timestamptz DEFAULT pg_catalog.now(),
    updated_at timestamptz DEFAULT pg_catalog.now(),
    status_details jsonb,
    PRIMARY KEY (instance_id, id)
);
CREATE INDEX nodes_instance ON df.nodes (instance_id);
ALTER TABLE df.nodes
    ADD CONSTRAINT nodes_id_format CHECK (id OPERATOR(pg_catalog.~) '^[0-9a-f]{8}$') NOT VALID,
    ADD CONSTRAINT nodes_submitted_by_present CHECK (submitted_by IS NOT NULL) NOT VALID,
    ADD CONSTRAINT nodes_node_type_check CHECK (node_type OPERATOR(pg_catalog.=) ANY (ARRAY[
        'SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE',
        'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'STEP', 'RETRY', 'TIMEOUT'])) NOT VALID,
    ADD CONSTRAINT nodes_status_check
        CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'running', 'completed', 'failed'])) NOT VALID,
    ADD CONSTRAINT nodes_result_name_format
        CHECK (result_name IS NULL OR result_name OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_]*$') NOT VALID,
    ADD CONSTRAINT nodes_result_only_when_done
        CHECK (result IS NULL OR status OPERATOR(pg_catalog.=) ANY (ARRAY['completed', 'failed'])) NOT VALID,
    ADD CONSTRAINT nodes_structure CHECK (
        CASE
            WHEN node_type OPERATOR(pg_catalog.=) ANY (ARRAY['SQL', 'SLEEP', 'WAIT_SCHEDULE', 'BREAK', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'STEP'])
                THEN left_node IS NULL AND right_node IS NULL AND query IS NOT NULL
            WHEN node_type OPERATOR(pg_catalog.=) 'THEN'
                THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NULL
            WHEN node_type OPERATOR(pg_catalog.=) 'IF'
                THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NOT NULL
            WHEN node_type OPERATOR(pg_catalog.=) ANY (ARRAY['LOOP', 'RETRY', 'TIMEOUT'])
                THEN left_node IS NOT NULL AND right_node IS NULL
            WHEN node_type OPERATOR(pg_catalog.=) 'JOIN'
                THEN left_node IS NOT NULL AND right_node IS NOT NULL
            WHEN node_type OPERATOR(pg_catalog.=) 'RACE'
                THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NULL
            ELSE false
        END) NOT VALID,
    ADD CONSTRAINT nodes_left_fk FOREIGN KEY (instance_id, left_node)
        REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT nodes_right_fk FOREIGN KEY (instance_id, right_node)
        REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT nodes_instance_owner_fk FOREIGN KEY (instance_id, submitted_by)
        REFERENCES df.instances (id, submitted_by) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE df.instances
    ADD CONSTRAINT instances_root_fk FOREIGN KEY (id, root_node)
        REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE df.vars (
    name text NOT NULL,
    value text,
    owner regrole NOT NULL DEFAULT pg_catalog.quote_ident(current_user)::regrole,
    PRIMARY KEY (owner, name)
);

-- Worker liveness sentinel (pg_durable's epoch row): last_seen_at is bumped
-- by the cluster about every 5 s. Not granted to users.
CREATE TABLE df._worker_epoch (
    epoch_id uuid PRIMARY KEY,
    started_at timestamptz DEFAULT pg_catalog.now(),
    last_seen_at timestamptz DEFAULT pg_catalog.now()
);

-- Row-level security: ENABLE (not FORCE), one FOR ALL policy per table keyed
-- on the owner, in USING and WITH CHECK. Superusers and the table owner (the
-- runtime) bypass.
ALTER TABLE df.instances ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.vars ENABLE ROW LEVEL SECURITY;
CREATE POLICY instances_owner ON df.instances FOR ALL
    USING (submitted_by OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole)
    WITH CHECK (submitted_by OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole);
CREATE POLICY nodes_owner ON df.nodes FOR ALL
    USING (submitted_by OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole)
    WITH CHECK (submitted_by OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole);
CREATE POLICY vars_owner ON df.vars FOR ALL
    USING (owner OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole)
    WITH CHECK (owner OPERATOR(pg_catalog.=) pg_catalog.quote_ident(current_user)::regrole);

-- Identity is pinned at insert for everyone, BYPASSRLS roles included: a row
-- may only name its inserter as submitted_by (RLS alone would let a BYPASSRLS
-- role forge another role's instance).
CREATE FUNCTION durable.instances_before_insert_v1()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.submitted_by::oid IS DISTINCT FROM
       (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user) THEN
        RAISE EXCEPTION 'df.instances.submitted_by must be the inserting role (%)', current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.status IS DISTINCT FROM 'pending' THEN
        RAISE EXCEPTION 'new instances start as pending' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER instances_before_insert BEFORE INSERT ON df.instances
    FOR EACH ROW EXECUTE FUNCTION durable.instances_before_insert_v1();

-- Users may cancel their own non-terminal instances (df.cancel does it as the
-- caller, through the UPDATE (status, updated_at) grant) and touch
-- updated_at; every other status change belongs to the runtime, and a
-- terminal status is final for everyone.
CREATE FUNCTION durable.instances_before_update_v1()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.status IN ('completed', 'failed', 'cancelled') AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'instance % is % and cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'DC002';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NEW.status IS DISTINCT FROM 'cancelled'
       AND NOT pg_catalog.pg_has_role(current_user,
               (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
        RAISE EXCEPTION 'only the runtime sets an instance''s status (users may set it to cancelled)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER instances_before_update BEFORE UPDATE ON df.instances
    FOR EACH ROW EXECUTE FUNCTION durable.instances_before_update_v1();
-- Trigger functions are called by OID at fire time: users need no privilege
-- on the durable schema for them to run, and get none.
