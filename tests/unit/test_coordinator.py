"""The coordinator without real processes.

``os.fork``, ``os.waitpid`` and ``os.kill`` are replaced by :class:`FakeOS`
(gunicorn ``tests/test_arbiter.py`` style), the clock and sleep by a fake
clock, and signals are fed straight into ``signal_queue``. The fake fork only
ever returns in the parent, so no test runs a worker target.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from durable_cluster import process
from durable_cluster.config import Settings
from durable_cluster.coordinator import (
    EXIT_CRASH,
    PLUGIN_LOAD_ERROR,
    WORKER_BOOT_ERROR,
    Coordinator,
    WorkerSpec,
)
from durable_cluster.errors import HaltCluster
from durable_cluster.process import run_target

LOGGER = "durable_cluster.coordinator"


class FakeOS:
    """Processes as bookkeeping: fork hands out pids, kill records and reacts."""

    def __init__(self) -> None:
        self.next_pid = 100
        self.forks: list[int] = []
        self.kills: list[tuple[int, int]] = []
        self.alive: set[int] = set()
        self.pending: list[tuple[int, int]] = []  # what waitpid will return
        self.obey_term = True  # a TERMed worker exits 0

    def fork(self) -> int:
        self.next_pid += 1
        self.forks.append(self.next_pid)
        self.alive.add(self.next_pid)
        return self.next_pid

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        assert (pid, options) == (-1, os.WNOHANG)
        return self.pending.pop(0) if self.pending else (0, 0)

    def kill(self, pid: int, signum: int) -> None:
        self.kills.append((pid, signum))
        if signum == signal.SIGKILL:
            self.die(pid, signal.SIGKILL)
        elif signum == signal.SIGTERM and self.obey_term:
            self.exit(pid, 0)

    def exit(self, pid: int, code: int) -> None:
        if pid in self.alive:
            self.alive.discard(pid)
            self.pending.append((pid, code << 8))

    def die(self, pid: int, signum: int) -> None:
        if pid in self.alive:
            self.alive.discard(pid)
            self.pending.append((pid, signum))

    def signals_to(self, pid: int) -> list[int]:
        return [signum for target, signum in self.kills if target == pid]


class FakeClock:
    def __init__(self) -> None:
        # In the past, so that a real Heartbeat.notify() (time.monotonic) is "now or later".
        self.now = time.monotonic() - 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def never_called(spec: WorkerSpec) -> int:
    raise AssertionError("the worker target runs only in a forked child")


@pytest.fixture
def fake_os(monkeypatch: pytest.MonkeyPatch) -> FakeOS:
    fake = FakeOS()
    monkeypatch.setattr(os, "fork", fake.fork)
    monkeypatch.setattr(os, "waitpid", fake.waitpid)
    monkeypatch.setattr(os, "kill", fake.kill)
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_coordinator(clock: FakeClock, **settings: object) -> Coordinator:
    options: dict[str, object] = {
        "workers": 2,
        "graceful_timeout": 10.0,
        "heartbeat_timeout": 5.0,
        **settings,
    }
    coordinator = Coordinator(Settings(**options), never_called)  # type: ignore[arg-type]
    coordinator.clock = clock
    coordinator.sleep = clock.sleep
    return coordinator


@pytest.fixture
def coordinator(fake_os: FakeOS, clock: FakeClock) -> Iterator[Coordinator]:
    coordinator = make_coordinator(clock)
    yield coordinator
    for handle in coordinator.workers.values():
        handle.heartbeat.close()


def pid_of(coordinator: Coordinator, slot: int) -> int:
    return coordinator.slots[slot].pid


def actions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(record, "action", "") for record in caplog.records]


def turn(coordinator: Coordinator, *signals: int) -> None:
    for signum in signals:
        coordinator.signal_queue.put_nowait(signum)
    coordinator.run_once(timeout=0)


# -- spawning -----------------------------------------------------------------------


def test_spawn_fills_every_slot(coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock) -> None:
    coordinator.spawn_workers()

    assert sorted(coordinator.slots) == [0, 1]
    assert [pid_of(coordinator, 0), pid_of(coordinator, 1)] == fake_os.forks
    assert set(coordinator.workers) == set(fake_os.forks)
    cpus = process.usable_cpus()
    for slot, handle in coordinator.slots.items():
        assert handle.spec.slot == slot
        assert handle.spec.generation == 0
        assert handle.spec.cpu == cpus[slot % len(cpus)]
        assert handle.spec.cluster_id == coordinator.cluster_id
        assert handle.spec.coordinator_pid == os.getpid()
        assert not handle.booted
    # one random pause between the two spawns, never more than SPAWN_JITTER
    assert len(clock.sleeps) == 1
    assert 0 <= clock.sleeps[0] <= Coordinator.SPAWN_JITTER


def test_no_pin_means_no_cpu(fake_os: FakeOS, clock: FakeClock) -> None:
    coordinator = make_coordinator(clock, pin=False)
    coordinator.spawn_workers()
    try:
        assert [h.spec.cpu for h in coordinator.slots.values()] == [None, None]
    finally:
        coordinator.stop()


def test_spawn_logs_one_action_per_worker(coordinator: Coordinator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    coordinator.spawn_workers()
    spawned = [r for r in caplog.records if getattr(r, "action", "") == "worker_spawned"]
    assert [getattr(r, "slot", None) for r in spawned] == [0, 1]
    assert [getattr(r, "pid", None) for r in spawned] == [pid_of(coordinator, s) for s in (0, 1)]


def test_fork_failure_leaves_the_slot_empty_until_next_turn(
    coordinator: Coordinator, fake_os: FakeOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    coordinator.spawn_workers()
    assert coordinator.slots == {}
    monkeypatch.setattr(os, "fork", fake_os.fork)
    turn(coordinator)
    assert sorted(coordinator.slots) == [0, 1]


# -- reaping and respawning ---------------------------------------------------------


def test_crashed_worker_is_respawned_into_the_same_slot(
    coordinator: Coordinator, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    coordinator.spawn_workers()
    old = coordinator.slots[0]
    other = pid_of(coordinator, 1)

    fake_os.exit(old.pid, EXIT_CRASH)
    turn(coordinator, signal.SIGCHLD)

    new = coordinator.slots[0]
    assert new.pid != old.pid
    assert new.pid == fake_os.forks[-1]
    assert new.spec.cpu == old.spec.cpu
    assert new.spec.generation == old.spec.generation
    assert pid_of(coordinator, 1) == other
    assert old.pid not in coordinator.workers
    assert old.heartbeat.closed
    assert "worker_exited" in actions(caplog)
    assert "worker_respawned" in actions(caplog)


def test_clean_exit_is_respawned_too(coordinator: Coordinator, fake_os: FakeOS) -> None:
    coordinator.spawn_workers()
    old = pid_of(coordinator, 1)
    fake_os.exit(old, 0)
    turn(coordinator, signal.SIGCHLD)
    assert pid_of(coordinator, 1) not in (old, pid_of(coordinator, 0))
    assert len(fake_os.forks) == 3


def test_sigkill_from_outside_is_an_error_with_an_oom_hint(
    coordinator: Coordinator, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.spawn_workers()
    victim = pid_of(coordinator, 0)
    fake_os.die(victim, signal.SIGKILL)
    turn(coordinator, signal.SIGCHLD)

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "SIGKILL" in errors[0].getMessage()
    assert "out of memory" in errors[0].getMessage()
    assert getattr(errors[0], "signal", None) == "SIGKILL"
    assert pid_of(coordinator, 0) != victim


def test_crash_signal_is_logged_and_respawned(
    coordinator: Coordinator, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.spawn_workers()
    victim = pid_of(coordinator, 1)
    fake_os.die(victim, signal.SIGSEGV)
    turn(coordinator, signal.SIGCHLD)
    assert any("SIGSEGV" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert pid_of(coordinator, 1) != victim


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            WORKER_BOOT_ERROR,
            "worker[0] failed to boot (exit 3): stopping the cluster instead of crash-looping",
        ),
        (
            PLUGIN_LOAD_ERROR,
            "worker[0] could not load a plugin (exit 4): stopping the cluster instead of crash-looping",
        ),
    ],
)
def test_boot_and_plugin_errors_halt(
    coordinator: Coordinator, fake_os: FakeOS, code: int, message: str
) -> None:
    coordinator.spawn_workers()
    fake_os.exit(pid_of(coordinator, 0), code)
    coordinator.signal_queue.put_nowait(signal.SIGCHLD)

    with pytest.raises(HaltCluster) as caught:
        coordinator.run_once(timeout=0)

    assert caught.value.reason == message
    assert caught.value.exit_status == code
    assert len(fake_os.forks) == 2  # no respawn: no crash loop


def test_boot_error_while_stopping_does_not_halt(coordinator: Coordinator, fake_os: FakeOS) -> None:
    coordinator.spawn_workers()
    fake_os.obey_term = False
    for pid in list(fake_os.alive):
        fake_os.exit(pid, WORKER_BOOT_ERROR)
    coordinator.stop()
    assert coordinator.workers == {}


def test_unknown_children_are_reaped_quietly(
    coordinator: Coordinator, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    coordinator.spawn_workers()
    caplog.clear()
    fake_os.pending.append((4242, 0))
    coordinator.reap_workers()
    assert caplog.records == []
    assert len(coordinator.workers) == 2


# -- heartbeats ---------------------------------------------------------------------


def test_stale_heartbeat_gets_sigabrt_then_sigkill(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.spawn_workers()
    stuck = pid_of(coordinator, 0)
    coordinator.slots[1].heartbeat.notify()

    clock.now += 4.0  # within the timeout counted from the spawn
    coordinator.murder_workers()
    assert fake_os.kills == []

    clock.now += 2.0  # 6 s after spawn, no heartbeat from slot 0
    slot1 = coordinator.slots[1]
    clock.now = max(clock.now, slot1.heartbeat.last_update() + 1)
    slot1.heartbeat.notify()
    coordinator.murder_workers()
    assert fake_os.kills == [(stuck, signal.SIGABRT)]
    assert "worker_killed" in actions(caplog)

    coordinator.murder_workers()
    assert fake_os.kills == [(stuck, signal.SIGABRT), (stuck, signal.SIGKILL)]

    turn(coordinator, signal.SIGCHLD)  # killed: reaped and respawned into slot 0
    assert pid_of(coordinator, 0) not in (stuck, slot1.pid)
    assert pid_of(coordinator, 1) == slot1.pid
    assert not any("out of memory" in r.getMessage() for r in caplog.records)


def test_recent_heartbeat_is_left_alone(coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock) -> None:
    coordinator.spawn_workers()
    clock.now = time.monotonic() + 2.0  # 1000 s after the spawns
    for handle in coordinator.slots.values():
        handle.heartbeat.notify()
    coordinator.murder_workers()
    assert fake_os.kills == []
    assert all(handle.booted for handle in coordinator.slots.values())


# -- stopping -----------------------------------------------------------------------


def test_graceful_stop_terms_everyone_and_waits(
    coordinator: Coordinator, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    coordinator.spawn_workers()
    pids = list(fake_os.forks)
    coordinator.stop(graceful=True)

    assert sorted(fake_os.kills) == sorted((pid, signal.SIGTERM) for pid in pids)
    assert coordinator.workers == {}
    assert coordinator.slots == {}
    assert len(fake_os.forks) == 2
    assert {"cluster_stopping", "cluster_stopped"} <= set(actions(caplog))


def test_graceful_stop_kills_what_outlives_the_timeout(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock
) -> None:
    coordinator.spawn_workers()
    fake_os.obey_term = False
    start = clock.now
    coordinator.stop(graceful=True)

    assert clock.now - start >= coordinator.settings.graceful_timeout
    for pid in fake_os.forks:
        assert fake_os.signals_to(pid) == [signal.SIGTERM, signal.SIGKILL]
    assert coordinator.workers == {}


def test_second_signal_turns_a_graceful_stop_quick(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock
) -> None:
    coordinator.spawn_workers()
    fake_os.obey_term = False
    coordinator.signal_queue.put_nowait(signal.SIGINT)
    start = clock.now
    coordinator.stop(graceful=True)

    assert clock.now - start < coordinator.settings.graceful_timeout
    assert clock.now - start >= Coordinator.QUICK_STOP_TIMEOUT
    for pid in fake_os.forks:
        assert fake_os.signals_to(pid) == [signal.SIGTERM, signal.SIGKILL]


@pytest.fixture
def no_signal_handlers(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> Coordinator:
    """run() without touching the pytest process's signal handlers."""
    monkeypatch.setattr(coordinator, "init_signals", lambda: None)
    monkeypatch.setattr(coordinator, "restore_signals", lambda: None)
    return coordinator


