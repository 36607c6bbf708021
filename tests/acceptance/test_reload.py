"""Hot reload: ``start --reload`` rolls the workers when a plugin is saved.

- The coordinator's side, without processes: it spawns the watcher with
  ``posix_spawn``, reaps it, respawns or gives up, stops it first.
- The watcher's side, against a stand-in coordinator that counts SIGHUPs:
  validate first, signal only a plugin set that loads.
- End to end on a real cluster: a plugin written into ``tmp_path``, edited
  (new code observed, the time from save to new code measured and reported),
  broken (the old generation keeps serving, the log shows the traceback) and
  fixed; 50 instances running through a step while it is edited (no step
  lost or run twice); a broken plugin met by a manual SIGHUP.

Plugin files are saved the way editors do, into a temporary name renamed over
the plugin, so no reader ever sees half a file.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from durable_cluster.config import Settings
from durable_cluster.coordinator import Coordinator, WorkerSpec
from tests import dfclient
from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.timeout(300)]

WATCHING = "reload: watching"
ROLL_DONE = re.compile(r"rolling restart to generation \d+ done")

VERSIONED = """
import os

from durable_cluster import hookimpl

VERSION = {version}

with open({imports!r}, "a") as imports:  # who imports plugin code: workers and checks only
    imports.write(f"{{os.getpid()}}\\n")


async def version(ctx):
    return {{"version": VERSION, "pid": os.getpid()}}


@hookimpl
def durable_register_steps(registry):
    registry.add("version", version)
"""

STAMP = """
import asyncio
import os

from durable_cluster import hookimpl

VERSION = {version}


async def stamp(ctx):
    await asyncio.sleep({delay})
    with open({runs!r}, "a") as runs:  # one line per execution of the step
        runs.write(f"{{ctx.instance_id}} {{ctx.iteration}} {{VERSION}} {{os.getpid()}}\\n")
    return {{"version": VERSION, "iteration": ctx.iteration, "instance": ctx.instance_id}}


@hookimpl
def durable_register_steps(registry):
    registry.add("stamp", stamp)
"""


def save(path: Path, text: str) -> None:
    """Save as an editor does: write a temporary file, rename it over the plugin."""
    temporary = path.with_name(path.name + ".swp")
    temporary.write_text(textwrap.dedent(text))
    os.replace(temporary, path)


def versioned(version: int, imports: Path) -> str:
    return VERSIONED.format(version=version, imports=str(imports))


def children(pid: int) -> dict[int, str]:
    """The live children of ``pid``: pid -> command line (from /proc)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def watcher_of(cluster: Cluster) -> int | None:
    found = [pid for pid, cmd in children(cluster.pid).items() if "durable_cluster.reload" in cmd]
    return found[0] if len(found) == 1 else None


def workers_of(cluster: Cluster) -> set[int]:
    return {pid for pid, cmd in children(cluster.pid).items() if "durable_cluster.reload" not in cmd}


def rolls_done(cluster: Cluster) -> int:
    return len(ROLL_DONE.findall(cluster.log()))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class User(dfclient.User):
    """A role of the test, with its own connection."""

    def scalar(self, query: str) -> Any:
        row = self.conn.execute(query).fetchone()
        assert row is not None
        return row[0]

    def version(self) -> int:
        """Run ``df.step('version')`` once: which plugin code served it."""
        instance = self.start("df.step('version')")
        assert self.await_(instance, 30) == "completed"
        return int(self.result(instance)["version"])


@pytest.fixture
def user(make_role: RoleFactory) -> Iterator[User]:
    person = User.made(make_role, "reload")
    yield person
    person.conn.close()


# -- the coordinator's side, without processes ----------------------------------------------


