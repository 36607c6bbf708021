"""SQL result rows to the spec's result JSON (spec §1.15).

The rows come from a psycopg 3 cursor executed with ``binary=True`` and the
default loaders, and are mapped by the column's type OID:

=====================================  ==========================================
PostgreSQL type                        JSON value
=====================================  ==========================================
bool                                   boolean
int2, int4, int8                       number
float4, float8                         number; NaN and ±Infinity become null.
                                       A float4 is written with the fewest digits
                                       that read back as the same float4 (``1.1``,
                                       as PostgreSQL prints it, not the widened
                                       ``1.100000023841858``)
numeric                                string, exactly as PostgreSQL prints it
                                       (``1.50``, ``0.000``, ``0.0000001``,
                                       ``NaN``, ``Infinity``): the binary loader's
                                       Decimal keeps every digit and the scale,
                                       and ``format(d, "f")`` spells it without
                                       an exponent (``str()`` would give ``1E-7``)
text, varchar, bpchar, name            string (bpchar keeps its padding)
uuid                                   string, lower-case and hyphenated
timestamptz                            :func:`rfc3339` in UTC
timestamp                              ``YYYY-MM-DDTHH:MM:SS[.fff|.ffffff]``
date                                   ``YYYY-MM-DD``
json, jsonb                            the embedded value
void                                   null
=====================================  ==========================================

SQL NULL is null. Any other type raises :class:`UnsupportedColumnType`,
checked from the column descriptions before any row, so a query fails the
same way whether or not it returned rows.

Domains: PostgreSQL describes a domain-typed result column by its base type
(``SendRowDescriptionCols`` sends ``getBaseTypeAndTypmod``), so a domain over a
supported type is encoded as that type and a domain over an unsupported one
fails under the base type's name. Enums and other user-defined types have OIDs
outside the static name table and are reported by number.

Values psycopg cannot load at all fail in the fetch, before this module sees
them: ``infinity`` timestamps and dates, years past 9999 or before 1, and a
timestamptz whose local time in the session's TimeZone falls outside that
range (psycopg builds the datetime in the session zone before it is turned
to UTC here).

Column order is kept (dicts keep insertion order). When two columns share a
name, the later value wins and the key keeps the first column's position.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .errors import DurableClusterError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import psycopg

__all__ = ["UnsupportedColumnType", "encode_rows", "rfc3339"]


class UnsupportedColumnType(DurableClusterError):
    """A result column has a type the SQL step cannot encode as JSON."""


# Built-in type OIDs (fixed across PostgreSQL versions).
BOOL = 16
INT8 = 20
INT2 = 21
INT4 = 23
TEXT = 25
JSON = 114
FLOAT4 = 700
FLOAT8 = 701
BPCHAR = 1042
VARCHAR = 1043
NAME = 19
DATE = 1082
TIMESTAMP = 1114
TIMESTAMPTZ = 1184
NUMERIC = 1700
VOID = 2278
UUID = 2950
JSONB = 3802

# pg_type.typname of common built-in types, for the unsupported-type message.
TYPE_NAMES: dict[int, str] = {
    16: "bool", 17: "bytea", 18: "char", 19: "name", 20: "int8", 21: "int2",
    22: "int2vector", 23: "int4", 24: "regproc", 25: "text", 26: "oid", 27: "tid",
    28: "xid", 29: "cid", 30: "oidvector", 114: "json", 142: "xml", 143: "_xml",
    194: "pg_node_tree", 199: "_json", 600: "point", 601: "lseg", 602: "path",
    603: "box", 604: "polygon", 628: "line", 650: "cidr", 651: "_cidr", 700: "float4",
    701: "float8", 705: "unknown", 718: "circle", 774: "macaddr8", 790: "money",
    791: "_money", 829: "macaddr", 869: "inet", 1000: "_bool", 1001: "_bytea",
    1002: "_char", 1003: "_name", 1005: "_int2", 1007: "_int4", 1009: "_text",
    1014: "_bpchar", 1015: "_varchar", 1016: "_int8", 1021: "_float4", 1022: "_float8",
    1028: "_oid", 1033: "aclitem", 1034: "_aclitem", 1040: "_macaddr", 1041: "_inet",
    1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time", 1114: "timestamp",
    1115: "_timestamp", 1182: "_date", 1183: "_time", 1184: "timestamptz",
    1185: "_timestamptz", 1186: "interval", 1187: "_interval", 1231: "_numeric",
    1266: "timetz", 1270: "_timetz", 1560: "bit", 1561: "_bit", 1562: "varbit",
    1563: "_varbit", 1700: "numeric", 1790: "refcursor", 2202: "regprocedure",
    2203: "regoper", 2204: "regoperator", 2205: "regclass", 2206: "regtype",
    2249: "record", 2275: "cstring", 2278: "void", 2287: "_record", 2950: "uuid",
    2951: "_uuid", 2970: "txid_snapshot", 3220: "pg_lsn", 3614: "tsvector",
    3615: "tsquery", 3643: "_tsvector", 3734: "regconfig", 3769: "regdictionary",
    3802: "jsonb", 3807: "_jsonb", 3904: "int4range", 3906: "numrange",
    3908: "tsrange", 3910: "tstzrange", 3912: "daterange", 3926: "int8range",
    4072: "jsonpath", 4089: "regnamespace", 4096: "regrole", 4191: "regcollation",
    4451: "int4multirange", 4532: "nummultirange", 4533: "tsmultirange",
    4534: "tstzmultirange", 4535: "datemultirange", 4536: "int8multirange",
    5038: "pg_snapshot", 5069: "xid8",
}  # fmt: skip


def encode_rows(columns: Sequence[psycopg.Column], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Encode fetched rows as ``{"rows": [{col: value, ...}, ...], "row_count": n}``.

    :param columns: ``cursor.description`` (empty or None-like for statements
        without a result set: pass ``[]``).
    :param rows: ``cursor.fetchall()`` of a ``binary=True`` execution.
    :raises UnsupportedColumnType: ``Unsupported column type <typname> for column
        "<col>" — cast it to text in the query``.
    """
    encoders = [_encoder(column) for column in columns]
    names = [column.name for column in columns]
    encoded: list[dict[str, Any]] = []
    for row in rows:
        item: dict[str, Any] = {}
        for name, encode, value in zip(names, encoders, row, strict=True):
            item[name] = None if value is None else encode(value)
        encoded.append(item)
    return {"rows": encoded, "row_count": len(encoded)}