def test_run_term_is_a_graceful_stop(
    no_signal_handlers: Coordinator, fake_os: FakeOS, clock: FakeClock
) -> None:
    coordinator = no_signal_handlers
    events: list[str] = []
    coordinator.on_ready = lambda c: events.append(f"ready {len(c.slots)}")
    coordinator.on_stopped = lambda: events.append(f"stopped {len(coordinator.workers)}")
    coordinator.signal_queue.put_nowait(signal.SIGTERM)

    assert coordinator.run() == 0
    assert events == ["ready 2", "stopped 0"]
    assert [signum for _, signum in fake_os.kills] == [signal.SIGTERM, signal.SIGTERM]


def test_run_int_is_a_graceful_stop(
    no_signal_handlers: Coordinator, fake_os: FakeOS, clock: FakeClock
) -> None:
    """Ctrl-C stops gracefully (a second Ctrl-C turns the stop quick)."""
    coordinator = no_signal_handlers
    fake_os.obey_term = False
    coordinator.signal_queue.put_nowait(signal.SIGINT)
    start = clock.now

    assert coordinator.run() == 0
    assert clock.now - start >= coordinator.settings.graceful_timeout


@pytest.mark.parametrize("signum", [signal.SIGQUIT])
def test_run_quit_is_a_quick_stop(
    no_signal_handlers: Coordinator, fake_os: FakeOS, clock: FakeClock, signum: int
) -> None:
    coordinator = no_signal_handlers
    fake_os.obey_term = False
    coordinator.signal_queue.put_nowait(signum)
    start = clock.now

    assert coordinator.run() == 0
    elapsed = clock.now - start
    assert Coordinator.QUICK_STOP_TIMEOUT <= elapsed < coordinator.settings.graceful_timeout
    for pid in fake_os.forks:
        assert fake_os.signals_to(pid) == [signal.SIGTERM, signal.SIGKILL]