class FakeOS:
    """fork, posix_spawn, waitpid and kill as bookkeeping (see tests/unit/test_coordinator.py)."""

    def __init__(self) -> None:
        self.next_pid = 100
        self.spawned: list[tuple[int, list[str]]] = []
        self.kills: list[tuple[int, int]] = []
        self.alive: set[int] = set()
        self.pending: list[tuple[int, int]] = []
        self.stubborn: set[int] = set()  # ignore TERM

    def _new(self) -> int:
        self.next_pid += 1
        self.alive.add(self.next_pid)
        return self.next_pid

    def fork(self) -> int:
        return self._new()

    def posix_spawn(self, path: str, argv: Sequence[str], env: Any, **options: Any) -> int:
        assert path == argv[0]
        assert set(options) == {"setsigmask", "setsigdef"}
        pid = self._new()
        self.spawned.append((pid, list(argv)))
        return pid

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        return self.pending.pop(0) if self.pending else (0, 0)

    def kill(self, pid: int, signum: int) -> None:
        self.kills.append((pid, signum))
        if signum == signal.SIGKILL or (signum == signal.SIGTERM and pid not in self.stubborn):
            self.exit(pid, 0 if signum == signal.SIGTERM else None)

    def exit(self, pid: int, code: int | None) -> None:
        if pid in self.alive:
            self.alive.discard(pid)
            self.pending.append((pid, signal.SIGKILL if code is None else code << 8))


class FakeClock:
    def __init__(self) -> None:
        self.now = time.monotonic() - 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def never_called(spec: WorkerSpec) -> int:
    raise AssertionError("the worker target runs only in a forked child")


WATCHER_ARGV = ("/usr/bin/python3", "-m", "durable_cluster.reload", "--coordinator-pid", "1")


@pytest.fixture
def fake_os(monkeypatch: pytest.MonkeyPatch) -> FakeOS:
    fake = FakeOS()
    for name in ("fork", "posix_spawn", "waitpid", "kill"):
        monkeypatch.setattr(os, name, getattr(fake, name))
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def coordinator(fake_os: FakeOS, clock: FakeClock) -> Iterator[Coordinator]:
    settings = Settings(workers=2, graceful_timeout=10.0, heartbeat_timeout=5.0)
    coordinator = Coordinator(settings, never_called, watcher=WATCHER_ARGV)
    coordinator.clock = clock
    coordinator.sleep = clock.sleep
    yield coordinator
    for handle in coordinator.workers.values():
        handle.heartbeat.close()


def watcher_pid(coordinator: Coordinator) -> int | None:
    return coordinator.watcher_pid


def turn(coordinator: Coordinator) -> None:
    coordinator.run_once(timeout=0)


def test_the_watcher_is_spawned_not_forked_and_stopped_first(
    coordinator: Coordinator, fake_os: FakeOS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "durable_cluster.coordinator")
    coordinator.spawn_workers()
    coordinator.spawn_watcher()
    assert len(fake_os.spawned) == 1
    watcher, argv = fake_os.spawned[0]
    assert argv == list(WATCHER_ARGV)
    assert watcher_pid(coordinator) == watcher
    assert watcher not in coordinator.workers
    coordinator.spawn_watcher()  # one at a time
    turn(coordinator)
    assert len(fake_os.spawned) == 1
    workers = set(coordinator.workers)

    coordinator.stop(graceful=True)
    assert fake_os.kills[0] == (watcher, signal.SIGTERM)  # before any worker: no roll can start
    assert {pid for pid, _ in fake_os.kills[1:]} == workers
    assert watcher_pid(coordinator) is None
    assert f"reload watcher (pid {watcher}) exited (code 0)" in caplog.text


