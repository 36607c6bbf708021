-- durable-cluster 0010: df._flatten draws node ids inline.
--
-- df._flatten as in 0003, except that its node ids come from
-- left(gen_random_uuid()::text, 8) written in the query instead of one
-- df._random_id() call per node: a function with a pinned search_path cannot
-- be inlined, and setting and restoring the path for each of a graph's nodes
-- was a tenth of df.start's time.

CREATE OR REPLACE FUNCTION df._flatten(graph jsonb)
RETURNS TABLE (ord integer, id varchar(8), node_type text, query text, result_name text,
               left_node varchar(8), right_node varchar(8))
LANGUAGE plpgsql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c_max_depth CONSTANT integer := 256;
    c_max_nodes CONSTANT integer := 10000;
    c_types CONSTANT text[] := ARRAY['SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP',
        'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'STEP', 'RETRY', 'TIMEOUT'];
    -- the stack: node, depth, parent number, role in the parent
    -- (1 left, 2 right, 3 condition, 4 extra)
    s_node jsonb[] := ARRAY[graph];
    s_depth integer[] := ARRAY[1];
    s_parent integer[] := ARRAY[0];
    s_role integer[] := ARRAY[0];
    v_top integer := 1;
    -- per node, by pre-order number
    n_type text[] := '{}';
    n_query text[] := '{}';
    n_name text[] := '{}';
    n_left integer[] := '{}';
    n_right integer[] := '{}';
    n_cond integer[] := '{}';
    n_extra text[] := '{}';
    v_count integer := 0;
    v_node jsonb;
    v_depth integer;
    v_parent integer;
    v_kid jsonb;
    v_extra jsonb;
    v_i integer;
    v_ids text[] := '{}';
    v_more text[];
    v_list text;
BEGIN
    WHILE v_top OPERATOR(pg_catalog.>) 0 LOOP
        v_node := s_node[v_top];
        v_depth := s_depth[v_top];
        v_parent := s_parent[v_top];
        v_count := v_count OPERATOR(pg_catalog.+) 1;
        CASE s_role[v_top]
            WHEN 1 THEN n_left[v_parent] := v_count;
            WHEN 2 THEN n_right[v_parent] := v_count;
            WHEN 3 THEN n_cond[v_parent] := v_count;
            WHEN 4 THEN n_extra[v_parent] := pg_catalog.concat_ws(',', n_extra[v_parent], v_count);
            ELSE NULL;
        END CASE;
        v_top := v_top OPERATOR(pg_catalog.-) 1;

        IF v_depth OPERATOR(pg_catalog.>) c_max_depth THEN
            RAISE EXCEPTION 'Invalid durable function graph: graph exceeds the maximum nesting depth of %', c_max_depth
                USING ERRCODE = 'program_limit_exceeded';
        END IF;
        IF pg_catalog.jsonb_typeof(v_node) IS DISTINCT FROM 'object'
           OR coalesce(v_node OPERATOR(pg_catalog.->>) 'node_type', '') OPERATOR(pg_catalog.<>) ALL (c_types) THEN
            RAISE EXCEPTION 'Invalid durable function graph: node % is not a Durofut object with a known node_type', v_count
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        n_type[v_count] := v_node OPERATOR(pg_catalog.->>) 'node_type';
        n_query[v_count] := v_node OPERATOR(pg_catalog.->>) 'query';
        n_name[v_count] := v_node OPERATOR(pg_catalog.->>) 'result_name';

        -- Push children so that they pop as left, right, condition, extras.
        v_extra := v_node OPERATOR(pg_catalog.->) 'extra_nodes';
        IF pg_catalog.jsonb_typeof(v_extra) OPERATOR(pg_catalog.=) 'array' THEN
            FOR v_i IN REVERSE (pg_catalog.jsonb_array_length(v_extra) OPERATOR(pg_catalog.-) 1)..0 LOOP
                v_top := v_top OPERATOR(pg_catalog.+) 1;
                s_node[v_top] := v_extra OPERATOR(pg_catalog.->) v_i;
                s_depth[v_top] := v_depth OPERATOR(pg_catalog.+) 1;
                s_parent[v_top] := v_count;
                s_role[v_top] := 4;
            END LOOP;
        END IF;
        FOR v_i IN REVERSE 3..1 LOOP
            v_kid := v_node OPERATOR(pg_catalog.->) (ARRAY['left_node', 'right_node', 'condition_node'])[v_i];
            CONTINUE WHEN v_kid IS NULL OR v_kid OPERATOR(pg_catalog.=) 'null'::jsonb;
            v_top := v_top OPERATOR(pg_catalog.+) 1;
            s_node[v_top] := v_kid;
            s_depth[v_top] := v_depth OPERATOR(pg_catalog.+) 1;
            s_parent[v_top] := v_count;
            s_role[v_top] := v_i;
        END LOOP;
    END LOOP;

    IF v_count OPERATOR(pg_catalog.>) c_max_nodes THEN
        RAISE EXCEPTION 'Invalid durable function graph: graph has % nodes, exceeding the maximum of %', v_count, c_max_nodes
            USING ERRCODE = 'program_limit_exceeded';
    END IF;

    -- v_count distinct random ids, in draw order; re-roll duplicates.
    WHILE pg_catalog.cardinality(v_ids) OPERATOR(pg_catalog.<) v_count LOOP
        SELECT pg_catalog.array_agg(d.rid ORDER BY d.first_draw) INTO v_more
          FROM (SELECT r.rid, pg_catalog.min(r.draw) AS first_draw
                  FROM (SELECT pg_catalog.left(pg_catalog.gen_random_uuid()::text, 8) AS rid, g AS draw
                          FROM pg_catalog.generate_series(1, v_count OPERATOR(pg_catalog.-) pg_catalog.cardinality(v_ids)) AS g) AS r
                 WHERE r.rid OPERATOR(pg_catalog.<>) ALL (v_ids)
                 GROUP BY r.rid) AS d;
        v_ids := v_ids OPERATOR(pg_catalog.||) coalesce(v_more, '{}');
    END LOOP;

    FOR v_i IN 1..v_count LOOP
        ord := v_i OPERATOR(pg_catalog.-) 1;
        id := v_ids[v_i];
        node_type := n_type[v_i];
        result_name := n_name[v_i];
        left_node := v_ids[n_left[v_i]];
        right_node := v_ids[n_right[v_i]];
        query := CASE
            WHEN node_type OPERATOR(pg_catalog.=) ANY (ARRAY['THEN', 'RACE']) THEN NULL
            WHEN node_type OPERATOR(pg_catalog.=) ANY (ARRAY['IF', 'LOOP']) AND n_cond[v_i] IS NOT NULL
                THEN '{"condition_node":' OPERATOR(pg_catalog.||) pg_catalog.to_json(v_ids[n_cond[v_i]])::text OPERATOR(pg_catalog.||) '}'
            WHEN node_type OPERATOR(pg_catalog.=) 'LOOP' THEN NULL
            WHEN node_type OPERATOR(pg_catalog.=) 'JOIN' THEN NULL
            ELSE n_query[v_i]
        END;
        IF node_type OPERATOR(pg_catalog.=) 'JOIN' AND n_extra[v_i] IS NOT NULL THEN
            SELECT pg_catalog.string_agg(pg_catalog.to_json(v_ids[e.num::integer])::text, ',' ORDER BY e.pos)
              INTO v_list
              FROM pg_catalog.unnest(pg_catalog.string_to_array(n_extra[v_i], ',')) WITH ORDINALITY AS e(num, pos);
            query := '{"extra_nodes":[' OPERATOR(pg_catalog.||) v_list OPERATOR(pg_catalog.||) ']}';
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;