def test_run_halts_with_the_worker_exit_code(
    no_signal_handlers: Coordinator, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = no_signal_handlers
    stopped: list[bool] = []
    coordinator.on_stopped = lambda: stopped.append(True)

    def fail_first_boot(c: Coordinator) -> None:
        fake_os.exit(pid_of(c, 0), WORKER_BOOT_ERROR)
        c.signal_queue.put_nowait(signal.SIGCHLD)

    coordinator.on_ready = fail_first_boot

    assert coordinator.run() == WORKER_BOOT_ERROR
    assert stopped == [True]
    halt = [r for r in caplog.records if getattr(r, "action", "") == "cluster_halt"]
    assert [r.levelno for r in halt] == [logging.ERROR]
    assert halt[0].getMessage() == (
        "worker[0] failed to boot (exit 3): stopping the cluster instead of crash-looping"
    )
    assert len(fake_os.forks) == 2
    assert fake_os.signals_to(fake_os.forks[1]) == [signal.SIGTERM]
    assert coordinator.workers == {}


# -- scaling and signals ------------------------------------------------------------


def test_ttin_adds_a_slot_and_ttou_removes_the_highest(coordinator: Coordinator, fake_os: FakeOS) -> None:
    coordinator.spawn_workers()
    turn(coordinator, signal.SIGTTIN)
    assert sorted(coordinator.slots) == [0, 1, 2]
    third = pid_of(coordinator, 2)

    fake_os.obey_term = False
    turn(coordinator, signal.SIGTTOU)
    assert fake_os.kills == [(third, signal.SIGTERM)]
    assert sorted(coordinator.slots) == [0, 1]
    assert third in coordinator.workers  # draining

    fake_os.exit(third, 0)
    turn(coordinator, signal.SIGCHLD)
    assert third not in coordinator.workers
    assert sorted(coordinator.slots) == [0, 1]
    assert len(fake_os.forks) == 3  # not respawned


def test_ttou_keeps_the_last_worker(fake_os: FakeOS, clock: FakeClock) -> None:
    coordinator = make_coordinator(clock, workers=1)
    coordinator.spawn_workers()
    try:
        turn(coordinator, signal.SIGTTOU)
        assert fake_os.kills == []
        assert list(coordinator.slots) == [0]
    finally:
        coordinator.stop()


def test_draining_worker_is_killed_after_the_graceful_timeout(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock
) -> None:
    coordinator.spawn_workers()
    turn(coordinator, signal.SIGTTIN)
    fake_os.obey_term = False
    turn(coordinator, signal.SIGTTOU)
    third = fake_os.forks[-1]

    clock.now += coordinator.settings.graceful_timeout + 0.1
    for handle in coordinator.slots.values():
        handle.heartbeat.notify()  # the others are fine
    clock.now = max(clock.now, time.monotonic())
    turn(coordinator)
    assert fake_os.signals_to(third) == [signal.SIGTERM, signal.SIGKILL]
    turn(coordinator, signal.SIGCHLD)
    assert third not in coordinator.workers
    assert len(fake_os.forks) == 3


def test_unknown_signal_is_logged_not_fatal(
    coordinator: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.spawn_workers()
    turn(coordinator, signal.SIGWINCH)
    assert "signal_ignored" in actions(caplog)
    assert sorted(coordinator.slots) == [0, 1]


def test_usr1_is_logged(coordinator: Coordinator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    turn(coordinator, signal.SIGUSR1)
    assert "logs_reopened" in actions(caplog)


# -- rolling restart ----------------------------------------------------------------


def test_hup_rolls_slot_by_slot(
    coordinator: Coordinator, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    coordinator.spawn_workers()
    old0, old1 = pid_of(coordinator, 0), pid_of(coordinator, 1)
    fake_os.obey_term = False

    turn(coordinator, signal.SIGHUP)
    new0 = coordinator.slots[0]
    assert new0.spec.generation == 1
    assert fake_os.forks == [old0, old1, new0.pid]
    assert fake_os.kills == []  # the old worker serves until the new one boots
    assert pid_of(coordinator, 1) == old1

    turn(coordinator)  # still booting: nothing happens
    assert fake_os.kills == []
    assert len(fake_os.forks) == 3

    new0.heartbeat.notify()  # booted
    turn(coordinator)
    assert fake_os.kills == [(old0, signal.SIGTERM)]
    new1 = coordinator.slots[1]
    assert new1.spec.generation == 1
    assert fake_os.forks[-1] == new1.pid

    new1.heartbeat.notify()
    turn(coordinator)
    assert fake_os.kills == [(old0, signal.SIGTERM), (old1, signal.SIGTERM)]

    # the old generation drains and is reaped, never respawned
    fake_os.exit(old0, 0)
    fake_os.exit(old1, 0)
    turn(coordinator, signal.SIGCHLD)
    assert coordinator.workers.keys() == {new0.pid, new1.pid}
    assert coordinator.slots == {0: new0, 1: new1}
    assert len(fake_os.forks) == 4
    assert new0.spec.cpu == coordinator.cpu_for(0)
    assert actions(caplog).count("rolling_restart") == 2  # started, done


def test_hup_gives_up_waiting_for_a_silent_new_worker(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock
) -> None:
    coordinator.spawn_workers()
    old0 = pid_of(coordinator, 0)
    fake_os.obey_term = False
    turn(coordinator, signal.SIGHUP)
    clock.now += coordinator.settings.heartbeat_timeout + 0.1
    turn(coordinator)
    assert (old0, signal.SIGTERM) in fake_os.kills


def test_hup_with_a_broken_new_generation_keeps_the_old_one(
    coordinator: Coordinator, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.spawn_workers()
    old0, old1 = coordinator.slots[0], coordinator.slots[1]
    turn(coordinator, signal.SIGHUP)
    new0 = fake_os.forks[-1]

    fake_os.exit(new0, PLUGIN_LOAD_ERROR)
    turn(coordinator, signal.SIGCHLD)  # no HaltCluster

    assert coordinator.slots == {0: old0, 1: old1}
    assert not old0.replaced
    assert fake_os.kills == []
    assert len(fake_os.forks) == 3
    assert any(
        "rolling restart to generation 1 abandoned" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR
    )
    # the old worker is a normal slot owner again: a crash respawns it
    fake_os.exit(old0.pid, EXIT_CRASH)
    turn(coordinator, signal.SIGCHLD)
    assert pid_of(coordinator, 0) == fake_os.forks[-1]


def test_hup_new_worker_crash_is_respawned_before_the_old_one_goes(
    coordinator: Coordinator, fake_os: FakeOS
) -> None:
    coordinator.spawn_workers()
    old0 = pid_of(coordinator, 0)
    turn(coordinator, signal.SIGHUP)
    fake_os.exit(fake_os.forks[-1], EXIT_CRASH)
    turn(coordinator, signal.SIGCHLD)

    replacement = coordinator.slots[0]
    assert replacement.pid == fake_os.forks[-1]
    assert replacement.spec.generation == 1
    assert fake_os.kills == []
    replacement.heartbeat.notify()
    turn(coordinator)
    assert fake_os.kills[0] == (old0, signal.SIGTERM)


# -- the signal plumbing and the child side -----------------------------------------


@pytest.mark.xdist_group("signals")
def test_sigchld_wakes_the_loop_at_once() -> None:
    """A real SIGCHLD (from a short-lived subprocess) interrupts the 5 s wait."""
    coordinator = Coordinator(Settings(workers=1), never_called)
    coordinator.init_signals()
    try:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
        start = time.monotonic()
        signals: list[int] = []
        while signal.SIGCHLD not in signals and time.monotonic() - start < 5:
            signals += coordinator.wait_for_signals(timeout=5.0)
        elapsed = time.monotonic() - start
        child.wait(timeout=5)
    finally:
        coordinator.restore_signals()
    assert signal.SIGCHLD in signals
    assert elapsed < 2.0


def test_run_target_turns_outcomes_into_exit_codes(caplog: pytest.LogCaptureFixture) -> None:
    from durable_cluster.heartbeat import Heartbeat

    beat = Heartbeat()
    spec = WorkerSpec(0, 0, None, "x", os.getpid(), beat)

    def boom(spec: WorkerSpec) -> int:
        raise RuntimeError("boom")

    def leave(code: int | None) -> int:
        raise SystemExit(code)

    try:
        assert run_target(lambda s: 0, spec) == 0
        assert run_target(lambda s: WORKER_BOOT_ERROR, spec) == WORKER_BOOT_ERROR
        assert run_target(lambda s: leave(5), spec) == 5
        assert run_target(lambda s: leave(None), spec) == 0
        assert run_target(lambda s: 999, spec) == EXIT_CRASH
        assert run_target(boom, spec) == EXIT_CRASH
    finally:
        beat.close()
    crash = [r for r in caplog.records if "RuntimeError: boom" in r.getMessage()]
    assert len(crash) == 1
    assert getattr(crash[0], "action", None) == "worker_crashed"


# -- crash loops and rebalance pokes ------------------------------------------------


def test_a_slot_dying_young_again_and_again_is_respawned_with_growing_delays(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    coordinator.spawn_workers()
    for _ in range(Coordinator.RESPAWN_FREE_DEATHS):
        fake_os.exit(pid_of(coordinator, 0), EXIT_CRASH)
        turn(coordinator, signal.SIGCHLD)
        assert 0 in coordinator.slots  # the first young deaths: respawned at once
    delays = []
    for _ in range(3):
        fake_os.exit(pid_of(coordinator, 0), EXIT_CRASH)
        turn(coordinator, signal.SIGCHLD)
        assert 0 not in coordinator.slots
        delay = caplog.records[-1].delay  # type: ignore[attr-defined]
        delays.append(delay)
        clock.now += delay - 0.01
        turn(coordinator)
        assert 0 not in coordinator.slots  # not before its time
        clock.now += 0.01
        turn(coordinator)
        assert 0 in coordinator.slots
    assert delays == [0.25, 0.5, 1.0]
    assert actions(caplog).count("worker_crash_loop") == 3
    assert 1 in coordinator.slots  # slot 1 untouched
    assert len(fake_os.forks) == 2 + Coordinator.RESPAWN_FREE_DEATHS + 3


def test_a_worker_that_lived_long_enough_resets_the_backoff(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.spawn_workers()
    for _ in range(Coordinator.RESPAWN_FREE_DEATHS + 1):
        fake_os.exit(pid_of(coordinator, 0), EXIT_CRASH)
        turn(coordinator, signal.SIGCHLD)
    assert 0 not in coordinator.slots  # backing off
    clock.now += 1.0
    turn(coordinator)
    clock.now += Coordinator.RESPAWN_MIN_UPTIME
    fake_os.exit(pid_of(coordinator, 0), EXIT_CRASH)
    turn(coordinator, signal.SIGCHLD)
    assert 0 in coordinator.slots  # lived 5 s: an ordinary respawn
    fake_os.exit(pid_of(coordinator, 0), EXIT_CRASH)
    turn(coordinator, signal.SIGCHLD)
    assert 0 in coordinator.slots  # and the count starts again at one


def test_respawn_backoff_zero_never_waits(fake_os: FakeOS, clock: FakeClock) -> None:
    coordinator = make_coordinator(clock, respawn_backoff=0.0)
    coordinator.spawn_workers()
    for _ in range(Coordinator.RESPAWN_FREE_DEATHS + 5):
        fake_os.exit(pid_of(coordinator, 0), EXIT_CRASH)
        turn(coordinator, signal.SIGCHLD)
        assert 0 in coordinator.slots
    for handle in coordinator.workers.values():
        handle.heartbeat.close()


def test_a_dead_worker_gets_the_booted_survivors_poked(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock
) -> None:
    coordinator.spawn_workers()
    survivor = coordinator.slots[1]
    survivor.heartbeat.notify()  # booted
    victim = pid_of(coordinator, 0)
    fake_os.die(victim, signal.SIGKILL)
    turn(coordinator, signal.SIGCHLD)
    assert fake_os.signals_to(survivor.pid) == [signal.SIGUSR1]
    assert fake_os.signals_to(pid_of(coordinator, 0)) == []  # the replacement has not booted yet


def test_a_stop_pokes_nobody(coordinator: Coordinator, fake_os: FakeOS) -> None:
    coordinator.spawn_workers()
    for handle in coordinator.workers.values():
        handle.heartbeat.notify()
    coordinator.stop(graceful=True)
    assert all(signum != signal.SIGUSR1 for _, signum in fake_os.kills)
