-- durable-cluster 0003: the DSL of the df schema (spec §1.3-§1.5).
--
-- Every constructor returns text holding a "Durofut": a compact JSON object
-- whose keys appear in serde's order, each omitted when null/absent/empty:
--
--   node_type, query, result_name, left_node, right_node, condition_node,
--   extra_nodes
--
-- The text is emitted by hand (jsonb would reorder keys and add spaces), so
-- identical expressions give byte-identical values. Composers auto-wrap
-- their operands (df._ensure): a JSON object with a known node_type is
-- re-emitted canonically, anything else becomes a SQL node.
--
-- df.start uses df._parse_strict (validation of the whole tree) and
-- df._flatten (pre-order rows for df.nodes, depth <= 256, <= 10,000 nodes).
--
-- Graphs may be far deeper than PL/pgSQL's recursion allows (max_stack_depth
-- is reached after a few hundred nested calls), so every tree walk here is a
-- loop over an explicit stack; nothing recurses.
--
-- Extensions of durable-cluster, same conventions: STEP (df.step), RETRY
-- (df.retry) and TIMEOUT (df.timeout).
--
-- Errors: invalid input is 22023 (invalid_parameter_value), a NULL where a
-- value is required 22004 (null_value_not_allowed), the flatten limits 54000
-- (program_limit_exceeded).

----------------------------------------------------------------------------
-- Small helpers
----------------------------------------------------------------------------

-- 8 random lowercase hex digits (the first group of a v4 UUID is random).
CREATE FUNCTION df._random_id()
RETURNS text
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.left(pg_catalog.gen_random_uuid()::text, 8) $$;

-- A JSON number: integers without a decimal point, other values as the
-- shortest float text. Non-finite values have no JSON form: callers reject
-- them first.
CREATE FUNCTION df._json_num(p_value double precision)
RETURNS text
LANGUAGE sql
IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
SET extra_float_digits = 1
AS $$
    SELECT CASE
        WHEN p_value OPERATOR(pg_catalog.=) pg_catalog.trunc(p_value)
             AND pg_catalog.abs(p_value) OPERATOR(pg_catalog.<) 9e18::double precision
            THEN pg_catalog.trunc(p_value)::bigint::text
        ELSE p_value::text
    END
$$;

-- Compact JSON text of a jsonb value: jsonb's output puts a space after
-- every ',' and ':' outside strings and nowhere else, so drop exactly those
-- (strings are matched whole and kept).
CREATE FUNCTION df._compact_json(p_value jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.regexp_replace(p_value::text, '("(?:[^"\\]|\\.)*")|([,:]) ', '\1\2', 'g')
$$;

-- The JSON object in p_text, or NULL when p_text is not a JSON object.
-- Only syntax errors are swallowed: anything else (stack depth...) raises.
CREATE FUNCTION df._try_object(p_text text)
RETURNS jsonb
LANGUAGE plpgsql
IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_json jsonb;
BEGIN
    IF p_text OPERATOR(pg_catalog.!~) '^\s*\{' THEN
        RETURN NULL;
    END IF;
    BEGIN
        v_json := p_text::jsonb;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character THEN
        RETURN NULL;
    END;
    IF pg_catalog.jsonb_typeof(v_json) OPERATOR(pg_catalog.<>) 'object' THEN
        RETURN NULL;
    END IF;
    RETURN v_json;
END;
$$;

-- A leaf Durofut: {"node_type":<type>,"query":<query>[,"result_name":<name>]}.
CREATE FUNCTION df._leaf(p_type text, p_query text, p_result_name text DEFAULT NULL)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT '{"node_type":' OPERATOR(pg_catalog.||) pg_catalog.to_json(p_type)::text
        OPERATOR(pg_catalog.||) ',"query":' OPERATOR(pg_catalog.||) pg_catalog.to_json(p_query)::text
        OPERATOR(pg_catalog.||) coalesce(',"result_name":' OPERATOR(pg_catalog.||) pg_catalog.to_json(p_result_name)::text, '')
        OPERATOR(pg_catalog.||) '}'
$$;

-- The non-future helper guard (spec §1.3). df.setvar, df.unsetvar,
-- df.clearvars and df.await_instance set the transaction-local setting
-- df.non_future_helper to '<name>\n<statement_timestamp()>'. Their return
-- value reaching a composer as plain text in the same statement means the
-- user composed the helper as if it were a step: refuse it by name.
CREATE FUNCTION df._check_non_future_helper()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_marker text := pg_catalog.current_setting('df.non_future_helper', true);
    v_name text;
BEGIN
    IF v_marker IS NULL OR v_marker OPERATOR(pg_catalog.=) '' THEN
        RETURN;
    END IF;
    IF pg_catalog.split_part(v_marker, E'\n', 2) OPERATOR(pg_catalog.=) pg_catalog.statement_timestamp()::text THEN
        v_name := pg_catalog.split_part(v_marker, E'\n', 1);
        RAISE EXCEPTION '% cannot be used as a workflow step. Call % before df.start().', v_name, v_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

-- Is p_name a valid result name?
CREATE FUNCTION df._is_identifier(p_name text)
RETURNS boolean
LANGUAGE sql
IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT p_name OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_]*$' $$;

----------------------------------------------------------------------------
-- Cron (5 fields: minute hour day-of-month month day-of-week, UTC)
----------------------------------------------------------------------------

