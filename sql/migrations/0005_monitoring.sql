-- durable-cluster 0005: monitoring and introspection (pg_durable spec §1.8,
-- §2.19-§2.21): df.instance_nodes (raw and inferred node status),
-- df.list_instances, df.instance_info, df.instance_executions, df.explain.
--
-- Everything here runs with the caller's rights (SECURITY INVOKER): row-level
-- security on df.instances and df.nodes decides what a caller sees, so another
-- role's instance simply does not exist for them. Nothing is granted: these
-- functions keep PostgreSQL's default EXECUTE, gated by USAGE on schema df.
--
-- There is no engine schema. What pg_durable reads from its engine (function
-- name, executions, output) is derived from df.instances and from the stamps
-- the runtime writes into df.nodes.status_details->>'execution_id', whose
-- execution scopes are (cluster/graph.py):
--
--   <instance>::1                  the root scope
--   <scope>::<branch root>::1      a JOIN or RACE branch
--   <scope>::<loop>::i             iteration i (from 1) of a non-root loop
--   <instance>::i                  iteration i of a root loop (the root is the LOOP)
--   <scope>::<retry>::k            attempt k of a retry
--
-- A root loop's iterations are its engine executions (continue-as-new
-- generations); any other instance has one execution.
--
-- Graphs can be 256 deep: every walk is a loop over an explicit stack.

----------------------------------------------------------------------------
-- Small helpers
----------------------------------------------------------------------------

-- Truth of a JSON value by pg_durable's rules (spec §2.8): booleans as they
-- are; numbers when non-zero; strings: empty after trimming is false,
-- true/t/yes true and false/f/no false (any case), a decimal number when it is
-- non-zero as a double, any other text true; arrays and objects when non-empty;
-- null false. The same rules as cluster/values.py.
CREATE FUNCTION df._truthy(p_value jsonb)
RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_word text;
    v_num numeric;
