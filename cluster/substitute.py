"""Variable and result substitution in step texts (spec §2.9).

Each node's text (an SQL query; HTTP url, body and header values; multipart
part names, filenames and ``data_b64``) goes through two passes, in order:

1. **Braced variables**, one left-to-right pass over the text:
   ``{sys_instance_id}`` is the instance id, ``{sys_label}`` the label (empty
   when there is none), and ``{name}`` the snapshotted ``df.vars`` value when
   ``name`` is an identifier (``[A-Za-z_][A-Za-z0-9_]*``) that exists. The two
   ``sys_`` names win over variables of the same name. Values go in **raw**
   (no quoting) and the pass never re-scans them, so a value holding ``{x}``
   stays as it is. Unknown names and non-identifier contents (``{"a":1}``)
   are left untouched. Pass 2 then runs over the whole resulting text, as in
   pg_durable: a variable value that holds ``$name`` of a known result is
   substituted by pass 2 (variables are the submitter's own SQL fragments).

2. **Result references** ``$name.*``, ``$name.col``, ``$name.col?``,
   ``$name?`` and ``$name``. A name matches only at a word boundary, so
   ``$abc`` never matches a result ``ab`` (taking the whole run of word
   characters after ``$`` and looking it up is the same as trying known names
   longest first with a boundary check). Unknown ``$x``, ``$1`` and ``$$`` are
   left alone; the scan does not parse SQL, so references inside string
   literals or dollar-quoted bodies are substituted too, and a dollar-quote
   tag spelled like a known result (``$x$...$x$``) is replaced: use ``$$`` or
   another tag. Inserted text is never re-scanned.

   Values are rendered by context. SQL (``mode="sql"``): strings as
   ``'...'`` with ``'`` doubled, integers and floats bare, booleans
   ``true``/``false``, objects and arrays as quoted compact JSON text, null
   as ``NULL``. Raw (``mode="raw"``): strings as they are, numbers and
   booleans the same, objects and arrays as compact JSON text, null as
   ``NULL`` (the spec's ``?`` rule, applied in both contexts).

   Two choices the spec leaves open:

   * A negative number in SQL context is wrapped in parentheses: ``(-5)``.
     Bare, ``SELECT 10-$x`` would become ``10--5``, a comment, and
     ``$x::text`` would become ``-5::text``, which is ``-('5'::text)``.
     (Inside a ``$name.*`` VALUES list numbers stay bare, where they are safe.)
   * A float is written with Python's ``repr`` (the shortest text that reads
     back as the same float, ``0.1`` not ``0.1000000000000000055...``); when
     ``repr`` would use an exponent (``1e+16``, ``1e-05``) it is spelled out in
     positional notation instead (``10000000000000000``, ``0.00001``), so the
     text is always digits with an optional point. Floats nested in objects
     and arrays keep JSON's own form.

``substitute_whole`` is the stricter rule for multipart ``data_b64``: the
text is a literal, or exactly one whole reference.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from .errors import DurableClusterError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = ["MAX_VALUES_ROWS", "Mode", "SubstitutionError", "substitute", "substitute_whole"]

Mode = Literal["sql", "raw"]

MAX_VALUES_ROWS = 10_000  # rows: the most a $name.* VALUES expansion may hold

_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The whole run of word characters after "$": a result name matches only if it
# is that whole run, which is the word-boundary rule.
_REFERENCE = re.compile(r"\$(\w+)")
# What may follow a matched name: ".*", ".col" with an optional "?", or "?".
# A column starts with a letter or underscore (not a digit), like an identifier.
_SUFFIX = re.compile(r"\.\*|\.([^\W\d]\w*)(\?)?|\?")
_WHITESPACE = " \t\n\r\f\v"  # what base64 decoding tolerates around data_b64


class SubstitutionError(DurableClusterError):
    """A variable or result reference could not be substituted."""


@dataclass(frozen=True, slots=True)
class _Reference:
    """One result reference found in a text: ``text[start:end]``."""

    start: int
    end: int
    name: str
    kind: Literal["rows", "field", "first"]  # $name.*, $name.col[?], $name[?]
    column: str | None
    optional: bool


def substitute(
    text: str,
    *,
    variables: Mapping[str, str],
    instance_id: str,
    label: str | None,
    results: Mapping[str, Any],
    mode: Mode,
) -> str:
    """Substitute braced variables, then result references, in ``text``.

    :param variables: the instance's snapshotted ``df.vars`` (name to value).
    :param results: the named results so far, each a JSON value as a Python
        object (a SQL result is ``{"rows": [...], "row_count": n}``).
    :param mode: ``"sql"`` quotes values as SQL literals; ``"raw"`` inserts them
        as text (HTTP url/body/headers, multipart name/filename).
    :return: the substituted text.
    :raises SubstitutionError: a strict reference found no rows or NULL, a raw
        reference named a missing field, or a ``$name.*`` expansion failed.
    """
    text = _substitute_variables(text, variables, instance_id, label)
    if not results or "$" not in text:
        return text
    parts: list[str] = []
    pos = 0
    for ref in _references(text, results):
        rendered = _render(ref, results[ref.name], mode)
        if rendered is None:  # leave the reference as it was written
            continue
        parts.append(text[pos : ref.start])
        parts.append(rendered)
        pos = ref.end
    parts.append(text[pos:])
    return "".join(parts)


def substitute_whole(
    text: str,
    *,
    variables: Mapping[str, str],
    instance_id: str,
    label: str | None,
    results: Mapping[str, Any],
    mode: Mode,
    field: str,
) -> str:
    """Substitute a field that must be a literal or exactly one whole reference.

    This is the multipart ``data_b64`` rule. A text with no known reference is
    returned unchanged. A text that is one reference (``$x``, ``$x?``,
    ``$x.col``, ``$x.col?``, ``$x.*`` or ``{var}``), give or take surrounding
    whitespace, becomes that reference's value alone. Anything else (two
    references, or a reference with other text, including an unknown ``$y``
    or ``{y}``) is an error.

    :param field: names the field in the error, e.g. ``"part 'file' data_b64"``.
    :raises SubstitutionError: ``<field> mixes a variable reference with other
        text — it must be either a literal or exactly one whole reference
        ($name, $name?, $name.col, $name.col? or {var})``; or any error of
        :func:`substitute` for the reference itself.
    """
    variable_matches = [
        m
        for m in _VARIABLE.finditer(text)
        if _variable_value(m.group(1), variables, instance_id, label) is not None
    ]
    refs = list(_references(text, results))
    if not variable_matches and not refs:
        return text
    if len(variable_matches) + len(refs) == 1:
        start, end = variable_matches[0].span() if variable_matches else (refs[0].start, refs[0].end)
        if not text[:start].strip(_WHITESPACE) and not text[end:].strip(_WHITESPACE):
            if variable_matches:
                value = _variable_value(variable_matches[0].group(1), variables, instance_id, label)
                assert value is not None
                return value
            rendered = _render(refs[0], results[refs[0].name], mode)
            return text if rendered is None else rendered
    raise SubstitutionError(
        f"{field} mixes a variable reference with other text — it must be either a literal "
        "or exactly one whole reference ($name, $name?, $name.col, $name.col? or {var})"
    )


# -- pass 1: braced variables ------------------------------------------------


def _variable_value(
    name: str, variables: Mapping[str, str], instance_id: str, label: str | None
) -> str | None:
    if name == "sys_instance_id":
        return instance_id
    if name == "sys_label":
        return label or ""
    return variables.get(name)


def _substitute_variables(
    text: str, variables: Mapping[str, str], instance_id: str, label: str | None
) -> str:
    if "{" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        value = _variable_value(match.group(1), variables, instance_id, label)
        return match.group(0) if value is None else value

    return _VARIABLE.sub(replace, text)


# -- pass 2: result references -------------------------------------------------


def _references(text: str, results: Mapping[str, Any]) -> Iterator[_Reference]:
    """Yield the references to known results in ``text``, left to right."""
    pos = 0
    while (match := _REFERENCE.search(text, pos)) is not None:
        name = match.group(1)
        pos = match.end()
        if name not in results:
            continue
        suffix = _SUFFIX.match(text, pos)
        if suffix is None:
            ref = _Reference(match.start(), pos, name, "first", None, optional=False)
        elif suffix.group(0) == ".*":
            ref = _Reference(match.start(), suffix.end(), name, "rows", None, optional=False)
        elif suffix.group(0) == "?":
            ref = _Reference(match.start(), suffix.end(), name, "first", None, optional=True)
        else:
            ref = _Reference(
                match.start(),
                suffix.end(),
                name,
                "field",
                suffix.group(1),
                optional=suffix.group(2) is not None,
            )
        pos = ref.end
        yield ref


def _is_row_set(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("rows"), list)


def _render(ref: _Reference, value: Any, mode: Mode) -> str | None:
    """The text that replaces ``ref``, or None to leave it as written."""
    if ref.kind == "rows":
        return _render_rows(ref.name, value, mode)
    if ref.kind == "first":
        return _render_first(ref, value, mode)
    return _render_field(ref, value, mode)


def _render_first(ref: _Reference, value: Any, mode: Mode) -> str:
    if not _is_row_set(value):
        # Not a row set (HTTP envelope, JOIN array, SLEEP/SIGNAL object, a break
        # value...): the whole JSON value.
        if value is None:
            if ref.optional:
                return "NULL"
            raise SubstitutionError(f"${ref.name} is NULL — result is null")
        return _format(value, mode)
    rows: list[Any] = value["rows"]
    if not rows:
        if ref.optional:
            return "NULL"
        raise SubstitutionError(f"${ref.name} has no rows — query returned zero results")
    cell = _first_column(rows[0])
    if cell is None:
        if ref.optional:
            return "NULL"
        raise SubstitutionError(f"${ref.name} is NULL — first column of first row is NULL")
    return _format(cell, mode)


def _first_column(row: Any) -> Any:
    if isinstance(row, dict):
        return next(iter(row.values()), None)
    return row


def _render_field(ref: _Reference, value: Any, mode: Mode) -> str | None:
    assert ref.column is not None
    label = f"${ref.name}.{ref.column}"
    container = value
    if _is_row_set(value):
        rows: list[Any] = value["rows"]
        if not rows:
            if ref.optional:
                return "NULL"
            raise SubstitutionError(f"${ref.name} has no rows — query returned zero results")
        container = rows[0]
    if not isinstance(container, dict) or ref.column not in container:
        if ref.optional or mode == "sql":
            return None  # left literally; in SQL, PostgreSQL reports the bad name
        available = ", ".join(container) if isinstance(container, dict) and container else "none"
        raise SubstitutionError(f"{label}: result has no field '{ref.column}' (available: {available})")
    field = container[ref.column]
    if field is None:
        if ref.optional:
            return "NULL"
        raise SubstitutionError(f"{label} is NULL")
    return _format(field, mode)


def _render_rows(name: str, value: Any, mode: Mode) -> str:
    rows: list[Any] = value["rows"] if _is_row_set(value) else []
    if not _is_row_set(value) or not all(isinstance(row, dict) for row in rows):
        raise SubstitutionError(f"${name}.* — result is not a SQL row set")
    if mode == "raw":
        return _json_text(rows)
    alias = _quote_identifier(name)
    if not rows:
        return f"(SELECT NULL WHERE false) AS {alias}"
    if len(rows) > MAX_VALUES_ROWS:
        raise SubstitutionError(
            f"${name}.* — result has {len(rows)} rows, exceeding the maximum of {MAX_VALUES_ROWS} "
            "rows for a VALUES expansion; add a LIMIT or store the rows in a table instead"
        )
    columns = list(rows[0])
    if not columns:
        raise SubstitutionError(f"${name}.* — result rows have no columns")
    tuples = ", ".join(
        "(" + ", ".join(_values_literal(row.get(column)) for column in columns) + ")" for row in rows
    )
    names = ",".join(_quote_identifier(column) for column in columns)
    return f"(VALUES {tuples}) AS {alias}({names})"


# -- formatting ------------------------------------------------------------------


def _format(value: Any, mode: Mode) -> str:
    if mode == "sql":
        return _sql_literal(value)
    return _raw_text(value)


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        text = _number_text(value)
        return f"({text})" if text.startswith("-") else text
    if isinstance(value, str):
        return _quote_string(value)
    return _quote_string(_json_text(value))


def _values_literal(value: Any) -> str:
    """A ``$name.*`` VALUES item: strings typed ``::text``, numbers bare."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return _number_text(value)
    if isinstance(value, str):
        return _quote_string(value) + "::text"
    return _quote_string(_json_text(value))


def _raw_text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return _number_text(value)
    if isinstance(value, str):
        return value
    return _json_text(value)


def _number_text(value: float | Decimal) -> str:
    if isinstance(value, int):
        return str(value)
    text = repr(value) if isinstance(value, float) else str(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _quote_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
