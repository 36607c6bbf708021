"""The worker's clock: wall time, or wall time plus an offset for tests.

Timers (sleeps, schedules, signal timeouts, loop pacing, retry backoff) are
decided with this clock, and due instances are fetched with it too, so a test
can move time forward without waiting: set ``DURABLE_CLOCK_FILE`` to a file
holding a number of seconds to add to the real time, and rewrite it.
Production never sets it.
"""

from __future__ import annotations

import os
import time

ENV = "DURABLE_CLOCK_FILE"
_REREAD = 0.05  # seconds between reads of the offset file

_path = os.environ.get(ENV) or None
_offset = 0.0
_read_at = 0.0


def configure(path: str | None) -> None:
    global _path, _read_at  # noqa: PLW0603 - one process-wide clock
    _path = path or None
    _read_at = 0.0


def now() -> float:
    """Seconds since the epoch, as the runtime sees them."""
    real = time.time()
    if _path is None:
        return real
    global _offset, _read_at  # noqa: PLW0603
    if real - _read_at > _REREAD:
        _read_at = real
        try:
            with open(_path) as handle:
                _offset = float(handle.read().strip() or 0)
        except (OSError, ValueError):
            _offset = 0.0
    return real + _offset
