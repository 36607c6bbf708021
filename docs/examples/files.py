"""Example plugin: file steps with synchronous handlers (Python's ``hashlib`` and ``csv``).

Two step kinds, for workflows that import files:

- ``files.sha256`` ``{"path": "prices.csv"}`` returns
  ``{"path": "prices.csv", "sha256": "9f86d0...", "bytes": 1234}``.
- ``files.csv_rows`` ``{"path": "prices.csv"}`` (optional ``"delimiter"``,
  ``"encoding"``, ``"limit"``) returns ``{"rows": [{"sku": "A1", "price":
  "9.50"}, ...], "row_count": 2, "columns": ["sku", "price"]}``: the shape of a
  SQL step's result, so a later SQL step reads the rows as a ``VALUES`` list
  with ``$csv.*`` (every value is text: cast it)::

    SELECT df.start(
        (df.step('files.sha256', '{"path": "prices.csv"}') |=> 'sum')
        ~> (df.step('files.csv_rows', '{"path": "prices.csv"}') |=> 'csv')
        ~> 'INSERT INTO prices (sku, price, source_sha256)
            SELECT sku, price::numeric, $sum.sha256 FROM $csv.*'
    );

Paths are relative to ``FILES_DIR``, an environment variable of the workers;
a path that leads outside it fails the step. Every role granted ``df`` usage
can write a workflow, so a step that reads files must not read whatever the
worker process can.

The handlers are plain functions: the runtime runs them in a thread pool, so
hashing a large file does not block the worker's event loop. Any library you
can import works the same way (install it where the workers run).
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Any

from durable_cluster import StepContext, StepFailed, StepRegistry, hookimpl

__version__ = "1.0"

MAX_ROWS = 10_000  # rows: the most a $name.* VALUES list takes (and a result is one JSON value)
CHUNK = 1 << 20  # bytes hashed at a time


@hookimpl
def durable_register_steps(registry: StepRegistry) -> None:
    registry.add("files.sha256", sha256, description="SHA-256 of a file under FILES_DIR")
    registry.add("files.csv_rows", csv_rows, description="the rows of a CSV file under FILES_DIR")


def sha256(ctx: StepContext) -> dict[str, Any]:
    path = resolve(ctx)
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            if ctx.cancelled.is_set():  # the result is no longer wanted (cancel, lost RACE, timeout)
                raise StepFailed("cancelled")
            digest.update(chunk)
            size += len(chunk)
    ctx.logger.info("hashed %s (%d bytes)", ctx.args["path"], size)
    return {"path": ctx.args["path"], "sha256": digest.hexdigest(), "bytes": size}


def csv_rows(ctx: StepContext) -> dict[str, Any]:
    path = resolve(ctx)
    limit = int(ctx.args.get("limit", MAX_ROWS))
    rows: list[dict[str, Any]] = []
    try:
        with path.open(newline="", encoding=str(ctx.args.get("encoding", "utf-8"))) as handle:
            # restkey: surplus fields of a ragged row go in a list under "_extra" (keys must be strings).
            reader = csv.DictReader(handle, delimiter=str(ctx.args.get("delimiter", ",")), restkey="_extra")
            for row in reader:
                if len(rows) >= limit:
                    raise StepFailed(f"{ctx.args['path']} has more than {limit} rows")
                rows.append(row)
            columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error, LookupError) as exc:
        raise StepFailed(f"cannot read {ctx.args['path']} as CSV: {exc}") from exc
    return {"rows": rows, "row_count": len(rows), "columns": columns}


def resolve(ctx: StepContext) -> Path:
    """The file named by ``ctx.args["path"]``, which must lie under FILES_DIR."""
    base = os.environ.get("FILES_DIR")
    if not base:
        raise StepFailed("files steps need FILES_DIR in the workers' environment")
    relative = ctx.args.get("path") if isinstance(ctx.args, dict) else None
    if not isinstance(relative, str) or not relative:
        raise StepFailed('files steps take {"path": "a/path/under/FILES_DIR"}')
    root = Path(base).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise StepFailed(f"path {relative!r} is outside FILES_DIR")
    if not path.is_file():
        raise StepFailed(f"no such file under FILES_DIR: {relative}")
    return path
