"""Every hook is documented: its docstring, and a section of docs/hooks.md headed by its signature.

A hook's docstring and doc page are its API (pytest ``hookspec.py``; datasette
``test_plugin_hooks_are_documented``). Adding a hookspec without both fails here.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from durable_cluster import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"
SPEC_MARKER = f"{hookspecs.PROJECT}_spec"  # the attribute pluggy's HookspecMarker sets
HEADING = re.compile(r"^## `(durable_\w+)\((.*)\) -> (.*)`$", re.MULTILINE)


def hookspec_functions() -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(hookspecs).items()
        if inspect.isfunction(value) and hasattr(value, SPEC_MARKER)
    }


def signature(function: Any) -> str:
    """``name(param: Type, ...) -> Return``, annotations as written (they stay strings)."""
    sig = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{function.__name__}({params}) -> {sig.return_annotation}"


HOOKS = sorted(hookspec_functions())


def hooks_page() -> str:
    return (DOCS / "hooks.md").read_text(encoding="utf-8")


def test_the_hookspecs_are_found() -> None:
    assert {"durable_register_steps", "durable_run_step", "durable_worker_started"} <= set(HOOKS)
    assert all(name.startswith("durable_") for name in HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_every_hookspec_says_who_calls_it_where_and_in_which_transaction(name: str) -> None:
    function = hookspec_functions()[name]
    doc = inspect.getdoc(function) or ""
    assert doc, f"{name} has no docstring"
    for field in ("Called by:", "Called in:", "Transaction:", ".. versionadded::"):
        assert field in doc, f"the docstring of {name} has no {field!r}"
    for parameter in inspect.signature(function).parameters:
        assert f":param {parameter}:" in doc, f"the docstring of {name} does not describe {parameter!r}"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_section_headed_by_its_signature(name: str) -> None:
    heading = f"## `{signature(hookspec_functions()[name])}`"
    assert heading in hooks_page().splitlines(), f"docs/hooks.md has no section {heading!r}"


def test_the_hooks_page_documents_no_hook_that_does_not_exist() -> None:
    documented = [match[1] for match in HEADING.finditer(hooks_page())]
    assert sorted(documented) == HOOKS
    assert len(documented) == len(set(documented)), "a hook is documented twice"


def test_the_guide_shows_every_example_plugin() -> None:
    guide = (DOCS / "plugins.md").read_text(encoding="utf-8")
    examples = sorted((DOCS / "examples").glob("*.py"))
    assert len(examples) >= 2
    for example in examples:
        assert f"examples/{example.name}" in guide, f"docs/plugins.md does not show {example.name}"
    assert "hooks.md" in guide