-- One cron value (a number or, in the month and day-of-week fields, a name)
-- of field p_field (1..5): its number, or an error in plain words.
CREATE FUNCTION df._cron_value(p_field integer, p_value text, OUT num integer, OUT err text)
LANGUAGE plpgsql
IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c_names CONSTANT text[] := ARRAY['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
    c_lo CONSTANT integer[] := ARRAY[0, 0, 1, 1, 0];
    c_hi CONSTANT integer[] := ARRAY[59, 23, 31, 12, 7];
    c_months CONSTANT text[] := ARRAY['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
    c_days CONSTANT text[] := ARRAY['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
    v_pos integer;
BEGIN
    IF p_value OPERATOR(pg_catalog.~) '^[0-9]+$' THEN
        IF pg_catalog.length(p_value) OPERATOR(pg_catalog.>) 9
           OR p_value::numeric OPERATOR(pg_catalog.<) c_lo[p_field]
           OR p_value::numeric OPERATOR(pg_catalog.>) c_hi[p_field] THEN
            err := pg_catalog.format('%s value %s out of range %s-%s',
                                     c_names[p_field], p_value, c_lo[p_field], c_hi[p_field]);
        ELSE
            num := p_value::integer;
        END IF;
        RETURN;
    END IF;
    IF p_field OPERATOR(pg_catalog.=) 4 THEN
        v_pos := pg_catalog.array_position(c_months, pg_catalog.upper(p_value));
        num := v_pos;
    ELSIF p_field OPERATOR(pg_catalog.=) 5 THEN
        v_pos := pg_catalog.array_position(c_days, pg_catalog.upper(p_value));
        num := v_pos OPERATOR(pg_catalog.-) 1;
    END IF;
    IF v_pos IS NULL THEN
        num := NULL;
        err := pg_catalog.format('invalid %s value ''%s''', c_names[p_field], p_value);
    END IF;
END;
$$;

-- NULL when p_expr is a valid 5-field cron expression, else the reason.
-- Accepted per field: '*', numbers, ranges a-b, steps */n a/n a-b/n,
-- comma lists, JAN-DEC in the month field, SUN-SAT in the day-of-week field
-- (0 and 7 are both Sunday), and '?' in the two day fields.
CREATE FUNCTION df._cron_error(p_expr text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c_names CONSTANT text[] := ARRAY['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
    c_hi CONSTANT integer[] := ARRAY[59, 23, 31, 12, 7];
    v_trimmed text := pg_catalog.btrim(p_expr, E' \t\r\n');
    v_fields text[];
    v_item text;
    v_slash text[];
    v_range text[];
    v_step text;
    v_value record;
    v_start integer;
    v_field integer;
    v_i integer;
BEGIN
    IF v_trimmed OPERATOR(pg_catalog.=) '' THEN
        RETURN 'expected 5 fields, found 0';
    END IF;
    v_fields := pg_catalog.regexp_split_to_array(v_trimmed, '\s+');
    IF pg_catalog.cardinality(v_fields) OPERATOR(pg_catalog.<>) 5 THEN
        RETURN pg_catalog.format('expected 5 fields, found %s', pg_catalog.cardinality(v_fields));
    END IF;
    FOR v_field IN 1..5 LOOP
        FOREACH v_item IN ARRAY pg_catalog.string_to_array(v_fields[v_field], ',') LOOP
            IF v_item OPERATOR(pg_catalog.=) '' THEN
                RETURN pg_catalog.format('empty list item in the %s field', c_names[v_field]);
            END IF;
            IF v_item OPERATOR(pg_catalog.=) '?' THEN
                IF v_field OPERATOR(pg_catalog.<>) ALL (ARRAY[3, 5]) THEN
                    RETURN '''?'' is only allowed in the day-of-month and day-of-week fields';
                END IF;
                CONTINUE;
            END IF;
            v_slash := pg_catalog.string_to_array(v_item, '/');
            IF pg_catalog.cardinality(v_slash) OPERATOR(pg_catalog.>) 2 THEN
                RETURN pg_catalog.format('invalid %s item ''%s''', c_names[v_field], v_item);
            END IF;
            IF pg_catalog.cardinality(v_slash) OPERATOR(pg_catalog.=) 2 THEN
                v_step := v_slash[2];
                IF v_step OPERATOR(pg_catalog.!~) '^[0-9]+$' THEN
                    RETURN pg_catalog.format('invalid %s step ''%s''', c_names[v_field], v_step);
                END IF;
                IF pg_catalog.length(v_step) OPERATOR(pg_catalog.>) 9
                   OR v_step::numeric OPERATOR(pg_catalog.<) 1
                   OR v_step::numeric OPERATOR(pg_catalog.>) c_hi[v_field] THEN
                    RETURN pg_catalog.format('%s step %s out of range 1-%s', c_names[v_field], v_step, c_hi[v_field]);
                END IF;
            END IF;
            CONTINUE WHEN v_slash[1] OPERATOR(pg_catalog.=) '*';
            v_range := pg_catalog.string_to_array(v_slash[1], '-');
            IF pg_catalog.cardinality(v_range) OPERATOR(pg_catalog.>) 2 THEN
                RETURN pg_catalog.format('invalid %s item ''%s''', c_names[v_field], v_item);
            END IF;
            v_start := NULL;
            FOR v_i IN 1..pg_catalog.cardinality(v_range) LOOP
                v_value := df._cron_value(v_field, v_range[v_i]);
                IF v_value.err IS NOT NULL THEN
                    RETURN v_value.err;
                END IF;
                IF v_i OPERATOR(pg_catalog.=) 2 AND v_value.num OPERATOR(pg_catalog.<) v_start THEN
                    RETURN pg_catalog.format('%s range %s starts after it ends', c_names[v_field], v_slash[1]);
                END IF;
                v_start := v_value.num;
            END LOOP;
        END LOOP;
    END LOOP;
    RETURN NULL;
END;
$$;

----------------------------------------------------------------------------
-- The Durofut walker: validation and canonical emission
----------------------------------------------------------------------------

-- Structural check of a leaf's (or RETRY/TIMEOUT/if_rows IF's) stored query,
-- for the strict parse at df.start: NULL when fine, else what is wrong.
CREATE FUNCTION df._payload_error(p_type text, p_query text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v jsonb;
    v_err text;
BEGIN
    IF p_type OPERATOR(pg_catalog.=) 'SQL' THEN
        RETURN NULL;
    END IF;
    IF p_type OPERATOR(pg_catalog.=) 'SLEEP' THEN
        IF p_query OPERATOR(pg_catalog.!~) '^[0-9]+$' THEN
            RETURN pg_catalog.format('query %s is not a whole number of seconds', pg_catalog.to_json(p_query));
        END IF;
        RETURN NULL;
    END IF;
    v := df._try_object(p_query);
    IF v IS NULL THEN
        RETURN 'query must be a JSON object';
    END IF;
    CASE p_type
    WHEN 'IF' THEN
        IF (v OPERATOR(pg_catalog.->>) 'condition_type') IS DISTINCT FROM 'result_has_rows' THEN
            RETURN 'query must have "condition_type":"result_has_rows"';
        ELSIF pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'result_name') IS DISTINCT FROM 'string'
              OR NOT df._is_identifier(v OPERATOR(pg_catalog.->>) 'result_name') THEN
            RETURN 'query must have a valid "result_name"';
        END IF;
    WHEN 'WAIT_SCHEDULE' THEN
        IF pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'cron_expr') IS DISTINCT FROM 'string' THEN
            RETURN 'query must have a string "cron_expr"';
        END IF;
        v_err := df._cron_error(v OPERATOR(pg_catalog.->>) 'cron_expr');
        IF v_err IS NOT NULL THEN
            RETURN pg_catalog.format('Invalid cron expression ''%s'': %s', v OPERATOR(pg_catalog.->>) 'cron_expr', v_err);
        END IF;
    WHEN 'BREAK' THEN
        IF NOT v OPERATOR(pg_catalog.?) 'break_value'
           OR pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'break_value') OPERATOR(pg_catalog.<>) ALL (ARRAY['string', 'null']) THEN
            RETURN 'query must have "break_value" (a string or null)';
        END IF;
    WHEN 'HTTP', 'HTTP_MULTIPART' THEN
        IF pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'url') IS DISTINCT FROM 'string' THEN
            RETURN 'query must have a string "url"';
        END IF;
        IF p_type OPERATOR(pg_catalog.=) 'HTTP'
           AND coalesce(v OPERATOR(pg_catalog.->>) 'method', '') OPERATOR(pg_catalog.<>) ALL (ARRAY['GET', 'POST', 'PUT', 'DELETE', 'PATCH']) THEN
            RETURN '"method" must be GET, POST, PUT, DELETE, or PATCH';
        END IF;
        IF p_type OPERATOR(pg_catalog.=) 'HTTP_MULTIPART'
           AND coalesce(v OPERATOR(pg_catalog.->>) 'method', '') OPERATOR(pg_catalog.<>) ALL (ARRAY['POST', 'PUT', 'PATCH']) THEN
            RETURN '"method" must be POST, PUT, or PATCH';
        END IF;
        IF coalesce(pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'body'), 'null') OPERATOR(pg_catalog.<>) ALL (ARRAY['string', 'null']) THEN
            RETURN '"body" must be a string or null';
        END IF;
        v_err := df._headers_error(v OPERATOR(pg_catalog.->) 'headers');
        IF v_err IS NOT NULL THEN
            RETURN v_err;
        END IF;
        IF p_type OPERATOR(pg_catalog.=) 'HTTP_MULTIPART' THEN
            v_err := df._parts_error(v OPERATOR(pg_catalog.->) 'parts');
            IF v_err IS NOT NULL THEN
                RETURN v_err;
            END IF;
        END IF;
        IF NOT df._is_positive_int(v OPERATOR(pg_catalog.->) 'timeout_seconds', true) THEN
            RETURN '"timeout_seconds" must be a positive integer';
        END IF;
    WHEN 'SIGNAL' THEN
        IF pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'signal_name') IS DISTINCT FROM 'string'
           OR pg_catalog.btrim(v OPERATOR(pg_catalog.->>) 'signal_name') OPERATOR(pg_catalog.=) '' THEN
            RETURN 'query must have a non-empty string "signal_name"';
        END IF;
        IF NOT df._is_positive_int(v OPERATOR(pg_catalog.->) 'timeout_seconds', true) THEN
            RETURN '"timeout_seconds" must be a positive integer or null';
        END IF;
    WHEN 'STEP' THEN
        IF pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'kind') IS DISTINCT FROM 'string'
           OR (v OPERATOR(pg_catalog.->>) 'kind') OPERATOR(pg_catalog.=) '' THEN
            RETURN 'query must have a non-empty string "kind"';
        END IF;
        IF coalesce(pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'args'), 'object') OPERATOR(pg_catalog.<>) 'object' THEN
            RETURN '"args" must be a JSON object';
        END IF;
    WHEN 'RETRY' THEN
        IF NOT df._is_positive_int(v OPERATOR(pg_catalog.->) 'max_attempts', false) THEN
            RETURN '"max_attempts" must be a positive integer';
        END IF;
        IF coalesce(pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'backoff_seconds'), 'number') OPERATOR(pg_catalog.<>) 'number'
           OR (v OPERATOR(pg_catalog.->) 'backoff_seconds')::numeric OPERATOR(pg_catalog.<) 0 THEN
            RETURN '"backoff_seconds" must be a non-negative number';
        END IF;
        IF coalesce(pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'max_backoff_seconds'), 'number') OPERATOR(pg_catalog.<>) 'number'
           OR (v OPERATOR(pg_catalog.->) 'max_backoff_seconds')::numeric
              OPERATOR(pg_catalog.<) coalesce((v OPERATOR(pg_catalog.->) 'backoff_seconds')::numeric, 0) THEN
            RETURN '"max_backoff_seconds" must be a number at least "backoff_seconds"';
        END IF;
    WHEN 'TIMEOUT' THEN
        IF pg_catalog.jsonb_typeof(v OPERATOR(pg_catalog.->) 'seconds') IS DISTINCT FROM 'number'
           OR (v OPERATOR(pg_catalog.->) 'seconds')::numeric OPERATOR(pg_catalog.<=) 0 THEN
            RETURN '"seconds" must be a positive number';
        END IF;
    ELSE
        NULL;
    END CASE;
    RETURN NULL;