def rfc3339(value: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC, chrono ``AutoSi`` style.

    ``2024-01-02T03:04:05+00:00``, ``...05.123+00:00`` when the fraction is
    whole milliseconds, ``...05.123456+00:00`` otherwise.

    :raises ValueError: ``value`` is naive.
    """
    if value.utcoffset() is None:
        raise ValueError("rfc3339() needs an aware datetime")
    return _naive_iso(value.astimezone(UTC)) + "+00:00"


def _naive_iso(value: datetime) -> str:
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    micros = value.microsecond
    if micros == 0:
        return text
    if micros % 1000 == 0:
        return f"{text}.{micros // 1000:03d}"
    return f"{text}.{micros:06d}"


def _encoder(column: psycopg.Column) -> Callable[[Any], Any]:
    oid = column.type_code
    encoder = _ENCODERS.get(oid)
    if encoder is None:
        typname = TYPE_NAMES.get(oid, str(oid))
        raise UnsupportedColumnType(
            f'Unsupported column type {typname} for column "{column.name}" — cast it to text in the query'
        )
    return encoder


def _float8(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _float4(value: float) -> float | None:
    """The shortest decimal that reads back as the same float4."""
    value = float(value)
    if not math.isfinite(value):
        return None
    single = struct.unpack("f", struct.pack("f", value))[0]
    for digits in range(1, 10):  # 9 significant digits always round-trip a float4
        candidate = float(f"{single:.{digits}g}")
        if struct.unpack("f", struct.pack("f", candidate))[0] == single:
            return candidate
    return value  # pragma: no cover - unreachable by the 9-digit bound


def _numeric(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _timestamptz(value: Any) -> str:
    if isinstance(value, datetime):
        return rfc3339(value)
    return str(value)


def _timestamp(value: Any) -> str:
    if isinstance(value, datetime):
        return _naive_iso(value)
    return str(value)


def _date(value: Any) -> str:
    if isinstance(value, date):
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    return str(value)


def _void(value: Any) -> None:
    return None


def _same(value: Any) -> Any:
    return value


_ENCODERS: dict[int, Callable[[Any], Any]] = {
    BOOL: bool,
    INT2: int,
    INT4: int,
    INT8: int,
    FLOAT4: _float4,
    FLOAT8: _float8,
    NUMERIC: _numeric,
    TEXT: _text,
    VARCHAR: _text,
    BPCHAR: _text,
    NAME: _text,
    UUID: str,
    TIMESTAMPTZ: _timestamptz,
    TIMESTAMP: _timestamp,
    DATE: _date,
    JSON: _same,
    JSONB: _same,
    VOID: _void,
}
