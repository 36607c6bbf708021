-- durable-cluster 0009: a new instance's wake-up names it.
--
-- df._submit_v1 as in 0007, except for its notification: 'partition:id'
-- instead of 'partition', so the worker that owns the partition loads the
-- instance straight away (notifications from one transaction are read as one
-- burst and loaded together) instead of scanning the partition for due work.

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
    PERFORM pg_catalog.pg_notify('durable_wake', v_partition::text || ':' || p_id);
END;
$$;
