"""The coordinator: forks the workers, watches them, respawns, rolls and stops them.

This is gunicorn's ``Arbiter`` trimmed and typed (``gunicorn/arbiter.py``):

* Single-threaded, no database connection, no pool: it owns processes, never
  payloads (DESIGN.md invariant 9, "fork clean").
* Signal handlers only ``put_nowait`` the signal number on
  :attr:`Coordinator.signal_queue`; ``signal.set_wakeup_fd`` on a self-pipe
  wakes the main loop at once, so a SIGCHLD is handled within milliseconds.
* The loop is :meth:`~Coordinator.wait_for_signals` → ``handle_<signame>`` →
  :meth:`~Coordinator.reap_workers` → :meth:`~Coordinator.murder_workers` →
  :meth:`~Coordinator.manage_workers`.
* Workers live in *slots* (0..N-1): a dead worker is respawned into the same
  slot with the same CPU (uvicorn ``keep_subprocess_alive``).

Signals (documented for operators in ``ops/runbook.md``):

======== ================================================================
TERM     graceful stop: TERM every worker, wait ``graceful_timeout``, then SIGKILL
INT/QUIT quick stop: TERM every worker, SIGKILL after ``QUICK_STOP_TIMEOUT``;
         a second INT/QUIT/TERM during a graceful stop switches to quick
HUP      rolling restart, slot by slot: spawn the next generation, wait for its
         first heartbeat, then TERM (drain) the old worker
TTIN     add a slot
TTOU     remove the highest slot (its worker is TERMed and drains)
USR1     reopen logs (a no-op: logs go to stderr); sent *to workers* by the
         coordinator when a worker dies: claim its partitions now
USR2     logged and ignored (no binary upgrade)
======== ================================================================

Worker exit codes are a protocol: :data:`EXIT_OK` and :data:`EXIT_CRASH`
respawn the slot, :data:`WORKER_BOOT_ERROR` and :data:`PLUGIN_LOAD_ERROR`
halt the cluster instead of crash-looping (gunicorn ``WORKER_BOOT_ERROR`` /
``APP_LOAD_ERROR``). The coordinator then exits with that same code, so a
service manager can refuse to restart it (systemd ``RestartPreventExitStatus``).

Reload (``start --reload``): the coordinator also starts the reload watcher,
``python -m durable_cluster.reload`` (:mod:`durable_cluster.reload`), with
``os.posix_spawn``: a fresh interpreter, never a fork, so the coordinator
neither runs a watcher thread nor imports plugin code. The watcher validates
changed plugins in yet another interpreter and sends SIGHUP, the ordinary
rolling restart. The coordinator reaps it like a worker, respawns it if it
dies after :attr:`Coordinator.WATCHER_MIN_UPTIME` (gives up otherwise: reload
is then off, the cluster keeps running) and stops it first at shutdown.

The watcher is one :class:`Helper`; ``start --console`` adds another, the web
console (``python -m durable_cluster console``, :mod:`durable_cluster.console`),
which holds the database connections and threads the coordinator must not.
Every helper is spawned, reaped, respawned and stopped the same way.

Metrics (``start --metrics HOST:PORT``): before forking, the coordinator
points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory (a temporary one,
removed at exit, unless the variable was already set), so the workers'
``prometheus_client`` values go to files there. It removes a reaped
worker's live gauges (``mark_process_dead``), counts respawns per slot in
``coordinator.json`` there, and runs the metrics server
(``python -m durable_cluster metrics``, :mod:`durable_cluster.metrics`) with
``posix_spawn``: one more helper, the last one started.

Worker contract: the target runs in the child after the post-fork setup
(default signal dispositions, CPU affinity, parent-death signal, process
title) and returns an exit code. Its first ``spec.heartbeat.notify()`` means
"booted": call it once configuration and plugins are loaded, then at least
twice per ``heartbeat_timeout``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import select
import shutil
import signal
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from . import process
from .errors import HaltCluster
from .heartbeat import Heartbeat
from .process import EXIT_CRASH, EXIT_OK, PLUGIN_LOAD_ERROR, WORKER_BOOT_ERROR

if TYPE_CHECKING:
    from types import FrameType

    from .config import Settings

__all__ = [
    "EXIT_CRASH",
    "EXIT_OK",
    "PLUGIN_LOAD_ERROR",
    "WORKER_BOOT_ERROR",
    "Coordinator",
    "Helper",
    "WorkerHandle",
    "WorkerSpec",
    "WorkerTarget",
]

log = logging.getLogger("durable_cluster.coordinator")


_HALT_REASONS = {
    WORKER_BOOT_ERROR: "failed to boot",
    PLUGIN_LOAD_ERROR: "could not load a plugin",
}


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker gets to know about itself; built by the coordinator before the fork."""

    slot: int  # 0..N-1, stable across respawns
    generation: int  # bumped on each rolling restart (SIGHUP / reload)
    cpu: int | None  # CPU to pin to, None with --no-pin
    cluster_id: str  # uuid4 hex of this coordinator run
    coordinator_pid: int
    heartbeat: Heartbeat  # created before the fork; the worker calls notify()


