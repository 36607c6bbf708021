"""docs/security.md: every threat names tests that exist, and every security test is in the doc."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def _threat_rows() -> list[str]:
    return [line for line in DOC.read_text().splitlines() if re.match(r"\| T\d+ \|", line)]


def test_every_threat_names_existing_tests() -> None:
    rows = _threat_rows()
    assert len(rows) >= 20
    ids = [row.split("|")[1].strip() for row in rows]
    assert ids == [f"T{n}" for n in range(1, len(rows) + 1)], "threat ids must be T1, T2, ... in order"
    for row in rows:
        tests_cell = row.rstrip(" |").rsplit("|", 1)[1]
        references = REFERENCE.findall(tests_cell)
        assert references, f"no test named in: {row[:60]}"
        for path, name in references:
            assert name in _functions(ROOT / path), f"{path}::{name} does not exist"


def test_every_security_test_is_in_the_threat_model() -> None:
    text = DOC.read_text()
    named = {f"{path}::{name}" for path, name in REFERENCE.findall(text)}
    here = Path(__file__).resolve().parent
    for module in sorted(here.glob("test_*.py")):
        if module.name == Path(__file__).name:
            continue
        relative = module.relative_to(ROOT).as_posix()
        for name in sorted(_functions(module)):
            if name.startswith("test_"):
                assert f"{relative}::{name}" in named, f"{relative}::{name} is not in docs/security.md"
