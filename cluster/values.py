"""Truthiness of step results and the value of ``df.break`` (spec §2.8, §1.4).

These work on JSON values as Python objects (what ``json.loads`` or orjson
give: None, bool, int, float, str, list, dict).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, NoReturn

__all__ = ["break_value", "condition_value", "is_truthy"]

# A decimal number as Rust's f64 parser reads one (no "_" separators, no hex);
# "inf" and "nan" are not needed: they are non-zero, like any other string.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_TRUE_WORDS = frozenset({"true", "t", "yes"})
_FALSE_WORDS = frozenset({"false", "f", "no"})


def is_truthy(value: Any) -> bool:
    """Test a JSON value (or a plain string) by the spec's value rules.

    Booleans as they are; numbers when non-zero; strings: empty after
    trimming is false, ``true``/``t``/``yes`` true and ``false``/``f``/``no``
    false (any case), a decimal number when non-zero (``"0.00"`` is false),
    anything else true; arrays and objects when non-empty; null false.
    """
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return bool(value != 0)
    if isinstance(value, str):
        return _string_truthy(value)
    if isinstance(value, dict | list | tuple):
        return len(value) > 0
    return bool(value)


def _string_truthy(text: str) -> bool:
    word = text.strip().lower()
    if not word:
        return False
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    if _NUMBER.fullmatch(word):
        return float(word) != 0
    return True


def condition_value(result: Any) -> bool:
    """The truth of an IF or while condition's result.

    A row set (a dict whose ``rows`` is a list) is false when empty, else the
    truth of the first column of the first row (a row with no columns counts
    as null). Any other value is tested whole.
    """
    if isinstance(result, dict) and isinstance(result.get("rows"), list):
        rows: list[Any] = result["rows"]
        if not rows:
            return False
        first = rows[0]
        if isinstance(first, dict):
            return is_truthy(next(iter(first.values()), None))
        return is_truthy(first)
    return is_truthy(result)


def break_value(literal: str | None) -> Any:
    """The loop result of ``df.break(literal)``.

    Valid JSON is parsed (``'{"a":1}'`` gives a dict, ``'1'`` the number 1),
    anything else is the string itself (``'done'``), and None is JSON null.
    ``NaN``/``Infinity`` are not JSON and stay strings.
    """
    if literal is None:
        return None
    try:
        return json.loads(literal, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return literal


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")