def test_a_watcher_that_dies_at_once_is_not_respawned(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.spawn_workers()
    coordinator.spawn_watcher()
    watcher = fake_os.spawned[0][0]
    clock.now += 1.0
    fake_os.exit(watcher, 1)
    for _ in range(3):
        turn(coordinator)
        clock.now += 60
    assert len(fake_os.spawned) == 1
    assert coordinator.watcher_pid is None
    assert "reload is off, the workers keep running" in caplog.text
    assert len(coordinator.slots) == 2  # the workers are untouched


def test_a_watcher_that_dies_later_is_respawned(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock
) -> None:
    coordinator.spawn_workers()
    coordinator.spawn_watcher()
    first = fake_os.spawned[0][0]
    clock.now += Coordinator.WATCHER_MIN_UPTIME + 1
    fake_os.exit(first, None)  # SIGKILLed from outside
    turn(coordinator)
    assert len(fake_os.spawned) == 2
    assert coordinator.watcher_pid == fake_os.spawned[1][0] != first


def test_a_stubborn_watcher_is_killed_at_shutdown(
    coordinator: Coordinator, fake_os: FakeOS, clock: FakeClock
) -> None:
    coordinator.spawn_workers()
    coordinator.spawn_watcher()
    watcher = fake_os.spawned[0][0]
    fake_os.stubborn.add(watcher)
    started = clock.now
    coordinator.stop(graceful=True)
    assert [signum for pid, signum in fake_os.kills if pid == watcher] == [signal.SIGTERM, signal.SIGKILL]
    assert clock.now - started >= Coordinator.WATCHER_STOP_TIMEOUT
    assert coordinator.watcher_pid is None


def test_without_reload_there_is_no_watcher(fake_os: FakeOS, clock: FakeClock) -> None:
    coordinator = Coordinator(Settings(workers=1), never_called)
    coordinator.clock = clock
    coordinator.sleep = clock.sleep
    coordinator.spawn_workers()
    coordinator.spawn_watcher()
    turn(coordinator)
    coordinator.stop(graceful=False)
    assert fake_os.spawned == []


# -- the watcher's side, against a stand-in coordinator ---------------------------------------

FAKE_COORDINATOR = """
import os, signal, subprocess, sys, time

hups, pidfile, *watcher_args = sys.argv[1:]
stopping = []
signal.signal(signal.SIGHUP, lambda *_: open(hups, "a").write("hup\\n"))
signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
watcher = subprocess.Popen(
    [sys.executable, "-m", "durable_cluster.reload", "--coordinator-pid", str(os.getpid()), *watcher_args]
)
with open(pidfile, "w") as out:
    out.write(str(watcher.pid))
while not stopping and watcher.poll() is None:
    time.sleep(0.05)
if watcher.poll() is None:
    watcher.terminate()
sys.exit(watcher.wait(10))
"""


def test_the_watcher_validates_before_it_signals(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    plugin = plugins / "versioned.py"
    imports = tmp_path / "imports.log"
    save(plugin, versioned(1, imports))
    script = tmp_path / "fake_coordinator.py"
    script.write_text(FAKE_COORDINATOR)
    hups, pidfile, log = tmp_path / "hups", tmp_path / "watcher.pid", tmp_path / "watcher.log"

    def count() -> int:
        return len(hups.read_text().splitlines()) if hups.exists() else 0

    def text() -> str:
        return log.read_text(errors="replace")

    watcher_args = ("--plugins-dir", str(plugins), "--watch", str(plugins))
    with log.open("wb") as out:
        fake = subprocess.Popen(
            [*(sys.executable, str(script), str(hups), str(pidfile)), *watcher_args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    try:
        wait_for(lambda: WATCHING in text(), 30, message="the watcher")
        watcher = int(pidfile.read_text())
        plugin.write_text(versioned(2, imports))  # a plain write works too
        wait_for(lambda: count() == 1, 30, message="a SIGHUP after a valid save")

        save(plugin, "VERSION = 3\ndef broken(:\n")
        wait_for(lambda: "the plugins failed to load" in text(), 30, message="the failed check")
        assert "SyntaxError" in text()
        assert f'{plugin}", line 2' in text()
        assert count() == 1  # no SIGHUP for a plugin that does not load

        changes = text().count("reload: changed")
        (plugins / "notes.txt").write_text("not a plugin")
        (plugins / "__pycache__").mkdir()
        (plugins / "__pycache__" / "versioned.cpython-311.pyc").write_bytes(b"stale")
        time.sleep(1.0)
        assert text().count("reload: changed") == changes  # filtered out

        save(plugin, versioned(4, imports))
        wait_for(lambda: count() == 2, 30, message="a SIGHUP after the fix")

        fake.kill()  # the coordinator vanishes: the watcher follows (parent-death signal)
        fake.wait(10)
        wait_for(lambda: not alive(watcher), 10, message="the watcher to exit")
    finally:
        with contextlib.suppress(ProcessLookupError):
            fake.kill()
        fake.wait(10)


# -- end to end ----------------------------------------------------------------------------


def test_reload_rolls_the_workers_on_save_and_survives_a_broken_save(
    start_cluster: Callable[..., Cluster],
    user: User,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    plugin = plugins / "versioned.py"
    imports = tmp_path / "imports.log"
    save(plugin, versioned(1, imports))
    cluster = start_cluster(workers=2, args=("--reload", "--plugins-dir", str(plugins)))
    wait_for(lambda: WATCHING in cluster.log(), 30, message="the watcher")
    watcher = wait_for(lambda: watcher_of(cluster), 10, message="the watcher process")
    assert "reload:   on" in cluster.output()
    assert user.version() == 1
    generation0 = workers_of(cluster)
    assert len(generation0) == 2

    # A valid save: checked, then every worker replaced, one at a time. Measured: the time from
    # the save to the first step served by the new code, and to the last old worker gone.
    saved = time.monotonic()
    save(plugin, versioned(2, imports))
    wait_for(lambda: user.version() == 2, 60, interval=0, message="the new code to serve a step")
    first_step = time.monotonic() - saved
    wait_for(lambda: not workers_of(cluster) & generation0, 60, interval=0.01, message="old workers exit")
    all_workers = time.monotonic() - saved
    record_property("reload_save_to_first_new_step_s", round(first_step, 3))
    record_property("reload_save_to_old_workers_gone_s", round(all_workers, 3))
    print(f"\nreload: save -> first step on new code {first_step:.2f}s, old workers gone {all_workers:.2f}s")
    wait_for(lambda: rolls_done(cluster) >= 1, 30, message="the roll")
    # (In a source checkout the watcher also watches sql/ and plugins/: an edit there while this
    # test runs rolls the workers once more. The checks below hold all the same.)
    wait_for(lambda: len(workers_of(cluster)) == 2, 30, message="two workers")
    assert [user.version() for _ in range(6)] == [2] * 6

    # A broken save: the old generation keeps serving; the log shows the traceback.
    rolls = cluster.log().count("rolling restart to generation")
    serving = workers_of(cluster)
    save(plugin, "VERSION = 3\ndef broken(:\n")
    wait_for(lambda: "the plugins failed to load" in cluster.log(), 30, message="the failed check")
    log = cluster.log()
    assert "SyntaxError" in log
    assert f'{plugin}", line 2' in log
    assert [user.version() for _ in range(4)] == [2] * 4
    assert cluster.log().count("rolling restart to generation") == rolls  # nothing rolls while broken
    assert workers_of(cluster) == serving
    cluster.check_alive()

    # Fixed: the next save rolls again.
    done = rolls_done(cluster)
    save(plugin, versioned(3, imports))
    wait_for(lambda: user.version() == 3, 60, interval=0, message="the fixed code")
    wait_for(lambda: rolls_done(cluster) > done, 60, message="the roll")
    assert [user.version() for _ in range(4)] == [3] * 4

    # Plugin code ran in workers and in the watcher's check processes, never in the
    # coordinator or the watcher itself.
    importers = {int(line) for line in imports.read_text().split()}
    assert cluster.pid not in importers
    assert watcher not in importers
    assert len(importers) >= 6  # three generations of two workers, and the checks

    assert cluster.stop() == 0
    assert f"reload watcher (pid {watcher}) exited (code 0)" in cluster.log()
    assert not alive(watcher)


def test_an_edit_while_50_instances_run_loses_and_repeats_no_step(
    start_cluster: Callable[..., Cluster], user: User, tmp_path: Path
) -> None:
    """Each instance loops: run the step, record its output, until the new code has served it 3 times.

    So steps are in flight through the whole roll however long it takes, and every instance
    sees both versions of the plugin.
    """
    instances = 50
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    plugin = plugins / "stamp.py"
    runs = tmp_path / "runs.log"
    save(plugin, STAMP.format(version=1, delay=0.3, runs=str(runs)))
    cluster = start_cluster(workers=2, args=("--reload", "--plugins-dir", str(plugins)))
    wait_for(lambda: WATCHING in cluster.log(), 30, message="the watcher")
    user.conn.execute("CREATE TABLE side (instance text, iteration int, version int)")
    graph = (
        "@> ((df.step('stamp') |=> 's')"
        " ~> 'INSERT INTO side VALUES ($s.instance, $s.iteration, $s.version)'"
        " ~> (('SELECT count(*) >= 3 FROM side WHERE instance = $s.instance AND version = 2'"
        " ?> df.break('done')) !> 'SELECT 0'))"
    )
    started = [user.start(graph) for _ in range(instances)]
    wait_for(lambda: user.scalar("SELECT count(*) FROM side") >= instances, 60, message="the first steps")
    save(plugin, STAMP.format(version=2, delay=0.3, runs=str(runs)))

    assert [user.await_(instance, 180) for instance in started] == ["completed"] * instances
    assert {json.dumps(user.result(instance)) for instance in started} == {'"done"'}
    wait_for(lambda: rolls_done(cluster) >= 1, 30, message="the roll")
    rows = user.conn.execute("SELECT instance, iteration, version FROM side").fetchall()
    # Every step's row is there, once: iterations 1..n of each instance, no gap, no repeat.
    recorded = collections.Counter((instance, iteration) for instance, iteration, _ in rows)
    assert [key for key, times in recorded.items() if times > 1] == []
    for instance in started:
        iterations = sorted(iteration for (iid, iteration) in recorded if iid == instance)
        assert iterations == list(range(1, len(iterations) + 1)), (instance, iterations)
    # Every step ran once: the old workers finished and checkpointed what they had started.
    lines = [line.split() for line in runs.read_text().splitlines()]
    executed = collections.Counter((iid, int(iteration)) for iid, iteration, _, _ in lines)
    assert set(executed) == set(recorded)
    assert [key for key, times in executed.items() if times > 1] == []
    # Both versions served steps, and each row holds the version that ran it.
    ran = {(iid, int(iteration)): int(version) for iid, iteration, version, _ in lines}
    assert all(ran[(instance, iteration)] == version for instance, iteration, version in rows)
    versions = collections.Counter(version for _, _, version in rows)
    print(f"\n{instances} instances, {len(rows)} steps across a reload, by plugin version: {dict(versions)}")
    assert versions[1] >= instances
    assert versions[2] >= 3 * instances


def test_a_plugin_broken_before_a_rolling_restart_keeps_the_old_generation(
    start_cluster: Callable[..., Cluster], user: User, tmp_path: Path
) -> None:
    """Without --reload nothing checks first: the new worker exits 4, the roll is abandoned."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    plugin = plugins / "versioned.py"
    imports = tmp_path / "imports.log"
    save(plugin, versioned(1, imports))
    cluster = start_cluster(
        workers=2,
        args=("--plugins-dir", str(plugins)),
        env={"PYTHONDONTWRITEBYTECODE": "1"},  # quick successive saves of one size: no stale .pyc
    )
    assert user.version() == 1
    before = workers_of(cluster)

    save(plugin, "raise RuntimeError('broken on purpose')\n")
    cluster.send_signal(signal.SIGHUP)
    wait_for(
        lambda: "rolling restart to generation 1 abandoned, generation 0 keeps running" in cluster.log(),
        60,
        message="the abandoned roll",
    )
    assert "RuntimeError: broken on purpose" in cluster.log()
    cluster.check_alive()
    assert workers_of(cluster) == before
    assert [user.version() for _ in range(4)] == [1] * 4

    save(plugin, versioned(2, imports))
    cluster.send_signal(signal.SIGHUP)
    wait_for(lambda: "rolling restart to generation 2 done" in cluster.log(), 60, message="the roll")
    assert [user.version() for _ in range(4)] == [2] * 4
    wait_for(lambda: not workers_of(cluster) & before, 30, message="the old workers to drain and exit")
    assert cluster.stop() == 0
