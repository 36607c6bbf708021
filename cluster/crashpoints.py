"""Named crash points: no-ops unless a test arms them.

A test arms a point by creating a file named after it in the directory given
by ``DURABLE_CRASHPOINTS_DIR`` (read once, when the worker starts). The first
worker process to reach an armed point removes the file (so exactly one
process crashes, once) and kills itself with SIGKILL, as an out-of-memory
kill or a power cut would. Each name is used at exactly one call site:

- ``before_step``: a step is about to run.
- ``during_step``: a SQL step ran its statement, before its checkpoint.
- ``before_checkpoint_commit``: a checkpoint batch is written, not committed.
- ``after_checkpoint_commit``: a checkpoint batch committed, before the ack.
- ``after_step_commit``: a SQL step's transaction (and checkpoint) committed, before the ack.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "DURABLE_CRASHPOINTS_DIR"
NAMES = frozenset(
    {
        "before_step",
        "during_step",
        "before_checkpoint_commit",
        "after_checkpoint_commit",
        "after_step_commit",
    }
)

_dir: Path | None = Path(os.environ[ENV]) if os.environ.get(ENV) else None


def configure(directory: str | None) -> None:
    """(Re)read the crash point directory (called in each worker after fork)."""
    global _dir  # noqa: PLW0603 - one process-wide switch, read at every hit
    _dir = Path(directory) if directory else None


def hit(name: str) -> None:
    if _dir is None:
        return
    try:
        (_dir / name).unlink()
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def arm(directory: Path, name: str) -> None:
    """Arm ``name`` (tests)."""
    if name not in NAMES:
        raise ValueError(f"unknown crash point {name!r}; known: {', '.join(sorted(NAMES))}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).touch()


def armed(directory: Path, name: str) -> bool:
    return (directory / name).exists()
