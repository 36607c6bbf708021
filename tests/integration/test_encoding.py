"""SQL result rows to result JSON (spec §1.15), against real PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from durable_cluster.encoding import UnsupportedColumnType, encode_rows, rfc3339
from durable_cluster.errors import DurableClusterError

if TYPE_CHECKING:
    Conn = psycopg.Connection[tuple[object, ...]]


def encode(conn: Conn, query: str) -> dict[str, Any]:
    """Run ``query`` the way the SQL step does (binary, extended protocol) and encode it."""
    cur = conn.cursor()
    cur.execute(query, binary=True)
    if cur.description is None:
        return encode_rows([], [])
    return encode_rows(cur.description, cur.fetchall())


def value(conn: Conn, expr: str) -> Any:
    """The encoded value of a one-column, one-row ``SELECT expr``."""
    result = encode(conn, f"SELECT {expr} AS v")
    assert result["row_count"] == 1
    return result["rows"][0]["v"]


def test_every_supported_type(conn: Conn) -> None:
    conn.execute("SET TIME ZONE 'UTC'")
    query = """
        SELECT true AS b, 1::int2 AS i2, 2::int4 AS i4, 9007199254740993::int8 AS i8,
               1.5::float4 AS f4, 2.25::float8 AS f8, 1.50::numeric AS n,
               'tëxt'::text AS t, 'vc'::varchar(5) AS vc, 'ab'::char(4) AS bp, 'nm'::name AS nm,
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
               '2024-01-02 03:04:05.123456+00'::timestamptz AS tz,
               '2024-01-02 03:04:05'::timestamp AS ts, '2024-02-29'::date AS d,
               '{"a": [1, 2.5, null, "x"]}'::json AS j, '{"b": {"c": true}}'::jsonb AS jb,
               pg_sleep(0) AS void
    """
    assert encode(conn, query) == {
        "rows": [
            {
                "b": True,
                "i2": 1,
                "i4": 2,
                "i8": 9007199254740993,
                "f4": 1.5,
                "f8": 2.25,
                "n": "1.50",
                "t": "tëxt",
                "vc": "vc",
                "bp": "ab  ",
                "nm": "nm",
                "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "tz": "2024-01-02T03:04:05.123456+00:00",
                "ts": "2024-01-02T03:04:05",
                "d": "2024-02-29",
                "j": {"a": [1, 2.5, None, "x"]},
                "jb": {"b": {"c": True}},
                "void": None,
            }
        ],
        "row_count": 1,
    }


def test_value_types_are_exact(conn: Conn) -> None:
    row = encode(conn, "SELECT 1::int8 AS i, false AS b, 1::float8 AS f")["rows"][0]
    assert type(row["i"]) is int
    assert type(row["b"]) is bool
    assert type(row["f"]) is float


@pytest.mark.parametrize(
    "type_name",
    [
        "bool", "int2", "int4", "int8", "float4", "float8", "numeric", "text", "varchar",
        "bpchar", "name", "uuid", "timestamptz", "timestamp", "date", "json", "jsonb",
    ],
)  # fmt: skip
def test_null_of_every_supported_type(conn: Conn, type_name: str) -> None:
    assert value(conn, f"NULL::{type_name}") is None


def test_untyped_null_is_text_null(conn: Conn) -> None:
    assert encode(conn, "SELECT NULL AS x") == {"rows": [{"x": None}], "row_count": 1}


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("1.50", "1.50"),
        ("0.000", "0.000"),
        ("0", "0"),
        ("100", "100"),
        ("-12345678901234567890.1", "-12345678901234567890.1"),
        ("0.0000001", "0.0000001"),
        ("-0.00000000000000000000000000000100", "-0.00000000000000000000000000000100"),
        ("1e20", "100000000000000000000"),
        ("1.23e5", "123000"),
        ("1e100", "1" + "0" * 100),
        ("1e-100", "0." + "0" * 99 + "1"),
        (
            "123456789012345678901234567890123456789012.123456789",
            "123456789012345678901234567890123456789012.123456789",
        ),
        ("'NaN'", "NaN"),
        ("'Infinity'", "Infinity"),
        ("'-Infinity'", "-Infinity"),
        ("round(2.5, 3)", "2.500"),
        ("1::numeric(10,4)", "1.0000"),
        ("-0.0", "0.0"),
    ],
)
def test_numeric_text_fidelity(conn: Conn, literal: str, expected: str) -> None:
    encoded = value(conn, f"({literal})::numeric")
    assert encoded == expected
    cur = conn.execute(f"SELECT ({literal})::numeric::text")
    row = cur.fetchone()
    assert row is not None
    assert encoded == row[0]


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("'NaN'::float8", None),
        ("'Infinity'::float8", None),
        ("'-Infinity'::float8", None),
        ("'NaN'::float4", None),
        ("'Infinity'::float4", None),
        ("'-Infinity'::float4", None),
        ("1.1::float4", 1.1),
        ("0.1::float4", 0.1),
        ("3.4028235e38::float4", 3.4028235e38),
        ("1e-45::float4", 1e-45),
        ("16777217::float4", 16777216.0),
        ("-2.5::float4", -2.5),
        ("0.1::float8", 0.1),
        ("1e300::float8", 1e300),
        ("'-0'::float8", -0.0),
        ("5e-324::float8", 5e-324),
    ],
)
def test_floats(conn: Conn, literal: str, expected: float | None) -> None:
    assert value(conn, literal) == expected


def test_float4_uses_the_shortest_float4_text(conn: Conn) -> None:
    encoded = value(conn, "1.1::float4")
    assert repr(encoded) == "1.1"
    row = conn.execute("SELECT 1.1::float4::text").fetchone()
    assert row is not None
    assert encoded == float(str(row[0]))


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("2024-01-02 03:04:05+00", "2024-01-02T03:04:05+00:00"),
        ("2024-01-02 03:04:05.1+00", "2024-01-02T03:04:05.100+00:00"),
        ("2024-01-02 03:04:05.123+00", "2024-01-02T03:04:05.123+00:00"),
        ("2024-01-02 03:04:05.000001+00", "2024-01-02T03:04:05.000001+00:00"),
        ("2024-01-02 03:04:05.12345+00", "2024-01-02T03:04:05.123450+00:00"),
        ("2024-01-02 03:04:05.123456+00", "2024-01-02T03:04:05.123456+00:00"),
        ("2024-01-02 05:34:05+05:30", "2024-01-02T00:04:05+00:00"),
        ("2024-01-01 23:00:00-02", "2024-01-02T01:00:00+00:00"),
        ("0005-03-01 00:00:00+00", "0005-03-01T00:00:00+00:00"),
        ("9999-12-30 23:59:59.999999+00", "9999-12-30T23:59:59.999999+00:00"),
    ],
)
@pytest.mark.parametrize("session_zone", ["UTC", "Asia/Kolkata", "America/St_Johns"])
def test_timestamptz_is_rfc3339_in_utc(conn: Conn, session_zone: str, literal: str, expected: str) -> None:
    conn.execute(f"SET TIME ZONE '{session_zone}'")
    assert value(conn, f"'{literal}'::timestamptz") == expected


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("2024-01-02 03:04:05", "2024-01-02T03:04:05"),
        ("2024-01-02 03:04:05.5", "2024-01-02T03:04:05.500"),
        ("2024-01-02 03:04:05.123", "2024-01-02T03:04:05.123"),
        ("2024-01-02 03:04:05.120001", "2024-01-02T03:04:05.120001"),
        ("2024-01-02 00:00:00.000010", "2024-01-02T00:00:00.000010"),
        ("0001-01-01 00:00:00", "0001-01-01T00:00:00"),
    ],
)
def test_timestamp_without_zone(conn: Conn, literal: str, expected: str) -> None:
    conn.execute("SET TIME ZONE 'Asia/Tokyo'")
    assert value(conn, f"'{literal}'::timestamp") == expected


@pytest.mark.parametrize(
    ("literal", "expected"),
    [("2024-02-29", "2024-02-29"), ("0042-01-09", "0042-01-09"), ("9999-12-31", "9999-12-31")],
)
def test_date(conn: Conn, literal: str, expected: str) -> None:
    assert value(conn, f"'{literal}'::date") == expected


@pytest.mark.parametrize("type_name", ["json", "jsonb"])
@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ("[1, [2, {}]]", [1, [2, {}]]),
        ('"str"', "str"),
        ("3.5", 3.5),
        ("-7", -7),
        ("true", True),
        ("null", None),
        ('{"é": "✓ \\u00e9"}', {"é": "✓ é"}),
    ],
)
def test_json_is_embedded(conn: Conn, type_name: str, literal: str, expected: Any) -> None:
    assert value(conn, f"'{literal}'::{type_name}") == expected


def test_text_types(conn: Conn) -> None:
    row = encode(
        conn,
        "SELECT 'it''s \"q\" ✓'::text AS t, 'x'::char(3) AS c, ''::varchar AS e, 'pg_class'::name AS n",
    )["rows"][0]
    assert row == {"t": 'it\'s "q" ✓', "c": "x  ", "e": "", "n": "pg_class"}


def test_uuid_is_lowercase(conn: Conn) -> None:
    assert value(conn, "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid") == (
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    )


def test_void(conn: Conn) -> None:
    assert encode(conn, "SELECT pg_sleep(0)") == {"rows": [{"pg_sleep": None}], "row_count": 1}


def test_column_order_is_preserved(conn: Conn) -> None:
    row = encode(conn, 'SELECT 3 AS c, 1 AS a, 2 AS b, 0 AS "Z z"')["rows"][0]
    assert list(row) == ["c", "a", "b", "Z z"]


def test_duplicate_column_names_later_wins_first_position(conn: Conn) -> None:
    row = encode(conn, "SELECT 1 AS a, 2 AS b, 3 AS a")["rows"][0]
    assert row == {"a": 3, "b": 2}
    assert list(row) == ["a", "b"]


def test_row_count_is_rows_returned(conn: Conn) -> None:
    result = encode(conn, "SELECT g AS n, g::text AS s FROM generate_series(1, 3) AS g")
    assert result == {
        "rows": [{"n": 1, "s": "1"}, {"n": 2, "s": "2"}, {"n": 3, "s": "3"}],
        "row_count": 3,
    }


def test_zero_rows(conn: Conn) -> None:
    assert encode(conn, "SELECT 1 AS n WHERE false") == {"rows": [], "row_count": 0}


def test_dml_without_returning(conn: Conn) -> None:
    assert encode(conn, "CREATE TABLE t (id int, note text)") == {"rows": [], "row_count": 0}
    assert encode(conn, "INSERT INTO t VALUES (1, 'a'), (2, NULL)") == {"rows": [], "row_count": 0}
    assert encode(conn, "UPDATE t SET note = 'b' RETURNING id, note") == {
        "rows": [{"id": 1, "note": "b"}, {"id": 2, "note": "b"}],
        "row_count": 2,
    }


def test_zero_column_rows(conn: Conn) -> None:
    assert encode(conn, "SELECT FROM generate_series(1, 2)") == {"rows": [{}, {}], "row_count": 2}


def test_domain_is_encoded_as_its_base_type(conn: Conn) -> None:
    conn.execute("CREATE DOMAIN posint AS int4 CHECK (VALUE > 0)")
    conn.execute("CREATE DOMAIN doc AS jsonb")
    conn.execute("CREATE TABLE d (p posint, j doc)")
    conn.execute("""INSERT INTO d VALUES (5, '{"k": 1}')""")
    assert encode(conn, "SELECT p, j FROM d") == {
        "rows": [{"p": 5, "j": {"k": 1}}],
        "row_count": 1,
    }


def test_multiple_statements_are_rejected_in_binary_mode(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
        encode(conn, "SELECT 1; SELECT 2")


# -- unsupported types ----------------------------------------------------------------


def unsupported(typname: str, column: str = "v") -> str:
    return f'Unsupported column type {typname} for column "{column}" — cast it to text in the query'


@pytest.mark.parametrize(
    ("expr", "typname"),
    [
        ("'\\x00ff'::bytea", "bytea"),
        ("ARRAY[1, 2]", "_int4"),
        ("ARRAY['a']", "_text"),
        ("'{}'::jsonb[]", "_jsonb"),
        ("'1 day'::interval", "interval"),
        ("1::oid", "oid"),
        ("'x'::\"char\"", "char"),
        ("1::money", "money"),
        ("'12:00'::time", "time"),
        ("'12:00+01'::timetz", "timetz"),
        ("'1.2.3.4'::inet", "inet"),
        ("'10.0.0.0/8'::cidr", "cidr"),
        ("'08:00:2b:01:02:03'::macaddr", "macaddr"),
        ("'pg_class'::regclass", "regclass"),
        ("ROW(1, 2)", "record"),
        ("'[1,2)'::int4range", "int4range"),
        ("'1'::bit", "bit"),
        ("'a b'::tsvector", "tsvector"),
        ("'(1,2)'::point", "point"),
        ("'0/0'::pg_lsn", "pg_lsn"),
        ("'$.a'::jsonpath", "jsonpath"),
    ],
)
def test_unsupported_types(conn: Conn, expr: str, typname: str) -> None:
    with pytest.raises(UnsupportedColumnType) as info:
        value(conn, expr)
    assert str(info.value) == unsupported(typname)


def test_unsupported_error_is_a_durable_cluster_error() -> None:
    assert issubclass(UnsupportedColumnType, DurableClusterError)


def test_unsupported_even_when_null_or_no_rows(conn: Conn) -> None:
    with pytest.raises(UnsupportedColumnType) as info:
        encode(conn, "SELECT 1 AS ok, NULL::bytea AS blob")
    assert str(info.value) == unsupported("bytea", "blob")
    with pytest.raises(UnsupportedColumnType) as info:
        encode(conn, "SELECT '\\x00'::bytea AS blob WHERE false")
    assert str(info.value) == unsupported("bytea", "blob")


def test_unsupported_user_type_prints_the_oid(conn: Conn) -> None:
    conn.execute("CREATE TYPE mood AS ENUM ('happy')")
    row = conn.execute("SELECT 'mood'::regtype::oid::int8").fetchone()
    assert row is not None
    with pytest.raises(UnsupportedColumnType) as info:
        encode(conn, "SELECT 'happy'::mood AS feeling")
    assert str(info.value) == unsupported(str(row[0]), "feeling")
    assert re.fullmatch(r"Unsupported column type \d+ for column .*", str(info.value))


def test_domain_over_unsupported_type_names_the_base_type(conn: Conn) -> None:
    conn.execute("CREATE DOMAIN blob AS bytea")
    with pytest.raises(UnsupportedColumnType) as info:
        encode(conn, "SELECT '\\x00'::blob AS b")
    assert str(info.value) == unsupported("bytea", "b")


def test_cast_to_text_fixes_it(conn: Conn) -> None:
    assert value(conn, "'1 day'::interval::text") == "1 day"


# -- rfc3339 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02T03:04:05+00:00"),
        (datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC), "2024-01-02T03:04:05.123+00:00"),
        (datetime(2024, 1, 2, 3, 4, 5, 123400, tzinfo=UTC), "2024-01-02T03:04:05.123400+00:00"),
        (datetime(2024, 1, 2, 3, 4, 5, 1000, tzinfo=UTC), "2024-01-02T03:04:05.001+00:00"),
        (datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=UTC), "2024-01-02T03:04:05.999999+00:00"),
        (
            datetime(2024, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=2))),
            "2024-01-01T23:00:00+00:00",
        ),
        (
            datetime(2024, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
            "2024-01-02T04:30:00+00:00",
        ),
        (datetime(999, 1, 1, tzinfo=UTC), "0999-01-01T00:00:00+00:00"),
    ],
)
def test_rfc3339(moment: datetime, expected: str) -> None:
    assert rfc3339(moment) == expected


def test_rfc3339_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="aware"):
        rfc3339(datetime(2024, 1, 2))
