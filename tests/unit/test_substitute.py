"""Variable and result substitution (spec §2.9): every rule and error text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from durable_cluster.errors import DurableClusterError
from durable_cluster.substitute import (
    MAX_VALUES_ROWS,
    SubstitutionError,
    substitute,
    substitute_whole,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from durable_cluster.substitute import Mode

INSTANCE = "0a1b2c3d"


def rows(*items: dict[str, Any]) -> dict[str, Any]:
    """A SQL step result."""
    return {"rows": list(items), "row_count": len(items)}


def one(value: Any, column: str = "v") -> dict[str, Any]:
    """A one-row, one-column SQL step result."""
    return rows({column: value})


EMPTY = rows()

HTTP = {
    "status": 200,
    "body": "it's ok",
    "encoding": "text",
    "headers": {"content-type": "text/plain"},
    "ok": True,
    "duration_ms": 12,
}


def sub(
    text: str,
    results: Mapping[str, Any] | None = None,
    *,
    mode: Mode = "sql",
    variables: Mapping[str, str] | None = None,
    label: str | None = "nightly",
) -> str:
    return substitute(
        text,
        variables=variables or {},
        instance_id=INSTANCE,
        label=label,
        results=results or {},
        mode=mode,
    )


def whole(
    text: str,
    results: Mapping[str, Any] | None = None,
    *,
    variables: Mapping[str, str] | None = None,
    field: str = "part 'file' data_b64",
) -> str:
    return substitute_whole(
        text,
        variables=variables or {},
        instance_id=INSTANCE,
        label=None,
        results=results or {},
        mode="raw",
        field=field,
    )


def test_error_is_a_durable_cluster_error() -> None:
    assert issubclass(SubstitutionError, DurableClusterError)


# -- pass 1: braced variables ----------------------------------------------------


@pytest.mark.parametrize("mode", ["sql", "raw"])
def test_variable_inserted_raw_in_both_modes(mode: Mode) -> None:
    variables = {"tbl": "public.orders", "cond": "status = 'open'"}
    text = "SELECT * FROM {tbl} WHERE {cond}"
    assert sub(text, mode=mode, variables=variables) == ("SELECT * FROM public.orders WHERE status = 'open'")


def test_system_variables() -> None:
    assert sub("{sys_instance_id}/{sys_label}") == "0a1b2c3d/nightly"


def test_sys_label_is_empty_without_a_label() -> None:
    assert sub("[{sys_label}]", label=None) == "[]"


def test_system_names_win_over_variables_of_the_same_name() -> None:
    variables = {"sys_instance_id": "mine", "sys_label": "mine"}
    assert sub("{sys_instance_id} {sys_label}", variables=variables) == "0a1b2c3d nightly"


@pytest.mark.parametrize(
    "text",
    [
        "{unknown}",
        '{"a":1}',
        "{1abc}",
        "{ v }",
        "{}",
        "{v",
        "v}",
        "{v-1}",
        "{vé}",
        "{{}}",
    ],
)
def test_unknown_or_non_identifier_braces_are_left_untouched(text: str) -> None:
    assert sub(text, variables={"v": "X"}) == text


def test_variable_values_are_never_rescanned_for_braces() -> None:
    variables = {"a": "{b}", "b": "B"}
    assert sub("{a} {b}", variables=variables) == "{b} B"


def test_variable_value_referencing_itself_is_not_expanded_again() -> None:
    assert sub("{a}", variables={"a": "{a}{a}"}) == "{a}{a}"


def test_double_braces_keep_the_outer_pair() -> None:
    assert sub("{{v}}", variables={"v": "X"}) == "{X}"


def test_adjacent_variables() -> None:
    assert sub("{a}{b}{a}", variables={"a": "1", "b": "2"}) == "121"


def test_braces_inside_string_literals_are_substituted() -> None:
    # The pass does not parse SQL: a {name} inside a literal is still a variable.
    assert sub("SELECT '{v}'", variables={"v": "x"}) == "SELECT 'x'"


def test_json_braces_in_a_literal_survive_next_to_a_variable() -> None:
    text = """SELECT '{"a": {v}, "b": {"c": [1, 2]}}'::jsonb"""
    assert sub(text, variables={"v": "5"}) == ("""SELECT '{"a": 5, "b": {"c": [1, 2]}}'::jsonb""")


def test_variable_values_are_not_quoted() -> None:
    assert sub("SELECT {v}", variables={"v": "'it''s'"}) == "SELECT 'it''s'"


def test_unicode_variable_value() -> None:
    assert sub("SELECT '{v}'", variables={"v": "héllo ✓ 日本"}) == "SELECT 'héllo ✓ 日本'"


def test_variable_value_with_a_result_reference_goes_through_pass_two() -> None:
    # The passes run one after the other over the whole text, as in pg_durable.
    assert sub("SELECT {v}", {"r": one(7)}, variables={"v": "$r + 1"}) == "SELECT 7 + 1"


def test_result_values_are_not_scanned_for_variables() -> None:
    assert sub("SELECT $r", {"r": one("{v}")}, variables={"v": "X"}) == "SELECT '{v}'"


def test_text_without_markers_is_returned_as_is() -> None:
    text = "SELECT 1 -- nothing here"
    assert sub(text, {"r": one(1)}, variables={"v": "x"}) == text


# -- pass 2: reference matching ------------------------------------------------------


def test_longest_name_and_word_boundary() -> None:
    results = {"ab": one(1), "abc": one(2), "ab_c": one(3)}
    assert sub("$ab $abc $ab_c $abcd $ab_ $ab1", results) == "1 2 3 $abcd $ab_ $ab1"


def test_word_boundary_is_unicode_aware() -> None:
    assert sub("$abé $ab", {"ab": one(1)}) == "$abé 1"


@pytest.mark.parametrize(
    "text",
    ["$x", "$1", "$$", "$", "a $ b", "$1abc", "price$", "$_"],
)
def test_unknown_references_are_left_alone(text: str) -> None:
    assert sub(text, {"r": one(1)}) == text


def test_no_results_leaves_everything() -> None:
    assert sub("SELECT $r, $r.*") == "SELECT $r, $r.*"


def test_dollar_quoted_body() -> None:
    text = "DO $$ BEGIN PERFORM $r; RAISE NOTICE '$$'; END $$"
    assert sub(text, {"r": one(5)}) == "DO $$ BEGIN PERFORM 5; RAISE NOTICE '$$'; END $$"


def test_dollar_quote_with_unknown_tag_is_left_alone() -> None:
    text = "SELECT $fn$ body $r $fn$"
    assert sub(text, {"r": one("x")}) == "SELECT $fn$ body 'x' $fn$"


def test_dollar_quote_tag_spelled_like_a_result_is_replaced() -> None:
    # Documented: the scan does not parse SQL, so the tag counts as a reference.
    assert sub("SELECT $r$a$r$", {"r": one(1)}) == "SELECT 1$a1$"


def test_adjacent_references() -> None:
    results = {"a": one(1), "b": one("x")}
    assert sub("$a$b", results) == "1'x'"
    assert sub("$a||$b", results) == "1||'x'"
    assert sub("$a?$b?", results) == "1'x'"


def test_adjacent_field_references() -> None:
    results = {"a": rows({"x": 1}), "b": rows({"y": 2})}
    assert sub("$a.x$b.y", results) == "12"


def test_reference_prefix_of_another_in_the_same_text() -> None:
    results = {"r": one(1), "rr": one(2), "r_r": one(3)}
    assert sub("$r,$rr,$r_r,$r.v,$rr.v", results) == "1,2,3,1,2"


def test_reference_inside_a_string_literal_is_substituted() -> None:
    # Not SQL-aware: the value is quoted even inside a literal.
    assert sub("SELECT 'id=$r'", {"r": one(42)}) == "SELECT 'id=42'"
    assert sub("SELECT 'id=$r'", {"r": one("x")}) == "SELECT 'id='x''"


def test_dot_not_followed_by_a_column_is_a_bare_reference() -> None:
    results = {"r": one(7)}
    assert sub("$r. $r.5 $r.", results) == "7. 7.5 7."


def test_question_mark_binds_to_the_reference_only() -> None:
    results = {"r": rows({"a": 1, "b": 2})}
    assert sub("$r?.b", results) == "1.b"
    assert sub("$r.*?", {"r": rows({"a": 1})}) == '(VALUES (1)) AS "r"("a")?'


def test_substituted_values_are_never_rescanned() -> None:
    results = {"s": one("$s and $t"), "t": one(1)}
    assert sub("SELECT $s", results) == "SELECT '$s and $t'"
    assert sub("$s", results, mode="raw") == "$s and $t"


def test_value_with_dollar_quote_is_literal_text() -> None:
    assert sub("SELECT $s", {"s": one("$$ DROP TABLE x $$")}) == "SELECT '$$ DROP TABLE x $$'"


# -- SQL-context formatting ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, "42"),
        (0, "0"),
        (-5, "(-5)"),
        (2**70, "1180591620717411303424"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (2.0, "2.0"),
        (-0.25, "(-0.25)"),
        (1e16, "10000000000000000"),
        (1.5e-7, "0.00000015"),
        (1e-05, "0.00001"),
        (-1e20, "(-100000000000000000000)"),
        (True, "true"),
        (False, "false"),
        ("hello", "'hello'"),
        ("", "''"),
        ("O'Brien", "'O''Brien'"),
        ("''", "''''''"),
        ("back\\slash", "'back\\slash'"),
        ("héllo ✓ 日本", "'héllo ✓ 日本'"),
        ("line\nbreak", "'line\nbreak'"),
        ('say "hi"', "'say \"hi\"'"),
        ("{v} and $x", "'{v} and $x'"),
        ({"a": 1, "b": [True, None]}, """'{"a":1,"b":[true,null]}'"""),
        ({"q": "it's"}, """'{"q":"it''s"}'"""),
        ([1, "two", 3.5], """'[1,"two",3.5]'"""),
        ([], "'[]'"),
        ({"é": "✓"}, """'{"é":"✓"}'"""),
    ],
)
def test_sql_formatting(value: Any, expected: str) -> None:
    assert sub("SELECT $r", {"r": one(value)}) == f"SELECT {expected}"


def test_negative_number_parentheses_keep_sql_meaning() -> None:
    results = {"r": one(-5)}
    assert sub("SELECT 10-$r, $r::text", results) == "SELECT 10-(-5), (-5)::text"


# -- raw-context formatting --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, "42"),
        (-5, "-5"),
        (1.5, "1.5"),
        (1e16, "10000000000000000"),
        (True, "true"),
        (False, "false"),
        ("O'Brien", "O'Brien"),
        ("héllo ✓", "héllo ✓"),
        ({"a": "it's", "b": [1, None]}, '{"a":"it\'s","b":[1,null]}'),
        ([1, 2], "[1,2]"),
        ({"é": 1}, '{"é":1}'),
    ],
)
def test_raw_formatting(value: Any, expected: str) -> None:
    assert sub("x=$r", {"r": one(value)}, mode="raw") == f"x={expected}"


def test_raw_null_with_optional_reference_is_NULL() -> None:
    assert sub("x=$r?", {"r": one(None)}, mode="raw") == "x=NULL"
    assert sub("x=$r?", {"r": EMPTY}, mode="raw") == "x=NULL"


# -- $name and $name? -------------------------------------------------------------------


def test_first_column_of_first_row() -> None:
    result = rows({"a": 1, "b": 2}, {"a": 3, "b": 4})
    assert sub("SELECT $r", {"r": result}) == "SELECT 1"


@pytest.mark.parametrize("mode", ["sql", "raw"])
def test_strict_reference_without_rows(mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as info:
        sub("SELECT $total", {"total": EMPTY}, mode=mode)
    assert str(info.value) == "$total has no rows — query returned zero results"


@pytest.mark.parametrize("mode", ["sql", "raw"])
def test_strict_reference_to_null(mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as info:
        sub("SELECT $total", {"total": rows({"n": None, "m": 1})}, mode=mode)
    assert str(info.value) == "$total is NULL — first column of first row is NULL"


def test_strict_reference_to_a_row_without_columns() -> None:
    with pytest.raises(SubstitutionError) as info:
        sub("SELECT $r", {"r": rows({})})
    assert str(info.value) == "$r is NULL — first column of first row is NULL"


def test_optional_reference() -> None:
    assert sub("SELECT $r?", {"r": EMPTY}) == "SELECT NULL"
    assert sub("SELECT $r?", {"r": one(None)}) == "SELECT NULL"
    assert sub("SELECT $r?", {"r": one("x")}) == "SELECT 'x'"


def test_first_error_stops_the_substitution() -> None:
    with pytest.raises(SubstitutionError, match=r"^\$b has no rows"):
        sub("SELECT $a, $b, $c", {"a": one(1), "b": EMPTY, "c": EMPTY})


# -- $name.col and $name.col? ------------------------------------------------------------


def test_field_of_first_row() -> None:
    result = rows({"id": 1, "col_2": "x", "c2x": True, "_u": None}, {"id": 9, "col_2": "y"})
    results = {"r": result}
    assert sub("$r.id $r.col_2 $r.c2x $r._u?", results) == "1 'x' true NULL"


def test_unicode_column_name() -> None:
    assert sub("SELECT $r.prénom", {"r": rows({"prénom": "Zoé"})}) == "SELECT 'Zoé'"


def test_field_reference_stops_at_the_column_name() -> None:
    results = {"r": rows({"a": 1})}
    assert sub("$r.a+$r.a::int", results) == "1+1::int"


@pytest.mark.parametrize("mode", ["sql", "raw"])
def test_strict_field_null(mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as info:
        sub("SELECT $r.email", {"r": rows({"id": 1, "email": None})}, mode=mode)
    assert str(info.value) == "$r.email is NULL"


@pytest.mark.parametrize("mode", ["sql", "raw"])
def test_strict_field_without_rows(mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as info:
        sub("SELECT $r.email", {"r": EMPTY}, mode=mode)
    assert str(info.value) == "$r has no rows — query returned zero results"


def test_optional_field() -> None:
    assert sub("SELECT $r.email?", {"r": EMPTY}) == "SELECT NULL"
    assert sub("SELECT $r.email?", {"r": rows({"email": None})}) == "SELECT NULL"
    assert sub("SELECT $r.email?", {"r": rows({"email": "a@b"})}) == "SELECT 'a@b'"


def test_missing_field_in_sql_context_is_left_literally() -> None:
    results = {"r": rows({"a": 1, "b": 2})}
    assert sub("SELECT $r.nope, $r.a", results) == "SELECT $r.nope, 1"


def test_missing_field_in_raw_context_lists_the_available_fields() -> None:
    with pytest.raises(SubstitutionError) as info:
        sub("/items/$r.nope", {"r": rows({"a": 1, "b": 2})}, mode="raw")
    assert str(info.value) == "$r.nope: result has no field 'nope' (available: a, b)"


@pytest.mark.parametrize("mode", ["sql", "raw"])
def test_optional_missing_field_is_left_literally(mode: Mode) -> None:
    assert sub("x $r.nope? y", {"r": rows({"a": 1})}, mode=mode) == "x $r.nope? y"


# -- results that are not row sets ---------------------------------------------------------


def test_http_envelope_fields_sql() -> None:
    results = {"resp": HTTP}
    text = "SELECT $resp.status, $resp.body, $resp.ok, $resp.headers"
    assert sub(text, results) == ("""SELECT 200, 'it''s ok', true, '{"content-type":"text/plain"}'""")


def test_http_envelope_fields_raw() -> None:
    text = "status=$resp.status ok=$resp.ok body=$resp.body"
    assert sub(text, {"resp": HTTP}, mode="raw") == "status=200 ok=true body=it's ok"


def test_http_envelope_missing_field_raw_lists_keys_in_order() -> None:
    with pytest.raises(SubstitutionError) as info:
        sub("$resp.nope", {"resp": HTTP}, mode="raw")
    assert str(info.value) == (
        "$resp.nope: result has no field 'nope' (available: status, body, encoding, headers, ok, duration_ms)"
    )


def test_http_envelope_whole() -> None:
    expected_json = (
        '{"status":200,"body":"it\'s ok","encoding":"text",'
        '"headers":{"content-type":"text/plain"},"ok":true,"duration_ms":12}'
    )
    assert sub("$resp", {"resp": HTTP}, mode="raw") == expected_json
    assert sub("SELECT $resp", {"resp": HTTP}) == "SELECT '" + expected_json.replace("'", "''") + "'"


def test_join_array_whole_and_field() -> None:
    results = {"j": [rows({"a": 1}), {"slept": True, "seconds": 1}]}
    joined = '[{"rows":[{"a":1}],"row_count":1},{"slept":true,"seconds":1}]'
    assert sub("SELECT $j", results) == f"SELECT '{joined}'"
    assert sub("$j", results, mode="raw") == joined
    assert sub("SELECT $j.a", results) == "SELECT $j.a"
    with pytest.raises(SubstitutionError) as info:
        sub("$j.a", results, mode="raw")
    assert str(info.value) == "$j.a: result has no field 'a' (available: none)"


def test_signal_and_sleep_fields() -> None:
    results = {
        "sig": {"signal_name": "go", "timed_out": False, "data": {"n": 3}},
        "nap": {"slept": True, "seconds": 5},
    }
    text = "SELECT $sig.timed_out, $sig.data, $nap.seconds"
    assert sub(text, results) == """SELECT false, '{"n":3}', 5"""


def test_scalar_results() -> None:
    results = {"s": "done", "n": 3, "b": False, "o": {"a": 1}}
    assert sub("SELECT $s, $n, $b, $o", results) == """SELECT 'done', 3, false, '{"a":1}'"""
    assert sub("$s $n $b $o", results, mode="raw") == """done 3 false {"a":1}"""


def test_null_result() -> None:
    assert sub("SELECT $x?", {"x": None}) == "SELECT NULL"
    with pytest.raises(SubstitutionError) as info:
        sub("SELECT $x", {"x": None})
    assert str(info.value) == "$x is NULL — result is null"


def test_object_field_that_is_null() -> None:
    with pytest.raises(SubstitutionError) as info:
        sub("SELECT $sig.data", {"sig": {"signal_name": "go", "timed_out": True, "data": None}})
    assert str(info.value) == "$sig.data is NULL"


# -- $name.* ------------------------------------------------------------------------------------


def test_row_set_expansion() -> None:
    result = rows(
        {"id": 1, "name": "a", "ok": True, "score": 1.5, "meta": {"k": "it's"}, "gone": None},
        {"id": -2, "name": "O'Brien", "ok": False, "score": -0.5, "meta": [1], "gone": None},
    )
    assert sub("SELECT * FROM $r.*", {"r": result}) == (
        "SELECT * FROM (VALUES "
        """(1, 'a'::text, true, 1.5, '{"k":"it''s"}', NULL), """
        """(-2, 'O''Brien'::text, false, -0.5, '[1]', NULL)) """
        'AS "r"("id","name","ok","score","meta","gone")'
    )


def test_row_set_expansion_quotes_column_names() -> None:
    result = rows({'we"ird': 1, "Mixed Case": 2, "?column?": 3})
    assert sub("$r.*", {"r": result}) == ('(VALUES (1, 2, 3)) AS "r"("we""ird","Mixed Case","?column?")')


def test_row_set_expansion_missing_keys_are_null() -> None:
    result = rows({"a": 1, "b": 2}, {"a": 3})
    assert sub("$r.*", {"r": result}) == '(VALUES (1, 2), (3, NULL)) AS "r"("a","b")'


def test_row_set_expansion_zero_rows() -> None:
    assert sub("SELECT * FROM $r.*", {"r": EMPTY}) == ('SELECT * FROM (SELECT NULL WHERE false) AS "r"')


def test_row_set_expansion_at_the_cap() -> None:
    result = rows(*({"n": i} for i in range(MAX_VALUES_ROWS)))
    text = sub("$r.*", {"r": result})
    assert text.startswith("(VALUES (0), (1), ")
    assert text.endswith(f'({MAX_VALUES_ROWS - 1})) AS "r"("n")')


def test_row_set_expansion_over_the_cap() -> None:
    assert MAX_VALUES_ROWS == 10_000
    result = rows(*({"n": i} for i in range(MAX_VALUES_ROWS + 1)))
    with pytest.raises(SubstitutionError) as info:
        sub("$big.*", {"big": result})
    assert str(info.value) == (
        "$big.* — result has 10001 rows, exceeding the maximum of 10000 rows for a VALUES "
        "expansion; add a LIMIT or store the rows in a table instead"
    )


def test_row_set_expansion_raw_is_the_json_array_of_rows() -> None:
    result = rows({"a": 1, "b": "it's"}, {"a": 2, "b": None})
    assert sub("$r.*", {"r": result}, mode="raw") == '[{"a":1,"b":"it\'s"},{"a":2,"b":null}]'
    assert sub("$r.*", {"r": EMPTY}, mode="raw") == "[]"


def test_raw_expansion_has_no_row_cap() -> None:
    result = rows(*({"n": 1} for _ in range(MAX_VALUES_ROWS + 1)))
    assert sub("$r.*", {"r": result}, mode="raw").count('{"n":1}') == MAX_VALUES_ROWS + 1


@pytest.mark.parametrize("mode", ["sql", "raw"])
@pytest.mark.parametrize("value", [HTTP, [1, 2], "text", None, {"rows": [1, 2]}])
def test_row_set_expansion_requires_a_row_set(value: Any, mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as info:
        sub("$r.*", {"r": value}, mode=mode)
    assert str(info.value) == "$r.* — result is not a SQL row set"


def test_row_set_expansion_of_rows_without_columns() -> None:
    with pytest.raises(SubstitutionError) as info:
        sub("$r.*", {"r": rows({}, {})})
    assert str(info.value) == "$r.* — result rows have no columns"


def test_row_set_expansion_value_containing_references_is_not_rescanned() -> None:
    result = rows({"t": "$r.* {v}"})
    assert sub("$r.*", {"r": result}, variables={"v": "X"}) == ("""(VALUES ('$r.* {v}'::text)) AS "r"("t")""")


# -- both passes together ------------------------------------------------------------------------


def test_full_query() -> None:
    results = {
        "cust": rows({"id": 7, "name": "Zoé O'Hara"}),
        "items": rows({"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}),
    }
    text = (
        "INSERT INTO {schema}.orders (instance, customer, note) "
        "SELECT '{sys_instance_id}', $cust.id, $cust.name || ' ({sys_label})' "
        "FROM $items.* WHERE qty > $missing"
    )
    assert sub(text, results, variables={"schema": "shop"}) == (
        "INSERT INTO shop.orders (instance, customer, note) "
        "SELECT '0a1b2c3d', 7, 'Zoé O''Hara' || ' (nightly)' "
        """FROM (VALUES ('A-1'::text, 2), ('B-2'::text, 1)) AS "items"("sku","qty") """
        "WHERE qty > $missing"
    )


def test_raw_url_and_body() -> None:
    results = {"user": rows({"id": 42, "name": "Zoé"}), "cfg": one({"retries": 3})}
    url = sub("https://api.example.com/{ver}/users/$user.id", results, mode="raw", variables={"ver": "v2"})
    assert url == "https://api.example.com/v2/users/42"
    body = sub('{"name": "$user.name", "cfg": $cfg}', results, mode="raw")
    assert body == '{"name": "Zoé", "cfg": {"retries":3}}'


# -- substitute_whole (multipart data_b64) -------------------------------------------------------


def test_whole_literal_is_unchanged() -> None:
    assert whole("aGVsbG8gd29ybGQ=", {"x": one("eA==")}) == "aGVsbG8gd29ybGQ="


def test_whole_literal_with_unknown_markers_is_unchanged() -> None:
    assert whole("aGVs$nope{nope}", {"x": one("eA==")}) == "aGVs$nope{nope}"


def test_whole_result_references() -> None:
    results = {"x": one("aGk="), "f": rows({"data": "Ynll", "other": None}), "e": EMPTY}
    assert whole("$x", results) == "aGk="
    assert whole("$x?", results) == "aGk="
    assert whole("$e?", results) == "NULL"
    assert whole("$f.data", results) == "Ynll"
    assert whole("$f.other?", results) == "NULL"


def test_whole_missing_optional_field_stays_literal() -> None:
    assert whole("$f.nope?", {"f": rows({"data": "x"})}) == "$f.nope?"


def test_whole_variables() -> None:
    assert whole("{payload}", variables={"payload": "cGF5"}) == "cGF5"
    assert whole("{sys_instance_id}") == INSTANCE


def test_whole_variable_value_is_not_rescanned() -> None:
    assert whole("{v}", {"x": one(1)}, variables={"v": "$x"}) == "$x"


def test_whole_reference_may_be_surrounded_by_whitespace() -> None:
    assert whole("  $x\n", {"x": one("aGk=")}) == "aGk="
    assert whole("\t{v} ", variables={"v": "cGF5"}) == "cGF5"


MIXED = (
    "part 'file' data_b64 mixes a variable reference with other text — it must be either "
    "a literal or exactly one whole reference ($name, $name?, $name.col, $name.col? or {var})"
)


@pytest.mark.parametrize(
    "text",
    [
        "prefix$x",
        "$x suffix",
        "$x$y",
        "$x$x",
        "{v}{v}",
        "{v}$x",
        "aGk={v}",
        "$x {unknown}",
        "$nope$x",
        "$x.data,",
    ],
)
def test_whole_mixing_is_an_error(text: str) -> None:
    results = {"x": rows({"data": "aGk="}), "y": one("eQ==")}
    with pytest.raises(SubstitutionError) as info:
        whole(text, results, variables={"v": "dg=="})
    assert str(info.value) == MIXED


def test_whole_uses_the_field_name_in_the_message() -> None:
    with pytest.raises(SubstitutionError, match=r"^data_b64 of part 'a' mixes a variable"):
        whole("x$x", {"x": one("y")}, field="data_b64 of part 'a'")


def test_whole_reference_errors_propagate() -> None:
    with pytest.raises(SubstitutionError) as info:
        whole("$x", {"x": EMPTY})
    assert str(info.value) == "$x has no rows — query returned zero results"
    with pytest.raises(SubstitutionError) as info:
        whole("$x.nope", {"x": rows({"a": 1})})
    assert str(info.value) == "$x.nope: result has no field 'nope' (available: a)"