END;
$$;

-- Is p_value a JSON positive integer (or, when p_null_ok, absent/null)?
CREATE FUNCTION df._is_positive_int(p_value jsonb, p_null_ok boolean)
RETURNS boolean
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_value IS NULL OR p_value OPERATOR(pg_catalog.=) 'null'::jsonb THEN p_null_ok
        WHEN pg_catalog.jsonb_typeof(p_value) OPERATOR(pg_catalog.<>) 'number' THEN false
        ELSE p_value::numeric OPERATOR(pg_catalog.>) 0
             AND p_value::numeric OPERATOR(pg_catalog.=) pg_catalog.trunc(p_value::numeric)
    END
$$;

-- HTTP headers: NULL/JSON null, or an object whose values are strings.
-- Returns NULL when fine, else the problem.
CREATE FUNCTION df._headers_error(p_headers jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_headers IS NULL OR p_headers OPERATOR(pg_catalog.=) 'null'::jsonb THEN NULL
        WHEN pg_catalog.jsonb_typeof(p_headers) OPERATOR(pg_catalog.<>) 'object'
             OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_each(p_headers) AS h
                         WHERE pg_catalog.jsonb_typeof(h.value) OPERATOR(pg_catalog.<>) 'string')
            THEN 'headers must be a JSON object of string values'
    END
$$;

-- Multipart parts: a non-empty array of objects, each with string "name"
-- and "data_b64". NULL when fine, else the problem.
CREATE FUNCTION df._parts_error(p_parts jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_parts IS NULL OR p_parts OPERATOR(pg_catalog.=) 'null'::jsonb
            THEN 'parts is required and cannot be NULL'
        WHEN pg_catalog.jsonb_typeof(p_parts) OPERATOR(pg_catalog.<>) 'array'
             OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(p_parts) AS p(part)
                         WHERE pg_catalog.jsonb_typeof(p.part) OPERATOR(pg_catalog.<>) 'object')
            THEN 'parts must be a JSON array of part objects'
        WHEN pg_catalog.jsonb_array_length(p_parts) OPERATOR(pg_catalog.=) 0
            THEN 'parts must contain at least one part'
        WHEN EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(p_parts) AS p(part)
                      WHERE pg_catalog.jsonb_typeof(p.part OPERATOR(pg_catalog.->) 'name') IS DISTINCT FROM 'string'
                         OR pg_catalog.jsonb_typeof(p.part OPERATOR(pg_catalog.->) 'data_b64') IS DISTINCT FROM 'string')
            THEN 'each part needs a string "name" and a string "data_b64"'
    END
$$;

