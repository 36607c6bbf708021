"""A progress bar for the long waits (2,000 instances, 100,000 sleeping), on a terminal only.

On a terminal, ``bar(description, total)`` shows a rich progress bar on
stderr while the harness polls; elsewhere (CI, a pipe, the test suite) it does
nothing and the one-line progress messages are the only output.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator


class Bar(Protocol):
    def update(self, done: int) -> None: ...


class _Silent:
    def update(self, done: int) -> None:
        return None


class _Rich:
    def __init__(self, progress: object, task: object) -> None:
        self._progress = progress
        self._task = task

    def update(self, done: int) -> None:
        self._progress.update(self._task, completed=done)  # type: ignore[attr-defined]


@contextlib.contextmanager
def bar(description: str, total: int) -> Iterator[Bar]:
    """A bar from 0 to ``total``; removed when the block ends."""
    if not sys.stderr.isatty():
        yield _Silent()
        return
    from rich.console import Console  # noqa: PLC0415 - only on a terminal
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, refresh_per_second=4) as progress:
        yield _Rich(progress, progress.add_task(description, total=total))
