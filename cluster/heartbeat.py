"""Process liveness between the coordinator and one worker: an mtime heartbeat.

This is gunicorn's ``WorkerTmp`` (``gunicorn/workers/workertmp.py``): the
coordinator creates an unlinked temporary file *before* the fork, the worker
calls :meth:`Heartbeat.notify` at least twice per heartbeat timeout, and the
coordinator reads :meth:`Heartbeat.last_update` with ``fstat``. It needs no
thread, no pipe and no socket, and a worker stuck in C code simply stops
bumping the file.

Like gunicorn 21+, the file's mtime carries a ``time.monotonic()`` value rather
than wall-clock time, so clock steps (NTP, a suspended VM) cannot make a worker
look stale. ``CLOCK_MONOTONIC`` is system-wide on Linux, so the coordinator can
compare it with its own ``time.monotonic()``. A new heartbeat's mtime is set to
0, meaning "never notified": the coordinator uses that to tell when a freshly
spawned worker has booted (its first ``notify()``).

The file lives in ``/dev/shm`` when that exists, so a heartbeat never touches
a disk (gunicorn recommends ``--worker-tmp-dir /dev/shm`` for the same reason).
"""

from __future__ import annotations

import os
import tempfile
import time

__all__ = ["Heartbeat"]

SHM_DIR = "/dev/shm"


def _default_directory() -> str | None:
    if os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK):
        return SHM_DIR
    return None  # tempfile's default


class Heartbeat:
    """An unlinked temporary file whose mtime is the worker's last sign of life."""

    NEVER = 0.0  # last_update() before the first notify()

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        where = os.fspath(directory) if directory is not None else _default_directory()
        fd, name = tempfile.mkstemp(prefix="durable-cluster-hb-", dir=where)
        try:
            os.unlink(name)
            os.utime(fd, ns=(0, 0))
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("heartbeat is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def notify(self) -> None:
        """Record a sign of life (called by the worker)."""
        now = time.monotonic_ns()
        os.utime(self.fileno(), ns=(now, now))

    def last_update(self) -> float:
        """``time.monotonic()`` of the last :meth:`notify`, or :attr:`NEVER` (0.0)."""
        return os.fstat(self.fileno()).st_mtime_ns / 1e9

    def notified(self) -> bool:
        """Whether :meth:`notify` was called at least once (the worker has booted)."""
        return os.fstat(self.fileno()).st_mtime_ns != 0

    def close(self) -> None:
        """Close the file (idempotent); both processes close their own copy."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"fd={self._fd}"
        return f"<Heartbeat {state}>"
