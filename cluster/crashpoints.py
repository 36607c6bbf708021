"""Named crash points: no-ops unless a test arms them.

A test arms a point by creating a file named after it in the directory given
by ``DURABLE_CRASHPOINTS_DIR`` (read once, when the worker starts). The file
may hold a number of hits to let pass first (default 0). The worker process
that reaches the armed hit removes the file (so exactly one process crashes,
once) and kills itself with SIGKILL, as an out-of-memory kill or a power cut
would. Each name is used at exactly one call site:

- ``before_step``: a step is about to run.
- ``during_step``: a SQL step ran its statement, before its checkpoint.
- ``before_checkpoint_commit``: a checkpoint batch is written, not committed.
- ``after_checkpoint_commit``: a checkpoint batch committed, before the ack.
- ``after_step_commit``: a SQL step's transaction (and checkpoint) committed, before the ack.
"""

from __future__ import annotations

import fcntl
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
    path = _dir / name
    try:
        handle = path.open("r+")
    except FileNotFoundError:
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not path.exists():  # another process took it while we waited
            return
        text = handle.read().strip()
        remaining = int(text) if text else 0
        if remaining > 0:
            handle.seek(0)
            handle.truncate()
            handle.write(str(remaining - 1))
            handle.flush()
            return
        path.unlink()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(directory: Path, name: str, skip: int = 0) -> None:
    """Arm ``name``: crash at its hit number ``skip`` (0 = the first)."""
    if name not in NAMES:
        raise ValueError(f"unknown crash point {name!r}; known: {', '.join(sorted(NAMES))}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(str(skip))


def armed(directory: Path, name: str) -> bool:
    return (directory / name).exists()
