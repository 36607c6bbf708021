"""The named runtime queries of ``sql/queries.sql``.

The file holds blocks introduced by ``-- name: <name>``; the comment lines
after it describe the query; the rest is the query text. Loaded once per
process from the installed package.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import LiteralString

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$")


def parse(text: str) -> dict[str, LiteralString]:
    """Parse a queries file into ``{name: query}``."""
    found: dict[str, LiteralString] = {}
    name: str | None = None
    lines: list[str] = []

    def close() -> None:
        if name is None:
            return
        body = "\n".join(line for line in lines if not line.startswith("--")).strip()
        if not body:
            raise ValueError(f"query {name!r} is empty")
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        found[name] = body  # trusted SQL shipped with the package

    for line in text.splitlines():
        match = _NAME.match(line)
        if match:
            close()
            name, lines = match[1], []
        elif name is not None:
            lines.append(line)
    close()
    return found


@functools.cache
def all_queries() -> dict[str, LiteralString]:
    text = (resources.files("durable_cluster.sql") / "queries.sql").read_text(encoding="utf-8")
    return parse(text)


def get(name: str) -> LiteralString:
    return all_queries()[name]