WorkerTarget = Callable[[WorkerSpec], int]
"""Runs in the child after the fork and returns its exit code."""


@dataclass(eq=False)
class WorkerHandle:
    """The coordinator's view of one worker process."""

    pid: int
    spec: WorkerSpec
    spawned_at: float  # coordinator clock (time.monotonic seconds) just before the fork
    replaced: bool = False  # no longer owns its slot: reaped without respawn
    stop_deadline: float | None = None  # TERM was sent; SIGKILL at this time
    aborted: bool = False  # SIGABRT sent for a missed heartbeat
    killed: bool = False  # SIGKILL sent by the coordinator

    @property
    def slot(self) -> int:
        return self.spec.slot

    @property
    def heartbeat(self) -> Heartbeat:
        return self.spec.heartbeat

    @property
    def booted(self) -> bool:
        """The worker has sent its first heartbeat."""
        return self.heartbeat.notified()

    def last_seen(self) -> float:
        """The last heartbeat, or the spawn time before the first one."""
        return max(self.heartbeat.last_update(), self.spawned_at)


@dataclass
class _PendingRoll:
    """A rolling-restart step: the new worker of ``slot`` is booting, ``old`` still serves."""

    slot: int
    old: WorkerHandle
    deadline: float  # give up waiting for the new worker's first heartbeat


