"""A coordinator with a fake worker, run as a subprocess by test_coordinator_process.py.

Each worker heartbeats in a loop, writes ``slot-<n>.pid`` (``"<pid> <generation>"``)
into ``--dir`` once booted, appends ``<slot> <pid> <generation>`` to
``boots.log``, and exits 0 on SIGTERM. The worker of ``--boot-error-slot``
(or every worker when ``FAKE_CLUSTER_BOOT_ERROR=1``) exits with
``WORKER_BOOT_ERROR`` at boot instead; with ``FAKE_CLUSTER_IGNORE_TERM=1`` the
workers ignore SIGTERM. The coordinator's pid goes into
``ready`` when all workers are spawned.

    python tests/acceptance/fake_cluster.py --dir /tmp/x --workers 2
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from durable_cluster.config import Settings
from durable_cluster.coordinator import WORKER_BOOT_ERROR, Coordinator, WorkerSpec

BEAT_INTERVAL = 0.05  # seconds between two heartbeats of a fake worker


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    partial.replace(path)


def fake_worker(state: Path, boot_error_slot: int | None, spec: WorkerSpec) -> int:
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, stop)
    if os.environ.get("FAKE_CLUSTER_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("FAKE_CLUSTER_BOOT_ERROR") == "1" or spec.slot == boot_error_slot:
        with (state / "boots.log").open("a") as boots:
            boots.write(f"{spec.slot} {os.getpid()} {spec.generation} boot-error\n")
        return WORKER_BOOT_ERROR
    spec.heartbeat.notify()  # booted
    with (state / "boots.log").open("a") as boots:
        boots.write(f"{spec.slot} {os.getpid()} {spec.generation}\n")
    write_atomically(state / f"slot-{spec.slot}.pid", f"{os.getpid()} {spec.generation}\n")
    while not stopping:
        if os.getppid() != spec.coordinator_pid:
            return 0
        spec.heartbeat.notify()
        time.sleep(BEAT_INTERVAL)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--graceful-timeout", type=float, default=5.0)
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    parser.add_argument("--boot-error-slot", type=int, default=None)
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    state: Path = args.dir
    settings = Settings(
        workers=args.workers,
        pin=args.pin,
        graceful_timeout=args.graceful_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
    )

    def ready(coordinator: Coordinator) -> None:
        write_atomically(state / "ready", f"{coordinator.pid}\n")

    def stopped() -> None:
        write_atomically(state / "stopped", "stopped\n")

    coordinator = Coordinator(
        settings,
        functools.partial(fake_worker, state, args.boot_error_slot),
        on_ready=ready,
        on_stopped=stopped,
    )
    return coordinator.run()


if __name__ == "__main__":
    sys.exit(main())