BEGIN
    CASE coalesce(pg_catalog.jsonb_typeof(p_value), 'null')
    WHEN 'null' THEN
        RETURN false;
    WHEN 'boolean' THEN
        RETURN p_value::boolean;
    WHEN 'number' THEN
        RETURN p_value::numeric <> 0;
    WHEN 'array' THEN
        RETURN pg_catalog.jsonb_array_length(p_value) > 0;
    WHEN 'object' THEN
        RETURN p_value <> '{}'::jsonb;
    ELSE
        NULL;
    END CASE;
    v_word := pg_catalog.lower(pg_catalog.btrim(p_value #>> '{}', E' \t\n\r\f\v'));
    IF v_word = '' THEN
        RETURN false;
    ELSIF v_word = ANY (ARRAY['true', 't', 'yes']) THEN
        RETURN true;
    ELSIF v_word = ANY (ARRAY['false', 'f', 'no']) THEN
        RETURN false;
    ELSIF v_word !~ '^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?$' THEN
        RETURN true;
    ELSIF pg_catalog.substring(v_word, '^[+-]?([0-9.]*)') !~ '[1-9]' THEN
        RETURN false;
    END IF;
    BEGIN
        v_num := v_word::numeric;
    EXCEPTION WHEN OTHERS THEN
        -- Beyond numeric's range: a huge exponent is an infinite double
        -- (non-zero), a tiny one underflows to zero.
        RETURN pg_catalog.strpos(v_word, 'e-') = 0;
    END;
    -- Below half the smallest subnormal double, the value reads as 0.0.
    RETURN pg_catalog.abs(v_num) > 2.4703282292062327e-324;
END;
$$;

-- Truth of an IF or while condition's result: a row set is false when empty,
-- else the truth of the first column of the first row; any other value is
-- tested whole. NULL when it cannot be told: jsonb keeps no column order, so
-- a first row with several columns that disagree is undecidable.
CREATE FUNCTION df._condition_truth(p_result jsonb)
RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_first jsonb;
    v_all boolean;
    v_any boolean;
BEGIN
    IF pg_catalog.jsonb_typeof(p_result) = 'object'
       AND pg_catalog.jsonb_typeof(p_result -> 'rows') = 'array' THEN
        IF pg_catalog.jsonb_array_length(p_result -> 'rows') = 0 THEN
            RETURN false;
        END IF;
        v_first := p_result -> 'rows' -> 0;
        IF pg_catalog.jsonb_typeof(v_first) = 'object' THEN
            IF v_first = '{}'::jsonb THEN
                RETURN false;
            END IF;
            SELECT pg_catalog.bool_and(df._truthy(e.value)), pg_catalog.bool_or(df._truthy(e.value))
              INTO v_all, v_any
              FROM pg_catalog.jsonb_each(v_first) AS e;
            RETURN CASE WHEN v_all = v_any THEN v_all END;
        END IF;
        RETURN df._truthy(v_first);
    END IF;
    RETURN df._truthy(p_result);
END;
$$;

-- For a node expected to run in scope p_expected but stamped in p_stamp:
-- when the stamp belongs to an older generation of an enclosing loop (or
-- attempt of an enclosing retry), the id of that loop (retry); the root's id
-- for an older iteration of a root loop. NULL when the stamp is not older
-- (or does not have the expected shape).
CREATE FUNCTION df._superseded_by(p_expected text, p_stamp text, p_root text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_a text[] := pg_catalog.string_to_array(p_expected, '::');
    v_b text[] := pg_catalog.string_to_array(p_stamp, '::');
    v_k integer;
BEGIN
    IF pg_catalog.cardinality(v_a) <> pg_catalog.cardinality(v_b) THEN
        RETURN NULL;
    END IF;
    FOR v_k IN 1..pg_catalog.cardinality(v_a) LOOP
        CONTINUE WHEN v_a[v_k] = v_b[v_k];
        IF v_k % 2 = 0
           AND v_a[v_k] ~ '^[0-9]{1,18}$' AND v_b[v_k] ~ '^[0-9]{1,18}$'
           AND v_b[v_k]::bigint < v_a[v_k]::bigint THEN
            RETURN CASE WHEN v_k = 2 THEN p_root ELSE v_a[v_k - 1] END;
        END IF;
        RETURN NULL;
    END LOOP;
    RETURN NULL;
END;
$$;

-- The engine's execution count of an instance: the highest generation in
-- its stamps for a root loop (at least 1), else 1.
CREATE FUNCTION df._execution_count(p_instance text, p_root_type text)
RETURNS bigint
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_root_type IS DISTINCT FROM 'LOOP' THEN 1::bigint
        ELSE (SELECT GREATEST(1, coalesce(pg_catalog.max(CASE WHEN s.g ~ '^[0-9]{1,18}$' THEN s.g::bigint END), 1))
                FROM (SELECT pg_catalog.split_part(n.status_details ->> 'execution_id', '::', 2) AS g
                        FROM df.nodes n
                       WHERE n.instance_id = p_instance) AS s)
    END
$$;

-- The engine's output of an instance: the root's result when it completed,
-- the error message (a JSON string, unwrapped) when it failed, else NULL.
CREATE FUNCTION df._output(p_instance_status text, p_root_status text, p_root_result jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_instance_status = 'completed' AND p_root_status = 'completed' THEN p_root_result::text
        WHEN p_instance_status = 'failed' AND p_root_status = 'failed' THEN
            CASE WHEN pg_catalog.jsonb_typeof(p_root_result) = 'string' THEN p_root_result #>> '{}'
                 ELSE p_root_result::text END
    END
$$;

-- The engine's status word of an instance's latest execution.
CREATE FUNCTION df._engine_status(p_status text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE p_status
        WHEN 'completed' THEN 'Completed'
        WHEN 'failed' THEN 'Failed'
        WHEN 'cancelled' THEN 'Failed'
        ELSE 'Running'
    END
$$;

----------------------------------------------------------------------------
-- Inferred node status (spec §2.19)
----------------------------------------------------------------------------

-- The inferred status of every node of an instance the caller can see,
-- walking from the root with the scope each node runs in now:
--
-- * a node stamped in an older generation of an enclosing loop (attempt of
--   an enclosing retry) is fresh for the current one: pending, from that
--   loop (retry; the root for a root loop);
-- * a node that is not terminal (pending, running, or pending as above) and
--   can no longer run is skipped, from the nearest terminal ancestor that
--   rules it out: any completed or failed composite (a RACE loser, nodes
--   after a break, a timed-out TIMEOUT's body...); an IF whose taken arm is
--   known (an arm already stamped in this scope, else the truth of the
--   condition's stamped result) for its other arm; a THEN whose left side
--   failed for its right side. Under a failed or cancelled instance every
--   non-terminal node is skipped (from the nearest terminal ancestor, else
--   the root; the root itself has no ancestor);
-- * otherwise the physical status.
--
-- Rows come in df._flatten's pre-order (ord); nodes the walk cannot reach
-- (a damaged graph) follow with their physical status.
CREATE FUNCTION df._infer(p_instance text)
RETURNS TABLE (ord integer, node_id text, inferred text, ancestor text)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_root text;
    v_instance_status text;
    n_id text[];
    n_type text[];
    n_query text[];
    n_left text[];
    n_right text[];
    n_status text[];
    n_result jsonb[];
    n_scope text[];
    v_n integer;
    v_idx jsonb;
    v_gen jsonb;
    v_owners text[];
    v_root_i integer;
    o_ord integer[];
    o_status text[];
    o_anc text[];
    v_k integer := 0;
    -- the stack: node index, the scope it runs in now, the dead ancestor
    s_i integer[];
    s_scope text[];
    s_dead text[];
    v_top integer;
    v_i integer;
    v_s text;
    v_d text;
    v_e text;
    v_a text;
    v_st text;
    v_an text;
    v_cd text;
    v_cfg jsonb;
    v_kids integer[];
    v_kscope text[];
    v_kdead text[];
    v_l integer;
    v_r integer;
    v_c integer;
    v_lcur boolean;
    v_rcur boolean;
    v_truth boolean;
    v_taken integer;
    v_body text;
    v_x jsonb;
    v_j integer;
BEGIN
    SELECT i.root_node, i.status INTO v_root, v_instance_status
      FROM df.instances i WHERE i.id = p_instance;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT pg_catalog.array_agg(n.id::text ORDER BY n.id), pg_catalog.array_agg(n.node_type ORDER BY n.id),
           pg_catalog.array_agg(n.query ORDER BY n.id), pg_catalog.array_agg(n.left_node::text ORDER BY n.id),
           pg_catalog.array_agg(n.right_node::text ORDER BY n.id), pg_catalog.array_agg(n.status ORDER BY n.id),
           pg_catalog.array_agg(n.result ORDER BY n.id),
           pg_catalog.array_agg(n.status_details ->> 'execution_id' ORDER BY n.id),
           pg_catalog.array_agg(n.id::text ORDER BY n.id) FILTER (WHERE n.node_type IN ('LOOP', 'RETRY'))
      INTO n_id, n_type, n_query, n_left, n_right, n_status, n_result, n_scope, v_owners
      FROM df.nodes n
     WHERE n.instance_id = p_instance;
    v_n := coalesce(pg_catalog.cardinality(n_id), 0);
    IF v_n = 0 THEN
        RETURN;
    END IF;
    SELECT pg_catalog.jsonb_object_agg(u.id, u.k) INTO v_idx
      FROM pg_catalog.unnest(n_id) WITH ORDINALITY AS u(id, k);

    -- The current generation of every loop and retry, by where its
    -- iterations (attempts) live: '<scope>::<node>' (the instance id for a
    -- root loop) -> the highest number stamped right after it.
    SELECT pg_catalog.jsonb_object_agg(g.k, g.num) INTO v_gen
      FROM (SELECT pg_catalog.left(s.scope, e.pos_end::integer) AS k, pg_catalog.max(e.nxt::bigint) AS num
              FROM (SELECT DISTINCT u.sc AS scope
                      FROM pg_catalog.unnest(n_scope) AS u(sc) WHERE u.sc IS NOT NULL) AS s
             CROSS JOIN LATERAL (
                   SELECT c.o, c.comp,
                          pg_catalog.sum(pg_catalog.char_length(c.comp) + 2) OVER (ORDER BY c.o) - 2 AS pos_end,
                          pg_catalog.lead(c.comp) OVER (ORDER BY c.o) AS nxt
                     FROM pg_catalog.unnest(pg_catalog.string_to_array(s.scope, '::')) WITH ORDINALITY AS c(comp, o)) AS e
             WHERE (e.o = 1 OR (e.o % 2 = 1 AND e.comp = ANY (coalesce(v_owners, '{}'))))
               AND e.nxt ~ '^[0-9]{1,18}$'
             GROUP BY 1) AS g;
    v_gen := coalesce(v_gen, '{}');

    o_ord := pg_catalog.array_fill(NULL::integer, ARRAY[v_n]);
    o_status := pg_catalog.array_fill(NULL::text, ARRAY[v_n]);
    o_anc := pg_catalog.array_fill(NULL::text, ARRAY[v_n]);
    v_root_i := (v_idx ->> v_root)::integer;
    IF v_root_i IS NOT NULL THEN
        s_i := ARRAY[v_root_i];
        s_scope := ARRAY[p_instance || '::1'];
        s_dead := ARRAY[NULL::text];
        v_top := 1;
    ELSE
        v_top := 0;
    END IF;

    WHILE v_top > 0 LOOP
        v_i := s_i[v_top];
        v_s := s_scope[v_top];
        v_d := s_dead[v_top];
        v_top := v_top - 1;
        CONTINUE WHEN o_ord[v_i] IS NOT NULL;
        v_k := v_k + 1;
        o_ord[v_i] := v_k;

        -- Superseded generation: fresh (pending) for the current one. The
        -- root has nothing enclosing it.
        v_e := coalesce(n_status[v_i], 'pending');
        v_a := NULL;
        IF v_i <> v_root_i AND v_e <> 'pending' AND n_scope[v_i] IS NOT NULL AND n_scope[v_i] <> v_s THEN
            v_a := df._superseded_by(v_s, n_scope[v_i], v_root);
            IF v_a IS NOT NULL THEN
                v_e := 'pending';
            END IF;
        END IF;
        -- Unreachable: skipped.
        IF v_e IN ('pending', 'running') AND v_d IS NOT NULL THEN
            v_st := 'skipped';
            v_an := v_d;
        ELSIF v_e IN ('pending', 'running') AND v_instance_status IN ('failed', 'cancelled') THEN
            v_st := 'skipped';
            v_an := CASE WHEN v_i = v_root_i THEN NULL ELSE v_root END;
        ELSE
            v_st := v_e;
            v_an := v_a;
        END IF;
        o_status[v_i] := v_st;
        o_anc[v_i] := v_an;
        -- What rules out the non-terminal children: this node when it is
        -- terminal, whatever ruled out this node when it is skipped.
        v_cd := CASE WHEN v_st = 'skipped' THEN v_an
                     WHEN v_st IN ('completed', 'failed') THEN n_id[v_i] END;

        -- Children (index, scope, dead ancestor) in df._flatten's order:
        -- left, right, condition, extras.
        v_l := (v_idx ->> n_left[v_i])::integer;
        v_r := (v_idx ->> n_right[v_i])::integer;
        v_cfg := CASE WHEN n_type[v_i] IN ('IF', 'LOOP', 'JOIN') THEN df._try_object(n_query[v_i]) END;
        v_c := (v_idx ->> (v_cfg ->> 'condition_node'))::integer;
        v_kids := '{}';
        v_kscope := '{}';
        v_kdead := '{}';
        CASE n_type[v_i]
        WHEN 'THEN' THEN
            v_kids := ARRAY[v_l, v_r];
            v_kscope := ARRAY[v_s, v_s];
            v_kdead := ARRAY[v_cd, coalesce(v_cd,
                CASE WHEN n_status[v_l] = 'failed' AND (n_scope[v_l] IS NULL OR n_scope[v_l] = v_s)
                     THEN n_id[v_i] END)];
        WHEN 'IF' THEN
            -- The taken arm: one already stamped in this scope, else the
            -- truth of the condition's result stamped in this scope.
            v_lcur := coalesce(n_status[v_l], 'pending') <> 'pending' AND (n_scope[v_l] IS NULL OR n_scope[v_l] = v_s);
            v_rcur := coalesce(n_status[v_r], 'pending') <> 'pending' AND (n_scope[v_r] IS NULL OR n_scope[v_r] = v_s);
            v_taken := NULL;
            IF v_lcur AND NOT v_rcur THEN
                v_taken := 1;
            ELSIF v_rcur AND NOT v_lcur THEN
                v_taken := 2;
            ELSIF NOT v_lcur AND NOT v_rcur AND v_c IS NOT NULL AND n_status[v_c] = 'completed'
                  AND (n_scope[v_c] IS NULL OR n_scope[v_c] = v_s) THEN
                v_truth := df._condition_truth(n_result[v_c]);
                v_taken := CASE v_truth WHEN true THEN 1 WHEN false THEN 2 END;
            END IF;
            v_kids := ARRAY[v_l, v_r, v_c];
            v_kscope := ARRAY[v_s, v_s, v_s];
            v_kdead := ARRAY[coalesce(v_cd, CASE WHEN v_taken = 2 THEN n_id[v_i] END),
                             coalesce(v_cd, CASE WHEN v_taken = 1 THEN n_id[v_i] END),
                             v_cd];
        WHEN 'JOIN', 'RACE' THEN
            v_kids := ARRAY[v_l, v_r];
            IF pg_catalog.jsonb_typeof(v_cfg -> 'extra_nodes') = 'array' THEN
                FOR v_x IN SELECT x.value FROM pg_catalog.jsonb_array_elements(v_cfg -> 'extra_nodes') AS x LOOP
                    v_kids := v_kids || (v_idx ->> (v_x #>> '{}'))::integer;
                END LOOP;
            END IF;
            FOR v_j IN 1..pg_catalog.cardinality(v_kids) LOOP
                v_kscope := v_kscope || (v_s || '::' || coalesce(n_id[v_kids[v_j]], '') || '::1');
                v_kdead := v_kdead || v_cd;
            END LOOP;
        WHEN 'LOOP' THEN
            IF v_i = v_root_i THEN
                v_body := p_instance || '::' || coalesce(v_gen ->> p_instance, '1');
            ELSE
                v_body := v_s || '::' || n_id[v_i] || '::' || coalesce(v_gen ->> (v_s || '::' || n_id[v_i]), '1');
            END IF;
            v_kids := ARRAY[v_l, v_c];
            v_kscope := ARRAY[v_body, v_body];
            v_kdead := ARRAY[v_cd, v_cd];
        WHEN 'RETRY' THEN
            v_kids := ARRAY[v_l];
            v_kscope := ARRAY[v_s || '::' || n_id[v_i] || '::' || coalesce(v_gen ->> (v_s || '::' || n_id[v_i]), '1')];
            v_kdead := ARRAY[v_cd];
        WHEN 'TIMEOUT' THEN
            v_kids := ARRAY[v_l];
            v_kscope := ARRAY[v_s];
            v_kdead := ARRAY[v_cd];
        ELSE
            NULL;
        END CASE;
        FOR v_j IN REVERSE coalesce(pg_catalog.cardinality(v_kids), 0)..1 LOOP
            CONTINUE WHEN v_kids[v_j] IS NULL;
            v_top := v_top + 1;
            s_i[v_top] := v_kids[v_j];
            s_scope[v_top] := v_kscope[v_j];
            s_dead[v_top] := v_kdead[v_j];
        END LOOP;
    END LOOP;

    RETURN QUERY
        SELECT u.o, u.id, coalesce(u.st, u.phys, 'pending'), u.an
          FROM ROWS FROM (pg_catalog.unnest(o_ord), pg_catalog.unnest(n_id), pg_catalog.unnest(o_status),
                         pg_catalog.unnest(n_status), pg_catalog.unnest(o_anc)) AS u(o, id, st, phys, an)
         ORDER BY u.o NULLS LAST, u.id;
END;
$$;

----------------------------------------------------------------------------
-- df.instance_nodes
----------------------------------------------------------------------------

CREATE FUNCTION df.instance_nodes(instance_id_param text)
RETURNS TABLE (node_id text, node_type text, query text, result_name text, left_node text, right_node text,
               status text, result text, status_details text, inferred_status text,
               inferred_status_from_ancestor_id text, updated_at timestamptz)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.id::text, n.node_type, n.query, n.result_name, n.left_node::text, n.right_node::text,
           n.status, n.result::text, n.status_details::text, f.inferred, f.ancestor, n.updated_at
      FROM df._infer($1) AS f
      JOIN df.nodes n ON n.instance_id = $1 AND n.id = f.node_id
     ORDER BY f.ord NULLS LAST, n.id
$$;

-- Legacy overload: execution_id is always 1, the second argument is ignored.
CREATE FUNCTION df.instance_nodes(instance_id_param text, _last_n_executions integer)
RETURNS TABLE (execution_id bigint, node_id text, node_type text, query text, result_name text,
               left_node text, right_node text, status text, result text, updated_at timestamptz)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 1::bigint, n.id::text, n.node_type, n.query, n.result_name, n.left_node::text, n.right_node::text,
           n.status, n.result::text, n.updated_at
      FROM df._infer($1) AS f
      JOIN df.nodes n ON n.instance_id = $1 AND n.id = f.node_id
     ORDER BY f.ord NULLS LAST, n.id
$$;

----------------------------------------------------------------------------
-- df.list_instances, df.instance_info, df.instance_executions
----------------------------------------------------------------------------

-- limit_count must be in 1..pg_durable.list_instances_max_limit (a cluster
-- setting, default 1000).
CREATE FUNCTION df._check_list_limit(p_limit integer)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_setting text := pg_catalog.btrim(df._setting('list_instances_max_limit'));
    v_max bigint := 1000;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'limit_count must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_setting ~ '^[0-9]{1,9}$' AND v_setting::bigint >= 1 THEN
        v_max := v_setting::bigint;
    END IF;
    IF p_limit > v_max THEN
        RAISE EXCEPTION 'df.list_instances: limit_count (%) exceeds pg_durable.list_instances_max_limit (%); request fewer rows and page through the rest with after_cursor',
            p_limit, v_max
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

-- The keyset cursor of a row: hex of 'v1|<created_at>|<id>'.
CREATE FUNCTION df._list_cursor(p_created_at timestamptz, p_id text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.encode(pg_catalog.convert_to(
        'v1|' || pg_catalog.to_char(p_created_at, 'YYYY-MM-DD"T"HH24:MI:SS.USOF') || '|' || p_id, 'UTF8'), 'hex')
$$;

CREATE FUNCTION df.list_instances(status_filter text DEFAULT NULL, limit_count integer DEFAULT 100)
RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint, output text)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM df._check_list_limit(limit_count);
    RETURN QUERY
        SELECT p.id::text, p.label, 'pg_durable::orchestration::execute-function-graph'::text, p.status,
               df._execution_count(p.id, r.node_type), df._output(p.status, r.status, r.result)
          FROM (SELECT i.id, i.label, i.status, i.root_node, i.created_at
                  FROM df.instances i
                 WHERE status_filter IS NULL OR i.status = status_filter
                 ORDER BY i.created_at DESC, i.id
                 LIMIT limit_count) AS p
          LEFT JOIN df.nodes r ON r.instance_id = p.id AND r.id = p.root_node
         ORDER BY p.created_at DESC, p.id;
END;
$$;

CREATE FUNCTION df.list_instances(status_filter text, limit_count integer, label_filter text,
                                  after_cursor text DEFAULT NULL)
RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint, output text,
               created_at timestamptz, completed_at timestamptz, next_cursor text)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_plain text;
    v_parts text[];
    v_after_ts timestamptz;
    v_after_id text;
    v_ok boolean := true;
BEGIN
    PERFORM df._check_list_limit(limit_count);
    IF after_cursor IS NOT NULL THEN
        IF pg_catalog.char_length(after_cursor) > 512 OR after_cursor !~ '^([0-9a-fA-F]{2})+$' THEN
            v_ok := false;
        ELSE
            BEGIN
                v_plain := pg_catalog.convert_from(pg_catalog.decode(after_cursor, 'hex'), 'UTF8');
                v_parts := pg_catalog.string_to_array(v_plain, '|');
                IF pg_catalog.cardinality(v_parts) = 3 AND v_parts[1] = 'v1'
                   AND v_parts[2] ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}[+-][0-9]{2}(:[0-9]{2}){0,2}$'
                   AND v_parts[3] ~ '^[0-9a-f]{8}$' THEN
                    v_after_ts := v_parts[2]::timestamptz;
                    v_after_id := v_parts[3];
                ELSE
                    v_ok := false;
                END IF;
            EXCEPTION WHEN OTHERS THEN
                v_ok := false;
            END;
        END IF;
        IF NOT v_ok THEN
            RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    RETURN QUERY
        WITH page AS (
            SELECT i.id, i.label, i.status, i.root_node, i.created_at, i.completed_at,
                   pg_catalog.row_number() OVER (ORDER BY i.created_at DESC, i.id) AS rn
              FROM df.instances i
             WHERE i.created_at IS NOT NULL
               AND (status_filter IS NULL OR i.status = status_filter)
               AND (label_filter IS NULL OR i.label = label_filter)
               AND (v_after_ts IS NULL
                    OR i.created_at < v_after_ts
                    OR (i.created_at = v_after_ts AND i.id > v_after_id))
             ORDER BY i.created_at DESC, i.id
             LIMIT limit_count::bigint + 1),
        more AS (
            SELECT df._list_cursor(p.created_at, p.id::text) AS cursor
              FROM page p
             WHERE p.rn = limit_count
               AND EXISTS (SELECT 1 FROM page x WHERE x.rn > limit_count))
        SELECT p.id::text, p.label, 'pg_durable::orchestration::execute-function-graph'::text, p.status,
               df._execution_count(p.id, r.node_type), df._output(p.status, r.status, r.result),
               p.created_at, p.completed_at, (SELECT m.cursor FROM more m)
          FROM page p
          LEFT JOIN df.nodes r ON r.instance_id = p.id AND r.id = p.root_node
         WHERE p.rn <= limit_count
         ORDER BY p.rn;
END;
$$;

CREATE FUNCTION df.instance_info(instance_id text)
RETURNS TABLE (instance_id text, label text, function_name text, function_version text,
               current_execution_id bigint, status text, output text)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text, '1.0.0'::text,
           df._execution_count(i.id, r.node_type), i.status, df._output(i.status, r.status, r.result)
      FROM df.instances i
      LEFT JOIN df.nodes r ON r.instance_id = i.id AND r.id = i.root_node
     WHERE i.id = $1
$$;

-- The engine executions of an instance, newest first: one per root-loop
-- iteration (older ones ContinuedAsNew), else one.
CREATE FUNCTION df.instance_executions(instance_id text, limit_count integer DEFAULT 5)
RETURNS TABLE (execution_id bigint, status text, event_count bigint, duration_ms bigint, output text)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_id text := $1;
    v_status text;
    v_root_type text;
    v_root_status text;
    v_root_result jsonb;
    v_n bigint;
    v_limit integer;
BEGIN
    IF limit_count IS NULL OR limit_count < 1 THEN
        RAISE EXCEPTION 'limit_count must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_limit := LEAST(limit_count, 10000);
    SELECT i.status, r.node_type, r.status, r.result INTO v_status, v_root_type, v_root_status, v_root_result
      FROM df.instances i
      LEFT JOIN df.nodes r ON r.instance_id = i.id AND r.id = i.root_node
     WHERE i.id = v_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found: %', v_id USING ERRCODE = 'no_data_found';
    END IF;
    v_n := df._execution_count(v_id, v_root_type);
    RETURN QUERY
        WITH stamps AS (
            SELECT CASE WHEN v_root_type IS DISTINCT FROM 'LOOP' THEN 1::bigint
                        WHEN s.gen ~ '^[0-9]{1,18}$' THEN s.gen::bigint END AS g,
                   s.updated_at
              FROM (SELECT pg_catalog.split_part(n.status_details ->> 'execution_id', '::', 2) AS gen, n.updated_at
                      FROM df.nodes n
                     WHERE n.instance_id = v_id AND (n.status_details ->> 'execution_id') IS NOT NULL) AS s),
        per AS (
            SELECT s.g, pg_catalog.count(*) AS events,
                   (EXTRACT(EPOCH FROM pg_catalog.max(s.updated_at) - pg_catalog.min(s.updated_at)) * 1000)::bigint AS ms
              FROM stamps s
             WHERE s.g IS NOT NULL
             GROUP BY s.g)
        SELECT e.g,
               CASE WHEN e.g = v_n THEN df._engine_status(v_status) ELSE 'ContinuedAsNew' END,
               coalesce(p.events, 0),
               p.ms,
               CASE WHEN e.g = v_n THEN df._output(v_status, v_root_status, v_root_result) END
          FROM pg_catalog.generate_series(v_n, GREATEST(1, v_n - v_limit + 1), -1) AS e(g)
          LEFT JOIN per p ON p.g = e.g
         ORDER BY e.g DESC;
END;
$$;

----------------------------------------------------------------------------
-- df.explain (spec §2.20)
----------------------------------------------------------------------------

-- p_text cut to p_max characters: longer text keeps p_max - 3 and gets '...'.
CREATE FUNCTION df._explain_cut(p_text text, p_max integer)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.char_length(p_text) > p_max
                THEN pg_catalog.left(p_text, p_max - 3) || '...' ELSE p_text END
$$;

-- The tree line of one node (without name suffix or marker).
CREATE FUNCTION df._explain_label(p_type text, p_query text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v jsonb;
BEGIN
    IF p_type = 'SQL' THEN
        -- One line: runs of whitespace (newlines included) become one space.
        RETURN 'SQL: ' || df._explain_cut(
            pg_catalog.regexp_replace(pg_catalog.btrim(coalesce(p_query, ''), E' \t\r\n\f\v'), '\s+', ' ', 'g'), 50);
    ELSIF p_type = 'SLEEP' THEN
        RETURN 'SLEEP ' || coalesce(p_query, '?') || 's';
    END IF;
    v := coalesce(df._try_object(p_query), '{}');
    CASE p_type
    WHEN 'WAIT_SCHEDULE' THEN
        RETURN 'WAIT ''' || coalesce(v ->> 'cron_expr', '?') || '''';
    WHEN 'HTTP', 'HTTP_MULTIPART' THEN
        RETURN p_type || ' ' || coalesce(v ->> 'method', 'POST') || ' ' || df._explain_cut(coalesce(v ->> 'url', ''), 40);
    WHEN 'SIGNAL' THEN
        RETURN 'SIGNAL ''' || coalesce(v ->> 'signal_name', '?') || ''''
            || coalesce(' (' || (v ->> 'timeout_seconds') || 's)', '');
    WHEN 'LOOP' THEN
        RETURN CASE WHEN v ? 'condition_node' THEN 'LOOP (while)' ELSE 'LOOP (infinite)' END;
    WHEN 'BREAK' THEN
        RETURN CASE WHEN (v ->> 'break_value') IS NULL THEN 'BREAK'
                    ELSE 'BREAK ''' || df._explain_cut(v ->> 'break_value', 20) || '''' END;
    WHEN 'JOIN' THEN
        RETURN 'JOIN (' || (2 + CASE WHEN pg_catalog.jsonb_typeof(v -> 'extra_nodes') = 'array'
                                     THEN pg_catalog.jsonb_array_length(v -> 'extra_nodes') ELSE 0 END)::text || ')';
    WHEN 'STEP' THEN
        RETURN 'STEP ' || coalesce(v ->> 'kind', '?');
    WHEN 'RETRY' THEN
        RETURN 'RETRY (' || coalesce(v ->> 'max_attempts', '?') || ' attempts)';
    WHEN 'TIMEOUT' THEN
        RETURN 'TIMEOUT ' || coalesce(v ->> 'seconds', '?') || 's';
    ELSE
        RETURN p_type;
    END CASE;
END;
$$;

-- The marker of an inferred status in an instance's tree.
CREATE FUNCTION df._explain_marker(p_status text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE p_status
        WHEN 'completed' THEN ' ✓'
        WHEN 'failed' THEN ' ✗'
        WHEN 'running' THEN ' ⏳'
        WHEN 'pending' THEN ' ○'
        WHEN 'skipped' THEN ' ⊘'
        ELSE ''
    END
$$;

-- Render the tree of a graph given as df.nodes-shaped rows. p_status maps
-- node ids to inferred statuses (an instance: markers) or is NULL (a dry run).
--
-- A THEN chain is flattened: its items are listed at one indent, every item
-- after the first prefixed '→ ' (a name on a THEN goes on the chain's last
-- item). Composite nodes get sections, each a header line with a connector
-- ('├─ ', '└─ ' for the last) and the section's content indented below it
-- ('│  ', or '   ' under the last):
--   IF       ? condition:   ✓ then:   ✗ else:
--   LOOP     ↻ body:        ? while:
--   JOIN     ║ branch 1:    ║ branch 2: ...
--   RACE     ║ branch 1:    ║ branch 2:
--   RETRY    ↻ attempt:
--   TIMEOUT  ⏱ body:
-- Iterative: a stack of frames, each a literal line (L), a sequence to
-- flatten (S) or an item to print (I).
CREATE FUNCTION df._explain_tree(p_ids text[], p_types text[], p_queries text[], p_names text[],
                                 p_lefts text[], p_rights text[], p_root text, p_status jsonb)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_idx jsonb;
    v_out text[] := '{}';
    v_len integer := 0;
    v_seen boolean[];
    s_kind text[];
    s_node integer[];
    s_text text[];
    s_lead text[];
    s_suffix text[];
    v_top integer;
    v_kind text;
    v_k integer;
    v_p text;
    v_lead text;
    v_x text;
    -- THEN-chain flattening
    f_node integer[];
    f_suffix text[];
    f_top integer;
    i_node integer[];
    i_suffix text[];
    v_ni integer;
    v_j integer;
    v_y text;
    -- sections
    v_cfg jsonb;
    sec_head text[];
    sec_node integer[];
    sec_text text[];
    v_ns integer;
    v_cp text;
    v_e jsonb;
    v_b integer;
BEGIN
    SELECT pg_catalog.jsonb_object_agg(u.id, u.k) INTO v_idx
      FROM pg_catalog.unnest(p_ids) WITH ORDINALITY AS u(id, k);
    v_k := (v_idx ->> p_root)::integer;
    IF v_k IS NULL THEN
        RETURN NULL;
    END IF;
    v_seen := pg_catalog.array_fill(false, ARRAY[pg_catalog.cardinality(p_ids)]);
    s_kind := ARRAY['S'];
    s_node := ARRAY[v_k];
    s_text := ARRAY[''];
    s_lead := ARRAY[''];
    s_suffix := ARRAY[''];
    v_top := 1;
    WHILE v_top > 0 LOOP
        v_kind := s_kind[v_top];
        v_k := s_node[v_top];
        v_p := s_text[v_top];
        v_lead := s_lead[v_top];
        v_x := s_suffix[v_top];
        v_top := v_top - 1;

        IF v_kind = 'L' THEN
            v_len := v_len + 1;
            v_out[v_len] := v_p;
            CONTINUE;
        END IF;

        IF v_kind = 'S' THEN
            -- Flatten the THEN chain rooted at v_k into items, in order.
            i_node := '{}';
            i_suffix := '{}';
            v_ni := 0;
            f_node := ARRAY[v_k];
            f_suffix := ARRAY[v_x];
            f_top := 1;
            WHILE f_top > 0 LOOP
                v_j := f_node[f_top];
                v_y := f_suffix[f_top];
                f_top := f_top - 1;
                IF p_types[v_j] = 'THEN' AND NOT v_seen[v_j] THEN
                    v_seen[v_j] := true;
                    v_b := (v_idx ->> p_rights[v_j])::integer;
                    IF v_b IS NOT NULL THEN
                        f_top := f_top + 1;
                        f_node[f_top] := v_b;
                        f_suffix[f_top] := coalesce(' |=> ''' || p_names[v_j] || '''', '') || v_y;
                    END IF;
                    v_b := (v_idx ->> p_lefts[v_j])::integer;
                    IF v_b IS NOT NULL THEN
                        f_top := f_top + 1;
                        f_node[f_top] := v_b;
                        f_suffix[f_top] := '';
                    END IF;
                ELSE
                    v_ni := v_ni + 1;
                    i_node[v_ni] := v_j;
                    i_suffix[v_ni] := v_y;
                END IF;
            END LOOP;
            FOR v_j IN REVERSE v_ni..1 LOOP
                v_top := v_top + 1;
                s_kind[v_top] := 'I';
                s_node[v_top] := i_node[v_j];
                s_text[v_top] := v_p;
                s_lead[v_top] := CASE WHEN v_j = 1 THEN v_lead ELSE '→ ' END;
                s_suffix[v_top] := i_suffix[v_j];
            END LOOP;
            CONTINUE;
        END IF;

        -- An item: its line, then its sections.
        v_len := v_len + 1;
        IF v_seen[v_k] AND p_types[v_k] <> 'THEN' THEN
            -- Reached twice (a damaged graph): do not print it again.
            v_out[v_len] := v_p || v_lead || '...';
            CONTINUE;
        END IF;
        v_seen[v_k] := true;
        v_out[v_len] := v_p || v_lead || df._explain_label(p_types[v_k], p_queries[v_k])
            || coalesce(' |=> ''' || p_names[v_k] || '''', '') || v_x
            || CASE WHEN p_status IS NULL THEN '' ELSE df._explain_marker(p_status ->> p_ids[v_k]) END;

        sec_head := '{}';
        sec_node := '{}';
        sec_text := '{}';
        v_cfg := CASE WHEN p_types[v_k] IN ('IF', 'LOOP', 'JOIN') THEN coalesce(df._try_object(p_queries[v_k]), '{}') END;
        CASE p_types[v_k]
        WHEN 'IF' THEN
            IF v_cfg ? 'condition_node' THEN
                sec_head := ARRAY['? condition:'];
                sec_node := ARRAY[(v_idx ->> (v_cfg ->> 'condition_node'))::integer];
                sec_text := ARRAY[NULL::text];
            ELSE
                sec_head := ARRAY['? condition:'];
                sec_node := ARRAY[NULL::integer];
                sec_text := ARRAY['HAS ROWS ''' || coalesce(v_cfg ->> 'result_name', '?') || ''''];
            END IF;
            sec_head := sec_head || ARRAY['✓ then:', '✗ else:'];
            sec_node := sec_node || ARRAY[(v_idx ->> p_lefts[v_k])::integer, (v_idx ->> p_rights[v_k])::integer];
            sec_text := sec_text || ARRAY[NULL::text, NULL::text];
        WHEN 'LOOP' THEN
            sec_head := ARRAY['↻ body:'];
            sec_node := ARRAY[(v_idx ->> p_lefts[v_k])::integer];
            sec_text := ARRAY[NULL::text];
            IF v_cfg ? 'condition_node' THEN
                sec_head := sec_head || '? while:'::text;
                sec_node := sec_node || (v_idx ->> (v_cfg ->> 'condition_node'))::integer;
                sec_text := sec_text || NULL::text;
            END IF;
        WHEN 'JOIN', 'RACE' THEN
            sec_head := ARRAY['║ branch 1:', '║ branch 2:'];
            sec_node := ARRAY[(v_idx ->> p_lefts[v_k])::integer, (v_idx ->> p_rights[v_k])::integer];
            sec_text := ARRAY[NULL::text, NULL::text];
            IF pg_catalog.jsonb_typeof(v_cfg -> 'extra_nodes') = 'array' THEN
                FOR v_e IN SELECT x.value FROM pg_catalog.jsonb_array_elements(v_cfg -> 'extra_nodes') AS x LOOP
                    sec_head := sec_head || ('║ branch ' || (pg_catalog.cardinality(sec_head) + 1)::text || ':');
                    sec_node := sec_node || (v_idx ->> (v_e #>> '{}'))::integer;
                    sec_text := sec_text || NULL::text;
                END LOOP;
            END IF;
        WHEN 'RETRY' THEN
            sec_head := ARRAY['↻ attempt:'];
            sec_node := ARRAY[(v_idx ->> p_lefts[v_k])::integer];
            sec_text := ARRAY[NULL::text];
        WHEN 'TIMEOUT' THEN
            sec_head := ARRAY['⏱ body:'];
            sec_node := ARRAY[(v_idx ->> p_lefts[v_k])::integer];
            sec_text := ARRAY[NULL::text];
        ELSE
            NULL;
        END CASE;
        v_ns := coalesce(pg_catalog.cardinality(sec_head), 0);
        FOR v_j IN REVERSE v_ns..1 LOOP
            v_cp := v_p || CASE WHEN v_j = v_ns THEN '   ' ELSE '│  ' END;
            v_top := v_top + 1;
            IF sec_node[v_j] IS NOT NULL THEN
                s_kind[v_top] := 'S';
                s_node[v_top] := sec_node[v_j];
                s_text[v_top] := v_cp;
                s_lead[v_top] := '';
                s_suffix[v_top] := '';
            ELSE
                s_kind[v_top] := 'L';
                s_text[v_top] := v_cp || coalesce(sec_text[v_j], '?');
            END IF;
            v_top := v_top + 1;
            s_kind[v_top] := 'L';
            s_text[v_top] := v_p || CASE WHEN v_j = v_ns THEN '└─ ' ELSE '├─ ' END || sec_head[v_j];
        END LOOP;
    END LOOP;
    RETURN pg_catalog.array_to_string(v_out, E'\n');
END;
$$;

-- The dry-run tree of a Durofut value as df.start would store it. Raises
-- what df._parse_strict and df._flatten raise.
CREATE FUNCTION df._explain_graph(p_fut text)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids text[];
    v_types text[];
    v_queries text[];
    v_names text[];
    v_lefts text[];
    v_rights text[];
BEGIN
    SELECT pg_catalog.array_agg(f.id::text ORDER BY f.ord), pg_catalog.array_agg(f.node_type ORDER BY f.ord),
           pg_catalog.array_agg(f.query ORDER BY f.ord), pg_catalog.array_agg(f.result_name ORDER BY f.ord),
           pg_catalog.array_agg(f.left_node::text ORDER BY f.ord), pg_catalog.array_agg(f.right_node::text ORDER BY f.ord)
      INTO v_ids, v_types, v_queries, v_names, v_lefts, v_rights
      FROM df._flatten(df._parse_strict(p_fut)) AS f;
    RETURN df._explain_tree(v_ids, v_types, v_queries, v_names, v_lefts, v_rights, v_ids[1], NULL);
END;
$$;

-- The message of an error raised while parsing or flattening a graph:
-- unknown node types and the depth/size limits are an invalid graph, other
-- structural errors a JSON that does not parse as a Durofut, anything else
-- gets p_other_prefix.
CREATE FUNCTION df._explain_graph_error(p_message text, p_other_prefix text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN pg_catalog.starts_with(p_message, 'Invalid durable function graph: ') THEN p_message
        WHEN pg_catalog.starts_with(p_message, 'Invalid durable function: Unknown node_type ')
             OR p_message ~ '^Invalid durable function: Malformed Durofut JSON with node_type ''[^'']*'': [^ ]+ has unknown node_type ' THEN
            'Invalid durable function graph: ' || pg_catalog.substr(p_message, 27)
        WHEN pg_catalog.starts_with(p_message, 'Invalid durable function: ') THEN
            'Failed to parse Durofut JSON: ' || pg_catalog.substr(p_message, 27)
        ELSE p_other_prefix || p_message
    END
$$;

-- An instance's header and tree, with markers from the inferred status.
CREATE FUNCTION df._explain_instance(p_id text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_label text;
    v_status text;
    v_root text;
    v_root_status text;
    v_root_result jsonb;
    v_output text;
    v_ids text[];
    v_types text[];
    v_queries text[];
    v_names text[];
    v_lefts text[];
    v_rights text[];
    v_markers jsonb;
    v_tree text;
BEGIN
    SELECT i.label, i.status, i.root_node INTO v_label, v_status, v_root
      FROM df.instances i WHERE i.id = p_id;
    IF NOT FOUND THEN
        RETURN pg_catalog.format('Instance ''%s'' not found', p_id);
    END IF;
    SELECT pg_catalog.array_agg(n.id::text ORDER BY n.id), pg_catalog.array_agg(n.node_type ORDER BY n.id),
           pg_catalog.array_agg(n.query ORDER BY n.id), pg_catalog.array_agg(n.result_name ORDER BY n.id),
           pg_catalog.array_agg(n.left_node::text ORDER BY n.id), pg_catalog.array_agg(n.right_node::text ORDER BY n.id),
           pg_catalog.max(n.status) FILTER (WHERE n.id = v_root),
           (pg_catalog.array_agg(n.result) FILTER (WHERE n.id = v_root))[1]
      INTO v_ids, v_types, v_queries, v_names, v_lefts, v_rights, v_root_status, v_root_result
      FROM df.nodes n
     WHERE n.instance_id = p_id;
    IF v_ids IS NULL THEN
        RETURN pg_catalog.format('No nodes found for instance ''%s''', p_id);
    END IF;
    SELECT pg_catalog.jsonb_object_agg(f.node_id, f.inferred) INTO v_markers FROM df._infer(p_id) AS f;
    v_tree := df._explain_tree(v_ids, v_types, v_queries, v_names, v_lefts, v_rights, v_root, coalesce(v_markers, '{}'));
    IF v_tree IS NULL THEN
        RETURN pg_catalog.format('No nodes found for instance ''%s''', p_id);
    END IF;
    v_output := df._output(v_status, v_root_status, v_root_result);
    RETURN 'Instance: ' || p_id || coalesce(' (' || v_label || ')', '') || E'\n'
        || 'Status:   ' || CASE WHEN v_status IN ('completed', 'continuedasnew') THEN '✓'
                                WHEN v_status IN ('failed', 'cancelled') THEN '✗'
                                WHEN v_status = 'running' THEN '⏳'
                                ELSE '○' END || ' ' || coalesce(v_status, 'pending') || E'\n'
        || coalesce('Output:   ' || df._explain_cut(v_output, 60) || E'\n', '')
        || E'\n' || v_tree;
END;
$$;

-- Explain an instance id, a Durofut JSON value, a DSL expression or a SQL
-- statement as a tree. Never raises for bad input: it says what is wrong.
CREATE FUNCTION df.explain(input text)
RETURNS text
LANGUAGE plpgsql
VOLATILE
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_in text := pg_catalog.btrim(input, E' \t\r\n\f\v');
    v_json jsonb;
    v_value text;
    v_tree text;
    v_stage text;
BEGIN
    -- (a) an instance id
    IF v_in ~ '^[0-9a-fA-F]{8}$' THEN
        RETURN df._explain_instance(v_in);
    END IF;

    -- (b) Durofut JSON: a JSON object with a node_type
    BEGIN
        v_json := df._try_object(v_in);
    EXCEPTION WHEN OTHERS THEN
        RETURN 'Failed to parse Durofut JSON: ' || SQLERRM;
    END;
    IF coalesce(v_json -> 'node_type', 'null'::jsonb) <> 'null'::jsonb THEN
        BEGIN
            RETURN df._explain_graph(v_in);
        EXCEPTION WHEN OTHERS THEN
            RETURN df._explain_graph_error(SQLERRM, 'Failed to parse Durofut JSON: ');
        END;
    END IF;

    -- (c) a DSL expression: evaluated as the caller with SELECT <input>, then
    -- explained as df.start would take its value. The evaluation's side
    -- effects are rolled back: explaining changes nothing.
    IF pg_catalog.strpos(v_in, '~>') > 0 OR pg_catalog.strpos(v_in, '|=>') > 0
       OR pg_catalog.strpos(v_in, '?>') > 0 OR pg_catalog.strpos(v_in, '!>') > 0
       OR pg_catalog.strpos(v_in, '@>') > 0 OR pg_catalog.strpos(v_in, 'df.') > 0 THEN
        v_stage := 'evaluate';
        BEGIN
            -- The operators live in pg_catalog, or only in df when a
            -- non-superuser installed the schema.
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, df, pg_temp', true);
            EXECUTE 'SELECT ' || v_in INTO v_value;
            v_stage := 'explain';
            IF v_value IS NULL THEN
                v_tree := 'Expression returned NULL';
            ELSE
                v_tree := df._explain_graph(v_value);
            END IF;
            RAISE EXCEPTION 'roll back the evaluation' USING ERRCODE = 'DCX01';
        EXCEPTION
            WHEN SQLSTATE 'DCX01' THEN
                NULL;
            WHEN OTHERS THEN
                IF v_stage = 'evaluate' THEN
                    v_tree := 'Failed to evaluate expression: ' || SQLERRM;
                ELSE
                    v_tree := df._explain_graph_error(SQLERRM, 'Failed to evaluate expression: ');
                END IF;
        END;
        RETURN v_tree;
    END IF;

    -- (d) a SQL statement: a single SQL node
    IF v_in ~* '^(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|CALL|DO|TRUNCATE|GRANT|REVOKE|EXPLAIN)\s' THEN
        RETURN df._explain_label('SQL', v_in);
    END IF;

    RETURN 'Cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL expression.' || E'\n'
        || 'Hint: pass an instance ID (8 hex digits), a Durofut JSON value, a DSL expression such as '
        || '''SELECT 1'' ~> ''SELECT 2'', or a SQL statement such as SELECT 1.';
END;
$$;