@dataclass(eq=False)
class Helper:
    """A helper process beside the workers: the reload watcher, the web console, the metrics server.

    Started with ``os.posix_spawn`` (a fresh interpreter: the coordinator
    never forks anything but workers, runs no thread and holds no
    connection), reaped by the main loop, respawned when it dies after
    :attr:`Coordinator.WATCHER_MIN_UPTIME` (given up otherwise: the cluster
    keeps running without it), TERMed first at shutdown.
    """

    name: str  # for the logs: "reload watcher", "console"
    argv: tuple[str, ...]  # absolute executable first
    env: dict[str, str] = field(default_factory=dict)  # added to the coordinator's environment
    off: str = "it is off"  # what giving up means, for the log
    action: str = ""  # the log actions' prefix; default: the name's last word
    pid: int | None = None
    spawned_at: float = 0.0  # coordinator clock
    given_up: bool = False

    @property
    def kind(self) -> str:
        """The log actions' prefix: ``watcher_started``, ``console_exited``, ``metrics_killed``..."""
        return self.action or self.name.split()[-1]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Coordinator:
    """Fork ``settings.worker_count`` workers running ``target`` and keep them alive.

    ``on_ready(coordinator)`` is called once the initial workers are spawned;
    ``on_stopped()`` once every worker has been reaped at shutdown (the CLI
    stops an embedded PostgreSQL there). :meth:`run` returns the process exit
    status.
    """

    SIGNALS: tuple[signal.Signals, ...] = (
        signal.SIGHUP,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGTERM,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGUSR1,
    )
    EXIT_OK = EXIT_OK
    EXIT_CRASH = EXIT_CRASH
    WORKER_BOOT_ERROR = WORKER_BOOT_ERROR
    PLUGIN_LOAD_ERROR = PLUGIN_LOAD_ERROR

    LOOP_TIMEOUT = 1.0  # seconds the main loop sleeps when nothing happens
    ROLL_POLL_INTERVAL = 0.1  # seconds between boot checks during a rolling restart
    SPAWN_JITTER = 0.1  # seconds, upper bound of the random pause between two spawns
    QUICK_STOP_TIMEOUT = 1.0  # seconds between TERM and SIGKILL in a quick stop
    KILL_REAP_TIMEOUT = 5.0  # seconds to wait for SIGKILLed workers to be reaped
    WATCHER_STOP_TIMEOUT = 5.0  # seconds between TERM and SIGKILL for a helper process at shutdown
    WATCHER_MIN_UPTIME = 10.0  # seconds: a helper dying sooner is not respawned (it would loop)
    #: A worker that dies sooner than this after its spawn died young. After
    #: RESPAWN_FREE_DEATHS young deaths in a row (enough for --poison-threshold
    #: to find a poison step), its slot waits RESPAWN_BACKOFF before the next
    #: respawn, doubled per further young death up to settings.respawn_backoff.
    RESPAWN_MIN_UPTIME = 5.0  # seconds
    RESPAWN_FREE_DEATHS = 3
    RESPAWN_BACKOFF = 0.25  # seconds

    def __init__(
        self,
        settings: Settings,
        target: WorkerTarget,
        *,
        on_ready: Callable[[Coordinator], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
        watcher: Sequence[str] = (),
        helpers: Sequence[Helper] = (),
        metrics: Sequence[str] = (),
        metrics_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.target = target
        self.on_ready = on_ready
        self.on_stopped = on_stopped
        self.cluster_id = uuid.uuid4().hex
        self.pid = os.getpid()
        self.num_workers = settings.worker_count
        self.generation = 0
        self.slots: dict[int, WorkerHandle] = {}  # slot -> the worker that owns it
        self.workers: dict[int, WorkerHandle] = {}  # pid -> every live worker, draining too
        self.signal_queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.stopping = False
        # Seams for the unit tests; nothing else should replace them.
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep
        self._cpus = process.usable_cpus() if settings.pin else []
        self._stop_request: Literal["graceful", "quick"] | None = None
        self._roll_queue: deque[int] = deque()
        self._rolling: _PendingRoll | None = None
        self._lost_slots: set[int] = set()  # slots whose worker died: next spawn is a respawn
        self._quick_deaths: dict[int, int] = {}  # slot -> workers in a row that died young
        self._respawn_at: dict[int, float] = {}  # slot -> clock time before which it stays empty
        self._wakeup: tuple[int, int] | None = None  # self-pipe (read, write)
        self._saved_wakeup_fd = -1
        self._saved_handlers: dict[int, Any] = {}
        # Helper processes, posix_spawned and reaped by this loop: the reload watcher first.
        self.watcher_command = tuple(watcher)
        self._watcher = (
            Helper("reload watcher", self.watcher_command, off="reload is off") if watcher else None
        )
        # The metrics server (argv, absolute executable first) is a helper too, started
        # last; and the PROMETHEUS_MULTIPROC_DIR of this run (None: metrics are off).
        self.metrics_command = tuple(metrics)
        metrics_server = (
            Helper(
                "metrics server",
                self.metrics_command,
                env=dict(metrics_env or {}),
                off="metrics are off",
                action="metrics",
            )
            if metrics
            else None
        )
        self.helpers: list[Helper] = [
            *([self._watcher] if self._watcher else []),
            *helpers,
            *([metrics_server] if metrics_server else []),
        ]
        self.metrics_dir: str | None = None
        self._metrics_dir_created = False
        self._metrics_env_saved: str | None = None
        self._restarts: dict[int, int] = {}  # slot -> respawns, for durable_worker_restarts_total

    # -- main loop ---------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the exit status (0 after a stop requested by signal)."""
        self.pid = os.getpid()
        process.set_process_title("durable-cluster: coordinator")
        self.init_signals()
        status = EXIT_OK
        try:
            try:
                self.setup_metrics_dir()  # before the first fork: the workers inherit it
                self.spawn_workers()
                log.info(
                    "cluster %s started with %d workers",
                    self.cluster_id,
                    len(self.slots),
                    extra={"action": "cluster_started", "pid": self.pid},
                )
                self.spawn_helpers()
                if self.on_ready is not None:
                    self.on_ready(self)
                while self._stop_request is None:
                    self.run_once()
            except HaltCluster as halt:
                log.error(halt.reason, extra={"action": "cluster_halt", "pid": self.pid})
                status = halt.exit_status or EXIT_CRASH
                self.stop(graceful=True)
            except Exception:
                log.exception(
                    "the coordinator failed; stopping the workers",
                    extra={"action": "cluster_halt", "pid": self.pid},
                )
                status = EXIT_CRASH
                self.stop(graceful=False)
            else:
                self.stop(graceful=self._stop_request == "graceful")
            finally:
                self._close_heartbeats()
                self.remove_metrics_dir()
                if self.on_stopped is not None:
                    try:
                        self.on_stopped()
                    except Exception:
                        log.exception("on_stopped failed", extra={"action": "cluster_stopped"})
                        status = status or EXIT_CRASH
        finally:
            self.restore_signals()
        return status

    def run_once(self, timeout: float | None = None) -> None:
        """One turn of the loop: wait, dispatch signals, reap, murder, manage."""
        if timeout is None:
            rolling = self._rolling is not None or bool(self._roll_queue)
            timeout = self.ROLL_POLL_INTERVAL if rolling else self.LOOP_TIMEOUT
            if self._respawn_at:
                timeout = max(0.0, min(timeout, min(self._respawn_at.values()) - self.clock()))
        for signum in self.wait_for_signals(timeout):
            self.dispatch(signum)
        if self._stop_request is not None:
            return
        self.reap_workers()
        self.murder_workers()
        self.manage_workers()

    def dispatch(self, signum: int) -> None:
        """Call ``handle_<signame>``; an unknown signal is logged, not fatal."""
        name = _signal_name(signum)
        handler: Callable[[], None] | None = getattr(self, f"handle_{name.removeprefix('SIG').lower()}", None)
        if handler is None:
            log.warning("ignoring unexpected %s", name, extra={"action": "signal_ignored", "signal": name})
            return
        handler()

    # -- signals -------------------------------------------------------------------

    def init_signals(self) -> None:
        """Install the queueing handlers and the self-pipe wakeup fd (main thread only)."""
        read_fd, write_fd = os.pipe()
        try:
            for fd in (read_fd, write_fd):
                os.set_blocking(fd, False)
            self._saved_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        self._wakeup = (read_fd, write_fd)
        for signum in self.handled_signals():
            self._saved_handlers[signum] = signal.signal(signum, self.enqueue_signal)

    def restore_signals(self) -> None:
        """Undo :meth:`init_signals` (the process may go on after :meth:`run`)."""
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._saved_handlers.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._saved_wakeup_fd)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def handled_signals(self) -> tuple[int, ...]:
        """SIGNALS, SIGCHLD, and SIGUSR2, caught only so that it is logged, not fatal.

        (gunicorn users send USR2 for a binary upgrade; its default action
        would kill the coordinator.)
        """
        return (*self.SIGNALS, signal.SIGCHLD, signal.SIGUSR2)

    def enqueue_signal(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: enqueue and return (no logging, no locks)."""
        self.signal_queue.put_nowait(signum)

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        """Return the queued signals, waiting up to ``timeout`` seconds for one."""
        self._drain_wakeup_pipe()
        signals = self._drain_signal_queue()
        if signals or timeout <= 0:
            return signals
        if self._wakeup is not None:
            select.select([self._wakeup[0]], [], [], timeout)
            self._drain_wakeup_pipe()
        else:
            self.sleep(timeout)  # no handlers installed (unit tests)
        return self._drain_signal_queue()

    def _drain_signal_queue(self) -> list[int]:
        signals: list[int] = []
        while True:
            try:
                signals.append(self.signal_queue.get_nowait())
            except queue.Empty:
                return signals

    def _drain_wakeup_pipe(self) -> None:
        if self._wakeup is None:
            return
        try:
            while os.read(self._wakeup[0], 4096):
                pass
        except BlockingIOError:
            pass

    def handle_chld(self) -> None:
        """A child died: :meth:`reap_workers` runs right after the dispatch."""

    def handle_term(self) -> None:
        """Graceful stop."""
        if self._stop_request is None:
            self._stop_request = "graceful"

    def handle_int(self) -> None:
        """Graceful stop, like TERM: Ctrl-C lets in-flight steps finish (a second one is quick)."""
        if self._stop_request is None:
            self._stop_request = "graceful"

    def handle_quit(self) -> None:
        """Quick stop."""
        self._stop_request = "quick"

    def handle_hup(self) -> None:
        """Rolling restart: replace each slot's worker by one of the next generation."""
        self.generation += 1
        self._roll_queue = deque(sorted(self.slots))
        log.info(
            "rolling restart to generation %d (%d workers)",
            self.generation,
            len(self._roll_queue),
            extra={"action": "rolling_restart", "generation": self.generation},
        )

    def handle_ttin(self) -> None:
        """Add a slot."""
        self.num_workers += 1
        log.info(
            "adding a worker: %d slots",
            self.num_workers,
            extra={"action": "cluster_scaled", "workers": self.num_workers},
        )

    def handle_ttou(self) -> None:
        """Remove the highest slot; its worker drains and is not respawned."""
        if self.num_workers <= 1:
            log.warning(
                "not removing the last worker",
                extra={"action": "cluster_scaled", "workers": self.num_workers},
            )
            return
        self.num_workers -= 1
        log.info(
            "removing a worker: %d slots",
            self.num_workers,
            extra={"action": "cluster_scaled", "workers": self.num_workers},
        )
        if self._rolling is not None and self._rolling.slot >= self.num_workers:
            self._rolling = None
        for handle in list(self.workers.values()):
            if handle.slot >= self.num_workers and handle.stop_deadline is None:
                self.retire_worker(handle)
        for slot in [slot for slot in self.slots if slot >= self.num_workers]:
            del self.slots[slot]
        self._lost_slots = {slot for slot in self._lost_slots if slot < self.num_workers}

    def handle_usr1(self) -> None:
        """Reopen logs: nothing to do while logs go to stderr."""
        log.info("USR1: no log files to reopen", extra={"action": "logs_reopened"})

    # -- workers -------------------------------------------------------------------

    def cpu_for(self, slot: int) -> int | None:
        """The CPU a slot is pinned to: slot modulo the usable CPUs, or None."""
        if not self._cpus:
            return None
        return self._cpus[slot % len(self._cpus)]

    def spawn_workers(self) -> None:
        """Fill every empty slot, pausing a random fraction of SPAWN_JITTER in between."""
        now = self.clock()
        missing = [
            slot
            for slot in range(self.num_workers)
            if slot not in self.slots and self._respawn_at.get(slot, now) <= now
        ]
        for index, slot in enumerate(missing):
            if index:
                self.sleep(random.uniform(0, self.SPAWN_JITTER))
            self.spawn_worker(slot)

    def spawn_worker(self, slot: int) -> WorkerHandle | None:
        """Fork the worker of ``slot`` (replacing the slot's owner); None if fork failed."""
        heartbeat = Heartbeat()
        spec = WorkerSpec(
            slot=slot,
            generation=self.generation,
            cpu=self.cpu_for(slot),
            cluster_id=self.cluster_id,
            coordinator_pid=self.pid,
            heartbeat=heartbeat,
        )
        spawned_at = self.clock()
        # Block our signals across the fork: a TERM sent to the child before it
        # resets its handlers stays pending and is delivered with the default
        # action, instead of vanishing into the child's copy of our queue.
        mask = (
            signal.pthread_sigmask(signal.SIG_BLOCK, self.handled_signals())
            if self._wakeup is not None
            else None
        )
        try:
            pid = os.fork()
            if pid == 0:
                process.run_worker(
                    self.target,
                    spec,
                    signals=self.handled_signals(),
                    mask=mask,
                    close_fds=self._wakeup or (),
                    close_heartbeats=[h.heartbeat for h in self.workers.values()],
                )
        except OSError as exc:
            heartbeat.close()
            log.error(
                "could not fork worker[%d]: %s",
                slot,
                exc,
                extra={"action": "worker_spawn_failed", "slot": slot},
            )
            return None
        finally:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        handle = WorkerHandle(pid=pid, spec=spec, spawned_at=spawned_at)
        self.workers[pid] = handle
        self.slots[slot] = handle
        respawn = slot in self._lost_slots
        self._lost_slots.discard(slot)
        self._respawn_at.pop(slot, None)
        if respawn:
            self.count_restart(slot)
        log.info(
            "worker[%d] %s (pid %d, generation %d, cpu %s)",
            slot,
            "respawned" if respawn else "spawned",
            pid,
            spec.generation,
            "-" if spec.cpu is None else spec.cpu,
            extra={
                "action": "worker_respawned" if respawn else "worker_spawned",
                "slot": slot,
                "pid": pid,
                "generation": spec.generation,
            },
        )
        return handle

    def kill_workers(self, signum: int) -> None:
        for handle in list(self.workers.values()):
            self.kill_worker(handle, signum)

    def kill_worker(self, handle: WorkerHandle, signum: int) -> None:
        if signum == signal.SIGKILL:
            handle.killed = True
        with contextlib.suppress(ProcessLookupError):  # already gone, reaped soon (or was)
            os.kill(handle.pid, signum)

    def retire_worker(self, handle: WorkerHandle) -> None:
        """TERM a worker and let it drain; SIGKILL after graceful_timeout; never respawned."""
        handle.replaced = True
        if self.slots.get(handle.slot) is handle:
            del self.slots[handle.slot]
        handle.stop_deadline = self.clock() + self.settings.graceful_timeout
        log.info(
            "worker[%d] (pid %d, generation %d) is draining",
            handle.slot,
            handle.pid,
            handle.spec.generation,
            extra={"action": "worker_retired", "slot": handle.slot, "pid": handle.pid},
        )
        self.kill_worker(handle, signal.SIGTERM)

    def reap_workers(self) -> None:
        """Collect dead children; halt on a boot/plugin error, otherwise respawn later."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            helper = self.helper_of(pid)
            if helper is not None:
                self._helper_exited(helper, status)
                continue
            handle = self.workers.pop(pid, None)
            if handle is None:
                log.debug("reaped unknown child %d", pid, extra={"action": "worker_exited"})
                continue
            handle.heartbeat.close()
            self.metrics_process_dead(pid)
            self._worker_exited(handle, status)

    def _worker_exited(self, handle: WorkerHandle, status: int) -> None:
        slot, pid = handle.slot, handle.pid
        owner = self.slots.get(slot) is handle
        if owner:
            del self.slots[slot]
        expected = self.stopping or handle.replaced or handle.stop_deadline is not None
        extra: dict[str, Any] = {"action": "worker_exited", "slot": slot, "pid": pid}
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            name = _signal_name(signum)
            extra["signal"] = name
            if signum == signal.SIGKILL and not handle.killed:
                log.error(
                    "worker[%d] (pid %d) was killed by SIGKILL (out of memory? check the kernel log)",
                    slot,
                    pid,
                    extra=extra,
                )
            elif handle.killed or handle.aborted:
                log.warning("worker[%d] (pid %d) was killed by %s", slot, pid, name, extra=extra)
            elif expected and signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                log.info("worker[%d] (pid %d) stopped by %s", slot, pid, name, extra=extra)
            else:
                log.error("worker[%d] (pid %d) died of %s", slot, pid, name, extra=extra)
        else:
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else EXIT_CRASH
            extra["exit_code"] = code
            if code in _HALT_REASONS and owner and not self.stopping:
                self._boot_failed(handle, code)
                return
            level = logging.INFO if code == EXIT_OK or expected else logging.WARNING
            log.log(level, "worker[%d] (pid %d) exited (code %d)", slot, pid, code, extra=extra)
        if owner and not self.stopping:
            self._lost_slots.add(slot)  # manage_workers respawns it
            self._back_off(handle)
        if not self.stopping:
            self.poke_workers()

    def _back_off(self, handle: WorkerHandle) -> None:
        """Delay the respawn of a slot whose workers keep dying young (crash loop)."""
        slot = handle.slot
        if self.clock() - handle.spawned_at >= self.RESPAWN_MIN_UPTIME:
            self._quick_deaths.pop(slot, None)
            return
        deaths = self._quick_deaths[slot] = self._quick_deaths.get(slot, 0) + 1
        ceiling = self.settings.respawn_backoff
        if deaths <= self.RESPAWN_FREE_DEATHS or ceiling <= 0:
            return
        delay = min(ceiling, self.RESPAWN_BACKOFF * 2 ** (deaths - self.RESPAWN_FREE_DEATHS - 1))
        self._respawn_at[slot] = self.clock() + delay
        log.warning(
            "worker[%d] died %d times in a row within %gs of its start: respawning in %gs",
            slot,
            deaths,
            self.RESPAWN_MIN_UPTIME,
            delay,
            extra={"action": "worker_crash_loop", "slot": slot, "deaths": deaths, "delay": delay},
        )

    def poke_workers(self) -> None:
        """A worker is gone: SIGUSR1 the booted ones, which claim its partitions now.

        Without the poke they would notice at their next partition scan. Workers
        start with USR1 ignored (:func:`process.run_worker`) until they handle it.
        """
        for handle in list(self.workers.values()):
            if handle.booted and handle.stop_deadline is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(handle.pid, signal.SIGUSR1)

    def _boot_failed(self, handle: WorkerHandle, code: int) -> None:
        """A slot owner exited with a boot/plugin error: fall back to the old generation or halt."""
        slot = handle.slot
        what = f"worker[{slot}] {_HALT_REASONS[code]} (exit {code})"
        pending = self._rolling
        if (
            pending is not None
            and pending.slot == slot
            and pending.old.pid in self.workers
            and pending.old.stop_deadline is None
        ):
            # A rolling restart brought a broken configuration or plugin: keep the
            # old generation serving rather than taking the whole cluster down.
            pending.old.replaced = False
            self.slots[slot] = pending.old
            self._rolling = None
            self._roll_queue.clear()
            log.error(
                "%s: rolling restart to generation %d abandoned, generation %d keeps running",
                what,
                handle.spec.generation,
                pending.old.spec.generation,
                extra={"action": "rolling_restart", "slot": slot, "pid": handle.pid},
            )
            return
        raise HaltCluster(f"{what}: stopping the cluster instead of crash-looping", exit_status=code)

    def murder_workers(self) -> None:
        """SIGABRT a worker whose heartbeat is older than the timeout, SIGKILL it next round.

        A draining worker is not judged by its heartbeat but SIGKILLed once its
        ``graceful_timeout`` has passed.
        """
        now = self.clock()
        timeout = self.settings.heartbeat_timeout
        for handle in list(self.workers.values()):
            if handle.stop_deadline is not None:
                if now >= handle.stop_deadline and not handle.killed:
                    log.warning(
                        "worker[%d] (pid %d) did not drain within %gs: SIGKILL",
                        handle.slot,
                        handle.pid,
                        self.settings.graceful_timeout,
                        extra={"action": "worker_killed", "slot": handle.slot, "pid": handle.pid},
                    )
                    self.kill_worker(handle, signal.SIGKILL)
                continue
            silent = now - handle.last_seen()
            if silent <= timeout:
                handle.aborted = False
                continue
            if handle.killed:
                continue
            signum = signal.SIGKILL if handle.aborted else signal.SIGABRT
            log.error(
                "worker[%d] (pid %d) sent no heartbeat for %.1fs: %s",
                handle.slot,
                handle.pid,
                silent,
                _signal_name(signum),
                extra={"action": "worker_killed", "slot": handle.slot, "pid": handle.pid},
            )
            handle.aborted = True
            self.kill_worker(handle, signum)

    def manage_workers(self) -> None:
        """Respawn empty slots, then advance a rolling restart."""
        if self.stopping:
            return
        self.spawn_workers()
        self.roll_workers()
        self.spawn_helpers()

    def roll_workers(self) -> None:
        """Advance the rolling restart by at most one slot (never blocks)."""
        while True:
            pending = self._rolling
            if pending is not None:
                new = self.slots.get(pending.slot)
                if new is None:
                    return  # the new worker died before booting; it is being respawned
                if not new.booted:
                    if self.clock() < pending.deadline:
                        return
                    log.warning(
                        "worker[%d] (generation %d) has not sent a heartbeat within %gs; "
                        "replacing the old worker anyway",
                        new.slot,
                        new.spec.generation,
                        self.settings.heartbeat_timeout,
                        extra={"action": "rolling_restart", "slot": new.slot, "pid": new.pid},
                    )
                self._rolling = None
                if pending.old.pid in self.workers and pending.old.stop_deadline is None:
                    self.retire_worker(pending.old)
                if not self._roll_queue:
                    log.info(
                        "rolling restart to generation %d done",
                        self.generation,
                        extra={"action": "rolling_restart", "generation": self.generation},
                    )
            if not self._roll_queue:
                return
            slot = self._roll_queue.popleft()
            old = self.slots.get(slot)
            if old is None or old.spec.generation == self.generation:
                continue  # empty (respawned at the new generation) or already rolled
            old.replaced = True
            if self.spawn_worker(slot) is None:
                old.replaced = False
                self.slots[slot] = old
                self._roll_queue.appendleft(slot)  # fork failed: try again next turn
                return
            self._rolling = _PendingRoll(
                slot=slot, old=old, deadline=self.clock() + self.settings.heartbeat_timeout
            )
            return

    # -- helper processes (the reload watcher, the web console, the metrics server) -------

    @property
    def watcher_pid(self) -> int | None:
        """The reload watcher's pid while it runs."""
        return self._watcher.pid if self._watcher is not None else None

    def helper_of(self, pid: int) -> Helper | None:
        return next((helper for helper in self.helpers if helper.pid == pid), None)

    def spawn_helpers(self) -> None:
        """Start every helper that should run and does not (posix_spawn, no fork).

        A child starts with an empty signal mask and default dispositions for
        the signals the coordinator catches; its file descriptors are the
        standard three (the coordinator's pipe and heartbeat files are
        close-on-exec). Its environment is ours plus the helper's ``env``.
        """
        if self.stopping:
            return
        for helper in self.helpers:
            if helper.pid is None and not helper.given_up:
                self._spawn_helper(helper)

    spawn_watcher = spawn_helpers  # the reload watcher was the first helper

    def _spawn_helper(self, helper: Helper) -> None:
        try:
            pid = os.posix_spawn(
                helper.argv[0],
                list(helper.argv),
                {**os.environ, **helper.env},
                setsigmask=(),
                setsigdef=self.handled_signals(),
            )
        except OSError as exc:
            helper.given_up = True
            log.error(
                "could not start the %s: %s; %s",
                helper.name,
                exc,
                helper.off,
                extra={"action": f"{helper.kind}_failed"},
            )
            return
        helper.pid = pid
        helper.spawned_at = self.clock()
        log.info(
            "%s started (pid %d)",
            helper.name,
            pid,
            extra={"action": f"{helper.kind}_started", "pid": pid},
        )

    def _helper_exited(self, helper: Helper, status: int) -> None:
        pid, helper.pid = helper.pid, None
        if os.WIFSIGNALED(status):
            how = f"was killed by {_signal_name(os.WTERMSIG(status))}"
        else:
            how = f"exited (code {os.WEXITSTATUS(status) if os.WIFEXITED(status) else EXIT_CRASH})"
        extra: dict[str, Any] = {"action": f"{helper.kind}_exited", "pid": pid}
        if self.stopping:
            log.info("%s (pid %s) %s", helper.name, pid, how, extra=extra)
            return
        if self.clock() - helper.spawned_at < self.WATCHER_MIN_UPTIME:
            helper.given_up = True
            log.error(
                "%s (pid %s) %s within %gs of its start; %s, the workers keep running",
                helper.name,
                pid,
                how,
                self.WATCHER_MIN_UPTIME,
                helper.off,
                extra=extra,
            )
            return
        log.warning("%s (pid %s) %s; starting a new one", helper.name, pid, how, extra=extra)

    def stop_helpers(self) -> None:
        """TERM every running helper (reaped by :meth:`reap_workers` / :meth:`reap_helpers`)."""
        for helper in self.helpers:
            if helper.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(helper.pid, signal.SIGTERM)

    stop_watcher = stop_helpers

    def reap_helpers(self) -> None:
        """At shutdown: wait up to WATCHER_STOP_TIMEOUT for the TERMed helpers, then SIGKILL them."""
        if self._wait_for_helpers(self.WATCHER_STOP_TIMEOUT):
            return
        for helper in self.helpers:
            if helper.pid is None:
                continue
            log.warning(
                "%s (pid %d) did not stop within %gs: SIGKILL",
                helper.name,
                helper.pid,
                self.WATCHER_STOP_TIMEOUT,
                extra={"action": f"{helper.kind}_killed", "pid": helper.pid},
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(helper.pid, signal.SIGKILL)
        self._wait_for_helpers(self.KILL_REAP_TIMEOUT)

    reap_watcher = reap_helpers

    def _wait_for_helpers(self, timeout: float) -> bool:
        """Reap until every helper is gone (True) or ``timeout`` seconds passed (False)."""
        deadline = self.clock() + timeout
        while True:
            self.reap_workers()
            if all(helper.pid is None for helper in self.helpers):
                return True
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            self.wait_for_signals(min(remaining, self.ROLL_POLL_INTERVAL))

    # -- metrics (start --metrics): the multiprocess directory and the metrics server -------

    def setup_metrics_dir(self) -> None:
        """Point PROMETHEUS_MULTIPROC_DIR at a fresh directory, when metrics are on.

        On with ``--metrics`` (a temporary directory, removed at exit) or when
        the variable is already set (that directory, emptied: a standalone
        ``durable-cluster metrics`` reads it too). Off otherwise: the workers
        then keep their values in memory.
        """
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not self.metrics_command and not given:
            return
        from . import metrics  # noqa: PLC0415 - only with metrics; imports no prometheus_client

        self._metrics_env_saved = given
        if given:
            os.makedirs(given, exist_ok=True)
            metrics.clear_directory(given)
            self.metrics_dir = given
        else:
            self.metrics_dir = tempfile.mkdtemp(prefix="durable-cluster-metrics-")
            self._metrics_dir_created = True
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self._restarts = dict.fromkeys(range(self.num_workers), 0)
        self._write_metrics_state()
        log.info(
            "metrics: worker values in %s",
            self.metrics_dir,
            extra={"action": "metrics_directory", "path": self.metrics_dir},
        )

    def remove_metrics_dir(self) -> None:
        """At exit: remove the temporary directory and restore the environment."""
        if self.metrics_dir is None or not self._metrics_dir_created:
            return
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        if self._metrics_env_saved is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.metrics_dir = None
        self._metrics_dir_created = False

    def metrics_process_dead(self, pid: int) -> None:
        """A worker was reaped: drop its live gauges (``prometheus_client`` ``mark_process_dead``)."""
        if self.metrics_dir is None:
            return
        from prometheus_client import multiprocess  # noqa: PLC0415 - after PROMETHEUS_MULTIPROC_DIR is set

        try:
            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        except OSError as exc:
            log.warning(
                "metrics: cannot drop the values of pid %d: %s",
                pid,
                exc,
                extra={"action": "metrics_cleanup_failed", "pid": pid},
            )

    def count_restart(self, slot: int) -> None:
        """A slot's worker was respawned: one more ``durable_worker_restarts_total{slot}``."""
        if self.metrics_dir is None:
            return
        self._restarts[slot] = self._restarts.get(slot, 0) + 1
        self._write_metrics_state()

    def _write_metrics_state(self) -> None:
        from . import metrics  # noqa: PLC0415

        assert self.metrics_dir is not None
        try:
            metrics.write_state(self.metrics_dir, cluster_id=self.cluster_id, restarts=self._restarts)
        except OSError as exc:
            log.warning(
                "metrics: cannot write the restart counts: %s",
                exc,
                extra={"action": "metrics_state_failed"},
            )

    # -- shutdown ------------------------------------------------------------------

    def stop(self, graceful: bool = True) -> None:
        """TERM every worker, reap until the timeout, SIGKILL the rest, reap once more.

        A second INT, QUIT or TERM during a graceful stop switches to a quick one.
        """
        self.stopping = True
        self._roll_queue.clear()
        self._rolling = None
        self.stop_helpers()  # first: no SIGHUP may start a roll while we stop
        timeout = self.settings.graceful_timeout if graceful else self.QUICK_STOP_TIMEOUT
        log.info(
            "stopping %d workers (%s, up to %gs)",
            len(self.workers),
            "graceful" if graceful else "quick",
            timeout,
            extra={"action": "cluster_stopping", "pid": self.pid},
        )
        self.kill_workers(signal.SIGTERM)
        deadline = self.clock() + timeout
        quick = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
        while True:
            self.reap_workers()
            remaining = deadline - self.clock()
            if not self.workers or remaining <= 0:
                break
            for signum in self.wait_for_signals(min(remaining, self.LOOP_TIMEOUT)):
                if graceful and signum in quick:
                    graceful = False
                    deadline = min(deadline, self.clock() + self.QUICK_STOP_TIMEOUT)
                    log.info(
                        "%s during a graceful stop: switching to a quick stop",
                        _signal_name(signum),
                        extra={"action": "cluster_stopping", "pid": self.pid},
                    )
        if self.workers:
            log.warning(
                "%d workers still running: SIGKILL",
                len(self.workers),
                extra={"action": "worker_killed", "pid": self.pid},
            )
            self.kill_workers(signal.SIGKILL)
            deadline = self.clock() + self.KILL_REAP_TIMEOUT
            while True:
                self.reap_workers()
                remaining = deadline - self.clock()
                if not self.workers or remaining <= 0:
                    break
                self.wait_for_signals(min(remaining, self.ROLL_POLL_INTERVAL))
        for handle in self.workers.values():
            log.error(
                "worker[%d] (pid %d) survived SIGKILL",
                handle.slot,
                handle.pid,
                extra={"action": "worker_killed", "slot": handle.slot, "pid": handle.pid},
            )
        self.reap_helpers()
        log.info("cluster stopped", extra={"action": "cluster_stopped", "pid": self.pid})

    def _close_heartbeats(self) -> None:
        for handle in self.workers.values():
            handle.heartbeat.close()
