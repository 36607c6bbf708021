"""The metrics server's scrape survives a worker's files vanishing mid-read."""

from __future__ import annotations

from typing import Any

import pytest

from durable_cluster.metrics import COLLECT_ATTEMPTS, MetricsHandler


class Flaky:
    """An encoder whose first ``failures`` calls meet a removed file."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, registry: Any) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            raise FileNotFoundError(2, "No such file or directory", "gauge_live_all_1234.db")
        return b"# metrics\n"


def collect(encoder: Flaky) -> bytes:
    handler = MetricsHandler.__new__(MetricsHandler)  # no socket: only _collect is exercised
    return handler._collect(encoder)


def test_a_file_removed_between_listing_and_reading_is_retried() -> None:
    encoder = Flaky(COLLECT_ATTEMPTS - 1)
    assert collect(encoder) == b"# metrics\n"
    assert encoder.calls == COLLECT_ATTEMPTS


def test_a_directory_that_keeps_changing_still_fails_in_the_end() -> None:
    encoder = Flaky(COLLECT_ATTEMPTS)
    with pytest.raises(FileNotFoundError):
        collect(encoder)
    assert encoder.calls == COLLECT_ATTEMPTS