-- Validate the Durofut tree p_root (a JSON object with a known node_type)
-- and emit it as canonical text. Iterative: s_node/s_text is a stack of
-- pending items, either a node to open (s_node) or literal text (s_text);
-- the output is collected in an array and joined once.
--
-- p_strict = false is the lenient deserialisation of the composers: field
--   types are checked (query/result_name strings, children objects with a
--   known node_type, extra_nodes an array), errors are
--   'Invalid Durofut JSON: failed to deserialize workflow step: ...'.
-- p_strict = true is df.start's parse: also the structure of every node
--   (required and forbidden children and query, the stored query's shape,
--   result names), errors are
--   'Invalid durable function: Malformed Durofut JSON with node_type ...'.
-- p_root_name, when given, replaces the root's result_name (df.as).
-- Unknown keys are dropped; empty extra_nodes are omitted.
CREATE FUNCTION df._emit(p_root jsonb, p_strict boolean, p_root_name text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c_types CONSTANT text[] := ARRAY['SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP',
        'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'STEP', 'RETRY', 'TIMEOUT'];
    c_leaves CONSTANT text[] := ARRAY['SQL', 'BREAK', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP',
        'HTTP_MULTIPART', 'SIGNAL', 'STEP'];
    c_labels CONSTANT text[] := ARRAY['left_node', 'right_node', 'condition_node'];
    v_out text[] := '{}';
    v_len integer := 0;
    s_node jsonb[] := ARRAY[p_root];
    s_text text[] := ARRAY[NULL::text];
    v_top integer := 1;
    v_node jsonb;
    v_type text;
    v_query jsonb;
    v_name jsonb;
    v_kids jsonb[];
    v_extra jsonb;
    v_nextra integer;
    v_child jsonb;
    v_label text;
    v_err text;
    v_head text;
    v_is_root boolean := true;
    v_i integer;
BEGIN
    WHILE v_top OPERATOR(pg_catalog.>) 0 LOOP
        v_node := s_node[v_top];
        IF v_node IS NULL THEN
            v_len := v_len OPERATOR(pg_catalog.+) 1;
            v_out[v_len] := s_text[v_top];
            v_top := v_top OPERATOR(pg_catalog.-) 1;
            CONTINUE;
        END IF;
        v_top := v_top OPERATOR(pg_catalog.-) 1;

        v_type := v_node OPERATOR(pg_catalog.->>) 'node_type';
        v_query := nullif(v_node OPERATOR(pg_catalog.->) 'query', 'null'::jsonb);
        v_name := nullif(v_node OPERATOR(pg_catalog.->) 'result_name', 'null'::jsonb);
        v_kids := ARRAY[nullif(v_node OPERATOR(pg_catalog.->) 'left_node', 'null'::jsonb),
                        nullif(v_node OPERATOR(pg_catalog.->) 'right_node', 'null'::jsonb),
                        nullif(v_node OPERATOR(pg_catalog.->) 'condition_node', 'null'::jsonb)];
        v_extra := nullif(v_node OPERATOR(pg_catalog.->) 'extra_nodes', 'null'::jsonb);
        v_nextra := 0;
        v_err := NULL;

        -- Field types (both modes).
        IF v_query IS NOT NULL AND pg_catalog.jsonb_typeof(v_query) OPERATOR(pg_catalog.<>) 'string' THEN
            v_err := 'query must be a string';
        ELSIF v_name IS NOT NULL AND pg_catalog.jsonb_typeof(v_name) OPERATOR(pg_catalog.<>) 'string' THEN
            v_err := 'result_name must be a string';
        ELSIF v_extra IS NOT NULL AND pg_catalog.jsonb_typeof(v_extra) OPERATOR(pg_catalog.<>) 'array' THEN
            v_err := 'extra_nodes must be a JSON array';
        END IF;
        IF v_extra IS NOT NULL AND v_err IS NULL THEN
            v_nextra := pg_catalog.jsonb_array_length(v_extra);
        END IF;
        -- Children: objects with a known node_type.
        IF v_err IS NULL THEN
            FOR v_i IN 1..(3 OPERATOR(pg_catalog.+) v_nextra) LOOP
                IF v_i OPERATOR(pg_catalog.<=) 3 THEN
                    v_child := v_kids[v_i];
                    CONTINUE WHEN v_child IS NULL;
                    v_label := c_labels[v_i];
                ELSE
                    v_child := v_extra OPERATOR(pg_catalog.->) (v_i OPERATOR(pg_catalog.-) 4);
                    v_label := pg_catalog.format('extra_nodes[%s]', v_i OPERATOR(pg_catalog.-) 4);
                END IF;
                IF pg_catalog.jsonb_typeof(v_child) OPERATOR(pg_catalog.<>) 'object' THEN
                    IF p_strict THEN
                        v_err := v_label OPERATOR(pg_catalog.||) ' must be a JSON object';
                    ELSE
                        v_err := pg_catalog.format('Durofut children must be JSON objects; %s is a JSON %s',
                                                   v_label, pg_catalog.jsonb_typeof(v_child));
                    END IF;
                ELSIF coalesce(v_child OPERATOR(pg_catalog.->) 'node_type', 'null'::jsonb) OPERATOR(pg_catalog.=) 'null'::jsonb THEN
                    v_err := v_label OPERATOR(pg_catalog.||) ' is missing node_type';
                ELSIF pg_catalog.jsonb_typeof(v_child OPERATOR(pg_catalog.->) 'node_type') OPERATOR(pg_catalog.<>) 'string'
                      OR (v_child OPERATOR(pg_catalog.->>) 'node_type') OPERATOR(pg_catalog.<>) ALL (c_types) THEN
                    v_err := pg_catalog.format('%s has unknown node_type %s', v_label,
                        CASE WHEN pg_catalog.jsonb_typeof(v_child OPERATOR(pg_catalog.->) 'node_type') OPERATOR(pg_catalog.=) 'string'
                             THEN pg_catalog.quote_literal(v_child OPERATOR(pg_catalog.->>) 'node_type')
                             ELSE (v_child OPERATOR(pg_catalog.->) 'node_type')::text END);
                END IF;
                EXIT WHEN v_err IS NOT NULL;
            END LOOP;
        END IF;

        -- Structure (strict parse only).
        IF p_strict AND v_err IS NULL THEN
            IF v_name IS NOT NULL AND NOT df._is_identifier(v_name OPERATOR(pg_catalog.#>>) '{}') THEN
                v_err := pg_catalog.format('result_name ''%s'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*',
                                           v_name OPERATOR(pg_catalog.#>>) '{}');
            ELSIF v_type OPERATOR(pg_catalog.=) ANY (c_leaves) THEN
                IF v_query IS NULL THEN
                    v_err := 'missing query';
                ELSIF v_kids[1] IS NOT NULL THEN
                    v_err := v_type OPERATOR(pg_catalog.||) ' node cannot have left_node';
                ELSIF v_kids[2] IS NOT NULL THEN
                    v_err := v_type OPERATOR(pg_catalog.||) ' node cannot have right_node';
                ELSIF v_kids[3] IS NOT NULL THEN
                    v_err := v_type OPERATOR(pg_catalog.||) ' node cannot have condition_node';
                ELSIF v_nextra OPERATOR(pg_catalog.>) 0 THEN
                    v_err := v_type OPERATOR(pg_catalog.||) ' node cannot have extra_nodes';
                ELSE
                    v_err := df._payload_error(v_type, v_query OPERATOR(pg_catalog.#>>) '{}');
                END IF;
            ELSIF v_kids[1] IS NULL THEN
                v_err := 'missing left_node';
            ELSIF v_type OPERATOR(pg_catalog.=) ANY (ARRAY['THEN', 'IF', 'JOIN', 'RACE']) THEN
                IF v_kids[2] IS NULL THEN
                    v_err := 'missing right_node';
                ELSIF v_type OPERATOR(pg_catalog.<>) 'JOIN' AND v_nextra OPERATOR(pg_catalog.>) 0 THEN
                    v_err := v_type OPERATOR(pg_catalog.||) ' node cannot have extra_nodes';
                ELSIF v_type OPERATOR(pg_catalog.=) 'IF' THEN
                    IF v_kids[3] IS NOT NULL AND v_query IS NOT NULL THEN
                        v_err := 'IF node cannot have both condition_node and query';
                    ELSIF v_kids[3] IS NULL AND v_query IS NULL THEN
                        v_err := 'missing condition_node';
                    ELSIF v_query IS NOT NULL THEN
                        v_err := df._payload_error('IF', v_query OPERATOR(pg_catalog.#>>) '{}');
                    END IF;
                ELSIF v_kids[3] IS NOT NULL THEN
                    v_err := v_type OPERATOR(pg_catalog.||) ' node cannot have condition_node';
                ELSIF v_query IS NOT NULL THEN
                    v_err := v_type OPERATOR(pg_catalog.||) ' node cannot have a query';
                END IF;
            ELSE -- LOOP, RETRY, TIMEOUT
                IF v_kids[2] IS NOT NULL THEN
                    v_err := v_type OPERATOR(pg_catalog.||) ' node cannot have right_node';
                ELSIF v_nextra OPERATOR(pg_catalog.>) 0 THEN
                    v_err := v_type OPERATOR(pg_catalog.||) ' node cannot have extra_nodes';
                ELSIF v_type OPERATOR(pg_catalog.=) 'LOOP' THEN
                    IF v_query IS NOT NULL THEN
                        v_err := 'LOOP node cannot have a query';
                    END IF;
                ELSIF v_kids[3] IS NOT NULL THEN
                    v_err := v_type OPERATOR(pg_catalog.||) ' node cannot have condition_node';
                ELSIF v_query IS NULL THEN
                    v_err := 'missing query';
                ELSE
                    v_err := df._payload_error(v_type, v_query OPERATOR(pg_catalog.#>>) '{}');
                END IF;
            END IF;
        END IF;

        IF v_err IS NOT NULL THEN
            IF p_strict THEN
                RAISE EXCEPTION 'Invalid durable function: Malformed Durofut JSON with node_type ''%'': %', v_type, v_err
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            RAISE EXCEPTION 'Invalid Durofut JSON: failed to deserialize workflow step: % (in %)', v_err,
                CASE WHEN v_type OPERATOR(pg_catalog.=) 'IF' THEN 'an IF node' ELSE 'a ' OPERATOR(pg_catalog.||) v_type OPERATOR(pg_catalog.||) ' node' END
                USING ERRCODE = 'invalid_parameter_value';
        END IF;

        -- Emit the head now, push the rest in reverse order.
        v_head := '{"node_type":' OPERATOR(pg_catalog.||) pg_catalog.to_json(v_type)::text;
        IF v_query IS NOT NULL THEN
            v_head := v_head OPERATOR(pg_catalog.||) ',"query":' OPERATOR(pg_catalog.||) v_query::text;
        END IF;
        IF v_is_root AND p_root_name IS NOT NULL THEN
            v_head := v_head OPERATOR(pg_catalog.||) ',"result_name":' OPERATOR(pg_catalog.||) pg_catalog.to_json(p_root_name)::text;
        ELSIF v_name IS NOT NULL THEN
            v_head := v_head OPERATOR(pg_catalog.||) ',"result_name":' OPERATOR(pg_catalog.||) v_name::text;
        END IF;
        v_is_root := false;
        v_len := v_len OPERATOR(pg_catalog.+) 1;
        v_out[v_len] := v_head;

        v_top := v_top OPERATOR(pg_catalog.+) 1;
        s_node[v_top] := NULL;
        s_text[v_top] := '}';
        IF v_nextra OPERATOR(pg_catalog.>) 0 THEN
            v_top := v_top OPERATOR(pg_catalog.+) 1;
            s_node[v_top] := NULL;
            s_text[v_top] := ']';
            FOR v_i IN REVERSE (v_nextra OPERATOR(pg_catalog.-) 1)..0 LOOP
                v_top := v_top OPERATOR(pg_catalog.+) 1;
                s_node[v_top] := v_extra OPERATOR(pg_catalog.->) v_i;
                IF v_i OPERATOR(pg_catalog.>) 0 THEN
                    v_top := v_top OPERATOR(pg_catalog.+) 1;
                    s_node[v_top] := NULL;
                    s_text[v_top] := ',';
                END IF;
            END LOOP;
            v_top := v_top OPERATOR(pg_catalog.+) 1;
            s_node[v_top] := NULL;
            s_text[v_top] := ',"extra_nodes":[';
        END IF;
        FOR v_i IN REVERSE 3..1 LOOP
            CONTINUE WHEN v_kids[v_i] IS NULL;
            v_top := v_top OPERATOR(pg_catalog.+) 1;
            s_node[v_top] := v_kids[v_i];
            v_top := v_top OPERATOR(pg_catalog.+) 1;
            s_node[v_top] := NULL;
            s_text[v_top] := ',"' OPERATOR(pg_catalog.||) c_labels[v_i] OPERATOR(pg_catalog.||) '":';
        END LOOP;
    END LOOP;
    RETURN pg_catalog.array_to_string(v_out, '');
END;
$$;

-- Durofut::ensure, used by every composer: a JSON object with a known
-- node_type is re-emitted canonically (lenient checks); any other text,
-- including JSON with an unknown or no node_type, becomes a SQL node.
-- p_result_name names the resulting top node (df.as).
CREATE FUNCTION df._ensure(p_fut text, p_result_name text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_json jsonb := df._try_object(p_fut);
BEGIN
    IF v_json IS NULL THEN
        PERFORM df._check_non_future_helper();
        RETURN df._leaf('SQL', p_fut, p_result_name);
    END IF;
    IF pg_catalog.jsonb_typeof(v_json OPERATOR(pg_catalog.->) 'node_type') OPERATOR(pg_catalog.=) 'string'
       AND (v_json OPERATOR(pg_catalog.->>) 'node_type') OPERATOR(pg_catalog.=) ANY (ARRAY['SQL', 'THEN', 'IF', 'JOIN',
           'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'STEP', 'RETRY', 'TIMEOUT']) THEN
        RETURN df._emit(v_json, false, p_result_name);
    END IF;
    RETURN df._leaf('SQL', p_fut, p_result_name);
END;
$$;

-- The strict parse df.start uses (Durofut::ensure_strict): non-JSON text or
-- JSON without node_type becomes a SQL node; an unknown node_type or a bad
-- structure anywhere in the tree raises. Returns the canonical tree.
CREATE FUNCTION df._parse_strict(fut text)
RETURNS jsonb
LANGUAGE plpgsql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_json jsonb := df._try_object(fut);
    v_type jsonb;
BEGIN
    IF v_json IS NULL THEN
        PERFORM df._check_non_future_helper();
        RETURN pg_catalog.jsonb_build_object('node_type', 'SQL', 'query', fut);
    END IF;
    v_type := coalesce(v_json OPERATOR(pg_catalog.->) 'node_type', 'null'::jsonb);
    IF v_type OPERATOR(pg_catalog.=) 'null'::jsonb THEN
        RETURN pg_catalog.jsonb_build_object('node_type', 'SQL', 'query', fut);
    END IF;
    IF pg_catalog.jsonb_typeof(v_type) OPERATOR(pg_catalog.<>) 'string'
       OR (v_type OPERATOR(pg_catalog.#>>) '{}') OPERATOR(pg_catalog.<>) ALL (ARRAY['SQL', 'THEN', 'IF', 'JOIN', 'LOOP',
           'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL', 'STEP', 'RETRY', 'TIMEOUT']) THEN
        RAISE EXCEPTION 'Invalid durable function: Unknown node_type ''%''. Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL, STEP, RETRY, TIMEOUT',
            v_type OPERATOR(pg_catalog.#>>) '{}'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN df._emit(v_json, true)::jsonb;
END;
$$;

----------------------------------------------------------------------------
-- Flattening into df.nodes rows
----------------------------------------------------------------------------

-- Pre-order flattening of a canonical tree (from df._parse_strict) into the
-- rows df.start writes to df.nodes; ord = 0 is the root. Condition and
-- extra-branch subtrees are rows too, referenced by id from the parent's
-- stored query. Iterative: the walk numbers the nodes and records children
-- by number (a child learns its number when popped and patches its parent),
-- then one batch of unique random ids is drawn and the rows are emitted.
CREATE FUNCTION df._flatten(graph jsonb)
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
                  FROM (SELECT df._random_id() AS rid, g AS draw
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

----------------------------------------------------------------------------
-- Constructors (spec §1.4)
----------------------------------------------------------------------------

-- SQL leaf.
CREATE FUNCTION df.sql(query text)
RETURNS text
LANGUAGE sql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT df._leaf('SQL', query) $$;

-- THEN: a, then b (operator ~>).
CREATE FUNCTION df.seq(a text, b text)
RETURNS text
LANGUAGE sql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT '{"node_type":"THEN","left_node":' OPERATOR(pg_catalog.||) df._ensure(a)
        OPERATOR(pg_catalog.||) ',"right_node":' OPERATOR(pg_catalog.||) df._ensure(b) OPERATOR(pg_catalog.||) '}'
$$;

-- Name the result of the top node of fut (operator |=> via df.as_op).
CREATE FUNCTION df.as(fut text, name text)
RETURNS text
LANGUAGE plpgsql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF $2 OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'df.as: result name cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT df._is_identifier($2) THEN
        RAISE EXCEPTION 'df.as: result name ''%'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*', $2
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN df._ensure($1, $2);
END;
$$;

-- SLEEP leaf; the query is the number of seconds as a decimal string.
CREATE FUNCTION df.sleep(seconds bigint)
RETURNS text
LANGUAGE plpgsql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF seconds OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'Sleep duration must be non-negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN df._leaf('SLEEP', seconds::text);
END;
$$;

-- WAIT_SCHEDULE leaf: wait for the next tick of a 5-field cron expression
-- (computed when the node runs).
CREATE FUNCTION df.wait_for_schedule(cron_expr text)
RETURNS text
LANGUAGE plpgsql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_err text := df._cron_error(cron_expr);
BEGIN
    IF v_err IS NOT NULL THEN
        RAISE EXCEPTION 'Invalid cron expression ''%'': %', cron_expr, v_err USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN df._leaf('WAIT_SCHEDULE', '{"cron_expr":' OPERATOR(pg_catalog.||) pg_catalog.to_json(cron_expr)::text OPERATOR(pg_catalog.||) '}');
END;
$$;

-- LOOP: body repeated forever (until df.break), or do-while condition.
CREATE FUNCTION df.loop(body text, condition text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF body IS NULL THEN
        RAISE EXCEPTION 'df.loop: body cannot be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN '{"node_type":"LOOP","left_node":' OPERATOR(pg_catalog.||) df._ensure(body)
        OPERATOR(pg_catalog.||) coalesce(',"condition_node":' OPERATOR(pg_catalog.||) df._ensure(condition), '')
        OPERATOR(pg_catalog.||) '}';
END;
$$;

-- BREAK leaf; value is a literal (not SQL), NULL gives a JSON null.
CREATE FUNCTION df.break(value text DEFAULT NULL)
RETURNS text
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT df._leaf('BREAK', '{"break_value":' OPERATOR(pg_catalog.||) coalesce(pg_catalog.to_json(value)::text, 'null') OPERATOR(pg_catalog.||) '}')
$$;

-- IF: condition sub-graph, then and else branches.
CREATE FUNCTION df.if(condition text, then_branch text, else_branch text)
RETURNS text
LANGUAGE sql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT '{"node_type":"IF","left_node":' OPERATOR(pg_catalog.||) df._ensure(then_branch)
        OPERATOR(pg_catalog.||) ',"right_node":' OPERATOR(pg_catalog.||) df._ensure(else_branch)
        OPERATOR(pg_catalog.||) ',"condition_node":' OPERATOR(pg_catalog.||) df._ensure(condition) OPERATOR(pg_catalog.||) '}'
$$;

-- IF on whether the named earlier result has rows.
CREATE FUNCTION df.if_rows(result_name text, then_branch text, else_branch text)
RETURNS text
LANGUAGE plpgsql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF result_name OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'df.if_rows: result name cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT df._is_identifier(result_name) THEN
        RAISE EXCEPTION 'df.if_rows: result name ''%'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*', result_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN '{"node_type":"IF","query":'
        OPERATOR(pg_catalog.||) pg_catalog.to_json('{"condition_type":"result_has_rows","result_name":'
                                                   OPERATOR(pg_catalog.||) pg_catalog.to_json(result_name)::text OPERATOR(pg_catalog.||) '}')::text
        OPERATOR(pg_catalog.||) ',"left_node":' OPERATOR(pg_catalog.||) df._ensure(then_branch)
        OPERATOR(pg_catalog.||) ',"right_node":' OPERATOR(pg_catalog.||) df._ensure(else_branch) OPERATOR(pg_catalog.||) '}';
END;
$$;

-- JOIN: run both, wait for all (operator &).
CREATE FUNCTION df.join(a text, b text)
RETURNS text
LANGUAGE sql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT '{"node_type":"JOIN","left_node":' OPERATOR(pg_catalog.||) df._ensure(a)
        OPERATOR(pg_catalog.||) ',"right_node":' OPERATOR(pg_catalog.||) df._ensure(b) OPERATOR(pg_catalog.||) '}'
$$;

-- JOIN of three branches (the third in extra_nodes).
CREATE FUNCTION df.join3(a text, b text, c text)
RETURNS text
LANGUAGE sql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT '{"node_type":"JOIN","left_node":' OPERATOR(pg_catalog.||) df._ensure(a)
        OPERATOR(pg_catalog.||) ',"right_node":' OPERATOR(pg_catalog.||) df._ensure(b)
        OPERATOR(pg_catalog.||) ',"extra_nodes":[' OPERATOR(pg_catalog.||) df._ensure(c) OPERATOR(pg_catalog.||) ']}'
$$;

-- RACE: run both, first to finish wins (operator |).
CREATE FUNCTION df.race(a text, b text)
RETURNS text
LANGUAGE sql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT '{"node_type":"RACE","left_node":' OPERATOR(pg_catalog.||) df._ensure(a)
        OPERATOR(pg_catalog.||) ',"right_node":' OPERATOR(pg_catalog.||) df._ensure(b) OPERATOR(pg_catalog.||) '}'
$$;

-- The URL check of df.http and df.http_multipart: http or https only
-- (skipped for templated URLs, whose scheme may come from a substitution).
CREATE FUNCTION df._check_url(p_url text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_scheme text;
BEGIN
    IF p_url IS NULL THEN
        RAISE EXCEPTION 'url cannot be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF pg_catalog.strpos(p_url, '{') OPERATOR(pg_catalog.>) 0 THEN
        RETURN;
    END IF;
    v_scheme := pg_catalog.lower(pg_catalog.substring(pg_catalog.btrim(p_url), '^([A-Za-z][A-Za-z0-9+.-]*):'));
    IF v_scheme IS NULL THEN
        RAISE EXCEPTION 'Invalid URL: relative URL without a base' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_scheme OPERATOR(pg_catalog.<>) ALL (ARRAY['http', 'https']) THEN
        RAISE EXCEPTION 'Blocked: unsupported URL scheme ''%''. Only http and https are allowed.', v_scheme
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

-- HTTP leaf. The method is upper-cased; the default method is POST.
CREATE FUNCTION df.http(url text, method text DEFAULT 'POST', body text DEFAULT NULL,
                        headers jsonb DEFAULT NULL, timeout_seconds integer DEFAULT 30)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_method text := pg_catalog.upper(method);
    v_err text;
BEGIN
    PERFORM df._check_url(url);
    IF v_method IS NULL OR v_method OPERATOR(pg_catalog.<>) ALL (ARRAY['GET', 'POST', 'PUT', 'DELETE', 'PATCH']) THEN
        RAISE EXCEPTION 'Invalid HTTP method: %. Must be GET, POST, PUT, DELETE, or PATCH', coalesce(v_method, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF timeout_seconds IS NULL OR timeout_seconds OPERATOR(pg_catalog.<=) 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_err := df._headers_error(headers);
    IF v_err IS NOT NULL THEN
        RAISE EXCEPTION '%', v_err USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN df._leaf('HTTP', '{"url":' OPERATOR(pg_catalog.||) pg_catalog.to_json(url)::text
        OPERATOR(pg_catalog.||) ',"method":' OPERATOR(pg_catalog.||) pg_catalog.to_json(v_method)::text
        OPERATOR(pg_catalog.||) ',"body":' OPERATOR(pg_catalog.||) coalesce(pg_catalog.to_json(body)::text, 'null')
        OPERATOR(pg_catalog.||) ',"headers":' OPERATOR(pg_catalog.||) coalesce(df._compact_json(headers), 'null')
        OPERATOR(pg_catalog.||) ',"timeout_seconds":' OPERATOR(pg_catalog.||) timeout_seconds::text
        OPERATOR(pg_catalog.||) '}');
END;
$$;
REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer) FROM PUBLIC;

-- HTTP_MULTIPART leaf: multipart/form-data upload of parts
-- [{name, data_b64, filename?, content_type?}, ...].
CREATE FUNCTION df.http_multipart(url text, method text DEFAULT 'POST', parts jsonb DEFAULT NULL,
                                  headers jsonb DEFAULT NULL, timeout_seconds integer DEFAULT 30)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_method text := pg_catalog.upper(method);
    v_err text;
BEGIN
    PERFORM df._check_url(url);
    IF v_method IS NULL OR v_method OPERATOR(pg_catalog.<>) ALL (ARRAY['POST', 'PUT', 'PATCH']) THEN
        RAISE EXCEPTION 'Invalid HTTP method for multipart: %. Must be POST, PUT, or PATCH', coalesce(v_method, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_err := df._parts_error(parts);
    IF v_err IS NOT NULL THEN
        RAISE EXCEPTION '%', v_err USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF timeout_seconds IS NULL OR timeout_seconds OPERATOR(pg_catalog.<=) 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_err := df._headers_error(headers);
    IF v_err IS NOT NULL THEN
        RAISE EXCEPTION '%', v_err USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN df._leaf('HTTP_MULTIPART', '{"url":' OPERATOR(pg_catalog.||) pg_catalog.to_json(url)::text
        OPERATOR(pg_catalog.||) ',"method":' OPERATOR(pg_catalog.||) pg_catalog.to_json(v_method)::text
        OPERATOR(pg_catalog.||) ',"parts":' OPERATOR(pg_catalog.||) df._compact_json(parts)
        OPERATOR(pg_catalog.||) ',"headers":' OPERATOR(pg_catalog.||) coalesce(df._compact_json(headers), 'null')
        OPERATOR(pg_catalog.||) ',"timeout_seconds":' OPERATOR(pg_catalog.||) timeout_seconds::text
        OPERATOR(pg_catalog.||) '}');
END;
$$;
REVOKE EXECUTE ON FUNCTION df.http_multipart(text, text, jsonb, jsonb, integer) FROM PUBLIC;

-- SIGNAL leaf: wait for an external event (NULL timeout = forever).
CREATE FUNCTION df.wait_for_signal(name text, timeout_seconds integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF $1 IS NULL OR pg_catalog.btrim($1) OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'Signal name cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF timeout_seconds OPERATOR(pg_catalog.<=) 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN df._leaf('SIGNAL', '{"signal_name":' OPERATOR(pg_catalog.||) pg_catalog.to_json($1)::text
        OPERATOR(pg_catalog.||) ',"timeout_seconds":' OPERATOR(pg_catalog.||) coalesce(timeout_seconds::text, 'null')
        OPERATOR(pg_catalog.||) '}');
END;
$$;

----------------------------------------------------------------------------
-- durable-cluster extensions: STEP, RETRY, TIMEOUT
----------------------------------------------------------------------------

-- STEP leaf: a step run by a plugin kind with JSON args.
CREATE FUNCTION df.step(kind text, args jsonb DEFAULT '{}')
RETURNS text
LANGUAGE plpgsql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF kind OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'df.step: kind cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.jsonb_typeof(args) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'df.step: args must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN df._leaf('STEP', '{"kind":' OPERATOR(pg_catalog.||) pg_catalog.to_json(kind)::text
        OPERATOR(pg_catalog.||) ',"args":' OPERATOR(pg_catalog.||) df._compact_json(args) OPERATOR(pg_catalog.||) '}');
END;
$$;

-- RETRY: re-run fut up to max_attempts times with exponential backoff.
CREATE FUNCTION df.retry(fut text, max_attempts integer, backoff_seconds double precision DEFAULT 1,
                         max_backoff_seconds double precision DEFAULT 60)
RETURNS text
LANGUAGE plpgsql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF max_attempts OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'df.retry: max_attempts must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF backoff_seconds OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'df.retry: backoff_seconds must be non-negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF backoff_seconds OPERATOR(pg_catalog.=) ANY (ARRAY['Infinity', 'NaN']::double precision[]) THEN
        RAISE EXCEPTION 'df.retry: backoff_seconds must be a finite number' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_backoff_seconds OPERATOR(pg_catalog.<) backoff_seconds THEN
        RAISE EXCEPTION 'df.retry: max_backoff_seconds must be at least backoff_seconds' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_backoff_seconds OPERATOR(pg_catalog.=) ANY (ARRAY['Infinity', 'NaN']::double precision[]) THEN
        RAISE EXCEPTION 'df.retry: max_backoff_seconds must be a finite number' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN '{"node_type":"RETRY","query":'
        OPERATOR(pg_catalog.||) pg_catalog.to_json('{"max_attempts":' OPERATOR(pg_catalog.||) max_attempts::text
            OPERATOR(pg_catalog.||) ',"backoff_seconds":' OPERATOR(pg_catalog.||) df._json_num(backoff_seconds)
            OPERATOR(pg_catalog.||) ',"max_backoff_seconds":' OPERATOR(pg_catalog.||) df._json_num(max_backoff_seconds)
            OPERATOR(pg_catalog.||) '}')::text
        OPERATOR(pg_catalog.||) ',"left_node":' OPERATOR(pg_catalog.||) df._ensure(fut) OPERATOR(pg_catalog.||) '}';
END;
$$;

-- TIMEOUT: fail fut if it has not finished within seconds.
CREATE FUNCTION df.timeout(fut text, seconds double precision)
RETURNS text
LANGUAGE plpgsql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF seconds OPERATOR(pg_catalog.<=) 0 THEN
        RAISE EXCEPTION 'df.timeout: seconds must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF seconds OPERATOR(pg_catalog.=) ANY (ARRAY['Infinity', 'NaN']::double precision[]) THEN
        RAISE EXCEPTION 'df.timeout: seconds must be a finite number' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN '{"node_type":"TIMEOUT","query":'
        OPERATOR(pg_catalog.||) pg_catalog.to_json('{"seconds":' OPERATOR(pg_catalog.||) df._json_num(seconds) OPERATOR(pg_catalog.||) '}')::text
        OPERATOR(pg_catalog.||) ',"left_node":' OPERATOR(pg_catalog.||) df._ensure(fut) OPERATOR(pg_catalog.||) '}';
END;
$$;

----------------------------------------------------------------------------
-- Operators (spec §1.5). User-defined operators all share PostgreSQL's
-- "any other operator" precedence and associate to the left.
----------------------------------------------------------------------------

CREATE FUNCTION df.as_op(fut text, name text)
RETURNS text
LANGUAGE sql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT df.as($1, $2) $$;

-- cond ?> then: a partial if, completed by !>.
CREATE FUNCTION df.if_then_op(condition text, then_branch text)
RETURNS text
LANGUAGE sql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT '{"_partial_if":true,"condition":' OPERATOR(pg_catalog.||) df._ensure(condition)
        OPERATOR(pg_catalog.||) ',"then_branch":' OPERATOR(pg_catalog.||) df._ensure(then_branch) OPERATOR(pg_catalog.||) '}'
$$;

-- partial !> else: complete a ?> expression into an IF.
CREATE FUNCTION df.if_else_op(partial_if text, else_branch text)
RETURNS text
LANGUAGE plpgsql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_partial jsonb := df._try_object(partial_if);
BEGIN
    IF v_partial IS NULL
       OR (v_partial OPERATOR(pg_catalog.->) '_partial_if') IS DISTINCT FROM 'true'::jsonb
       OR pg_catalog.jsonb_typeof(v_partial OPERATOR(pg_catalog.->) 'condition') IS NULL
       OR pg_catalog.jsonb_typeof(v_partial OPERATOR(pg_catalog.->) 'then_branch') IS NULL THEN
        RAISE EXCEPTION 'Invalid if-then-else: left side of !> must be a ?> expression'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN df.if(CASE WHEN pg_catalog.jsonb_typeof(v_partial OPERATOR(pg_catalog.->) 'condition') OPERATOR(pg_catalog.=) 'string'
                      THEN v_partial OPERATOR(pg_catalog.->>) 'condition'
                      ELSE (v_partial OPERATOR(pg_catalog.->) 'condition')::text END,
                 CASE WHEN pg_catalog.jsonb_typeof(v_partial OPERATOR(pg_catalog.->) 'then_branch') OPERATOR(pg_catalog.=) 'string'
                      THEN v_partial OPERATOR(pg_catalog.->>) 'then_branch'
                      ELSE (v_partial OPERATOR(pg_catalog.->) 'then_branch')::text END,
                 else_branch);
END;
$$;

-- @> body: an infinite loop.
CREATE FUNCTION df.loop_prefix_op(body text)
RETURNS text
LANGUAGE sql
STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT df.loop(body) $$;

CREATE OPERATOR df.~> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.seq);
CREATE OPERATOR df.|=> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.as_op);
CREATE OPERATOR df.& (LEFTARG = text, RIGHTARG = text, FUNCTION = df.join);
CREATE OPERATOR df.| (LEFTARG = text, RIGHTARG = text, FUNCTION = df.race);
CREATE OPERATOR df.?> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.if_then_op);
CREATE OPERATOR df.!> (LEFTARG = text, RIGHTARG = text, FUNCTION = df.if_else_op);
CREATE OPERATOR df.@> (RIGHTARG = text, FUNCTION = df.loop_prefix_op);
