"""The child side of a fork, and small process-wide helpers.

:func:`run_worker` is what a freshly forked worker runs: everything that
changes the whole process (signal dispositions, parent-death signal, CPU
affinity, process title) happens there, before the worker target runs, as
gunicorn does in ``Worker.init_process``; then the target's result becomes the
exit status and the child leaves with ``os._exit``, never returning into the
coordinator's stack.

The exit codes are the protocol between a worker and the coordinator
(re-exported by :mod:`durable_cluster.coordinator`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from .coordinator import WorkerSpec, WorkerTarget
    from .heartbeat import Heartbeat

__all__ = [
    "EXIT_CRASH",
    "EXIT_OK",
    "PLUGIN_LOAD_ERROR",
    "WORKER_BOOT_ERROR",
    "parent_alive",
    "pin_to_cpu",
    "reset_signals",
    "run_target",
    "run_worker",
    "set_parent_death_signal",
    "set_process_title",
    "usable_cpus",
]

log = logging.getLogger("durable_cluster.coordinator")

EXIT_OK = 0  # the worker stopped cleanly
EXIT_CRASH = 1  # the worker crashed at run time: respawn it into its slot
WORKER_BOOT_ERROR = 3  # the worker could not boot (bad configuration): halt
PLUGIN_LOAD_ERROR = 4  # a plugin failed to import: halt

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def run_worker(
    target: WorkerTarget,
    spec: WorkerSpec,
    *,
    signals: Iterable[int],
    mask: Iterable[int | signal.Signals] | None,
    close_fds: Iterable[int] = (),
    close_heartbeats: Iterable[Heartbeat] = (),
) -> NoReturn:
    """In the child after ``os.fork()``: set the process up, run ``target``, ``os._exit``.

    ``signals`` get their default disposition back and ``mask`` (the signal
    mask from before the coordinator blocked its signals around the fork) is
    restored; ``close_fds`` (the coordinator's self-pipe) and the other
    workers' heartbeats are closed. The worker dies with its coordinator
    (``PR_SET_PDEATHSIG``), and exits at once if the coordinator is already gone.
    """
    code = EXIT_CRASH
    try:
        # SIGUSR1 is the coordinator's "a worker died, rebalance now" poke: harmless
        # to a target that does not handle it (the default action would kill it).
        reset_signals(signals, mask, ignored=(signal.SIGUSR1,))
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for heartbeat in close_heartbeats:
            if heartbeat is not spec.heartbeat:
                heartbeat.close()
        set_parent_death_signal(signal.SIGKILL)
        if not parent_alive(spec.coordinator_pid):
            _exit(EXIT_OK)  # the coordinator died before prctl: nobody to work for
        if spec.cpu is not None:
            try:
                pin_to_cpu(spec.cpu)
            except OSError as exc:
                log.warning(
                    "worker[%d] could not pin to CPU %d: %s",
                    spec.slot,
                    spec.cpu,
                    exc,
                    extra={"action": "worker_pin_failed", "slot": spec.slot, "pid": os.getpid()},
                )
        set_process_title(f"durable-cluster: worker[{spec.slot}]")
        code = run_target(target, spec)
    except BaseException:
        log.error(
            "worker[%d] post-fork setup failed:\n%s",
            spec.slot,
            traceback.format_exc().rstrip(),
            extra={"action": "worker_crashed", "slot": spec.slot, "pid": os.getpid()},
        )
        code = EXIT_CRASH
    _exit(code)


def run_target(target: WorkerTarget, spec: WorkerSpec) -> int:
    """Call ``target`` and turn its outcome into an exit status (0-255).

    A target that raises is a crash (:data:`EXIT_CRASH`, respawned); its
    traceback is logged. ``SystemExit`` keeps its integer code.
    """
    try:
        result: object = target(spec)
    except SystemExit as exc:
        result = exc.code if exc.code is not None else EXIT_OK
    except BaseException:
        log.error(
            "worker[%d] crashed:\n%s",
            spec.slot,
            traceback.format_exc().rstrip(),
            extra={"action": "worker_crashed", "slot": spec.slot, "pid": os.getpid()},
        )
        return EXIT_CRASH
    if isinstance(result, int) and not isinstance(result, bool) and 0 <= result <= 255:
        return result
    log.error(
        "worker[%d] returned %r instead of an exit code",
        spec.slot,
        result,
        extra={"action": "worker_crashed", "slot": spec.slot, "pid": os.getpid()},
    )
    return EXIT_CRASH


def _exit(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # best effort: os._exit skips the flush
            stream.flush()
    os._exit(code)


def reset_signals(
    signals: Iterable[int],
    mask: Iterable[int | signal.Signals] | None = None,
    ignored: Iterable[int] = (),
) -> None:
    """Give ``signals`` their default disposition, ignore ``ignored``, drop the wakeup fd, restore ``mask``.

    The child inherits the coordinator's handlers (which only feed the
    coordinator's queue) and its blocked-signal mask; the worker target installs
    its own handlers afterwards.
    """
    signal.set_wakeup_fd(-1)
    for signum in signals:
        signal.signal(signum, signal.SIG_DFL)
    for signum in ignored:
        signal.signal(signum, signal.SIG_IGN)
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def set_parent_death_signal(signum: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies.

    Returns False where ``prctl(PR_SET_PDEATHSIG)`` does not exist. Callers must
    then check :func:`parent_alive`, since the parent may have died before the
    call.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    result = libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signum), zero, zero, zero)
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    return True


def parent_alive(parent_pid: int) -> bool:
    """Whether ``parent_pid`` is still our parent (gunicorn ``is_parent_alive``)."""
    return os.getppid() == parent_pid


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, sorted (respects cgroup/cpuset limits)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin_to_cpu(cpu: int) -> bool:
    """Pin the calling process to ``cpu``; False where affinity is not supported."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {cpu})
    return True


def set_process_title(title: str) -> bool:
    """Set the process title when the optional ``setproctitle`` module is installed."""
    try:
        module = importlib.import_module("setproctitle")
    except ImportError:
        return False
    module.setproctitle(title)
    return True
