"""Truthiness and break values (spec §2.8, §1.4)."""

from __future__ import annotations

from typing import Any

import pytest

from durable_cluster.values import break_value, condition_value, is_truthy


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        (True, True),
        (False, False),
        (0, False),
        (1, True),
        (-1, True),
        (0.0, False),
        (-0.0, False),
        (0.5, True),
        (float("nan"), True),
        (float("inf"), True),
        (2**80, True),
        ("", False),
        ("   ", False),
        ("\t\n ", False),
        ("true", True),
        ("TRUE", True),
        (" True ", True),
        ("t", True),
        ("T", True),
        ("yes", True),
        ("YeS", True),
        ("false", False),
        ("FALSE", False),
        (" false\n", False),
        ("f", False),
        ("F", False),
        ("no", False),
        ("No", False),
        ("0", False),
        ("00", False),
        ("-0", False),
        ("+0", False),
        ("0.000", False),
        (".0", False),
        ("0.", False),
        ("0e10", False),
        ("1e-400", False),
        (" 0 ", False),
        ("1", True),
        ("-1", True),
        ("0.001", True),
        ("1e3", True),
        ("12abc", True),
        ("0x0", True),
        ("0_0", True),
        ("nan", True),
        ("inf", True),
        ("y", True),
        ("n", True),
        ("off", True),
        ("null", True),
        ("[]", True),
        ("anything", True),
        ("héllo", True),
        ([], False),
        ([0], True),
        ([None], True),
        ({}, False),
        ({"a": None}, True),
    ],
)
def test_is_truthy(value: Any, expected: bool) -> None:
    assert is_truthy(value) is expected


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"rows": [], "row_count": 0}, False),
        ({"rows": [{"a": True}], "row_count": 1}, True),
        ({"rows": [{"a": False}], "row_count": 1}, False),
        ({"rows": [{"a": None}], "row_count": 1}, False),
        ({"rows": [{"a": 0, "b": 1}], "row_count": 1}, False),
        ({"rows": [{"a": 1, "b": 0}], "row_count": 1}, True),
        ({"rows": [{"a": 0}, {"a": 1}], "row_count": 2}, False),
        ({"rows": [{"n": "0.00"}], "row_count": 1}, False),
        ({"rows": [{"n": "12.50"}], "row_count": 1}, True),
        ({"rows": [{"s": "no"}], "row_count": 1}, False),
        ({"rows": [{"s": "maybe"}], "row_count": 1}, True),
        ({"rows": [{"j": {}}], "row_count": 1}, False),
        ({"rows": [{"j": [1]}], "row_count": 1}, True),
        ({"rows": [{}], "row_count": 1}, False),
        ({"rows": [1]}, True),
        ({"rows": [0]}, False),
        ({"rows": []}, False),
        # Not row sets: the whole value is tested.
        ({"rows": "yes"}, True),
        ({"status": 200, "ok": False}, True),
        ({"slept": True, "seconds": 0}, True),
        ({}, False),
        ([], False),
        ([{"rows": []}], True),
        ("done", True),
        ("false", False),
        (" ", False),
        (0, False),
        (3, True),
        (None, False),
        (True, True),
    ],
)
def test_condition_value(result: Any, expected: bool) -> None:
    assert condition_value(result) is expected


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        (None, None),
        ("done", "done"),
        ('{"a":1}', {"a": 1}),
        ('{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}),
        ("[1, 2]", [1, 2]),
        ("1", 1),
        ("-2.5", -2.5),
        ("true", True),
        ("false", False),
        ("null", None),
        ('"quoted"', "quoted"),
        ("  42  ", 42),
        ("", ""),
        ("   ", "   "),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("-Infinity", "-Infinity"),
        ("{'a': 1}", "{'a': 1}"),
        ("{bad", "{bad"),
        ("1 2", "1 2"),
        ("True", "True"),
        ("héllo ✓", "héllo ✓"),
        ('"\\u00e9"', "é"),
        ("12345678901234567890123", 12345678901234567890123),
        ("[" * 5000 + "]" * 5000, "[" * 5000 + "]" * 5000),
    ],
)
def test_break_value(literal: str | None, expected: Any) -> None:
    assert break_value(literal) == expected


def test_break_value_keeps_types() -> None:
    assert break_value("1") is not True
    assert isinstance(break_value("1.0"), float)
    assert break_value("null") is None
