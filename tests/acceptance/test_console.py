"""The web console in a real headless browser: Debian's chromium, driven by Playwright.

``start --console`` runs the console as a helper process of the coordinator;
the page is loaded with the token the start banner printed, filtered,
an instance opened (its graph drawn as SVG with each node's state), and an
instance cancelled and another signalled from the page. The console acts as
one role: another role's instances never appear, and POSTs without the CSRF
token are refused.

Chromium comes from Debian (``apt-get install chromium``, done here when it is
missing); Playwright only drives it (``playwright install`` is never run).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.fix_cluster import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from playwright.sync_api import Browser, Page

    from tests.fix_cluster import Cluster
    from tests.fix_db import RoleFactory

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("browser")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_TIMEOUT = 900  # seconds for apt-get update + install
INSTALL_LOCK = "/tmp/durable-cluster-chromium-install.lock"
UI_TIMEOUT = 20_000  # milliseconds the page may take to show a change (it polls every 2 s)


# -- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (one xdist worker at a time)."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if shutil.which("apt-get") is None:
        pytest.fail(f"{CHROMIUM} is missing and apt-get is not available: install Debian's chromium package")
    with open(INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(CHROMIUM):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            deadline = time.monotonic() + INSTALL_TIMEOUT
            for command in (
                ["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            ):
                try:
                    done = subprocess.run(
                        command,
                        capture_output=True,
                        text=True,
                        env=env,
                        timeout=max(deadline - time.monotonic(), 1),
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    pytest.fail(f"{' '.join(command)} did not finish within {INSTALL_TIMEOUT}s")
                if done.returncode != 0:
                    pytest.fail(
                        f"{' '.join(command)} failed ({done.returncode}): cannot install Debian's chromium "
                        f"for the browser tests:\n{(done.stdout + done.stderr)[-3000:]}"
                    )
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} does not exist")
    return CHROMIUM


@pytest.fixture
def browser(chromium: str) -> Iterator[Browser]:
    """Per test: Playwright's sync API keeps an asyncio loop running in this thread while it is
    started, which would break every later test of the worker that calls asyncio.run()."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


# -- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(
    port: int, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def listening(port: int) -> bool:
    with contextlib.suppress(OSError):
        return request(port, "GET", "/")[0] == 401
    return False


def start(conn: psycopg.Connection[Any], graph: str, label: str) -> str:
    row = conn.execute(f"SELECT df.start({graph}, %s)", (label,)).fetchone()
    assert row is not None
    return str(row[0])


def status_of(conn: psycopg.Connection[Any], instance: str) -> str:
    row = conn.execute("SELECT status FROM df.instances WHERE id = %s", (instance,)).fetchone()
    assert row is not None
    return str(row[0])


def running(conn: psycopg.Connection[Any], instance: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM df.nodes WHERE instance_id = %s AND status = 'running' AND node_type = 'SQL'",
        (instance,),
    ).fetchone()
    return bool(row and row[0])


def rows(page: Page) -> list[str]:
    return page.eval_on_selector_all("#instances tbody tr", "rows => rows.map(r => r.dataset.instanceId)")


def wait_rows(page: Page, expected: list[str]) -> None:
    deadline = time.monotonic() + UI_TIMEOUT / 1000
    while rows(page) != expected:
        assert time.monotonic() < deadline, f"rows {rows(page)} != {expected}"
        page.wait_for_timeout(100)


# -- tests ------------------------------------------------------------------------------------


def test_the_console_in_a_browser(
    start_cluster: Callable[..., Cluster], make_role: RoleFactory, browser: Browser
) -> None:
    from playwright.sync_api import expect

    alice, bob = make_role("alice"), make_role("bob")
    port = free_port()
    token = f"test-{uuid.uuid4().hex}"
    cluster = start_cluster(
        args=("--console", f"127.0.0.1:{port}", "--console-role", alice),
        env={"DURABLE_CONSOLE_TOKEN": token},
    )
    with psycopg.connect(make_role.dsn(bob), autocommit=True) as conn:
        secret = start(conn, "'SELECT 1'", "nightly")
        secret_running = start(conn, "'SELECT pg_sleep(60)'", "long")
    with psycopg.connect(make_role.dsn(alice), autocommit=True) as conn:
        done = start(conn, "'SELECT 1' |=> 'one' ~> 'SELECT $one + 1'", "nightly")
        failed = start(conn, "df.retry('SELECT 1/0', 2, 0.1)", "flaky")
        sleeper = start(conn, "'SELECT pg_sleep(60)' ~> 'SELECT 2'", "long")
        waiter = start(conn, "df.wait_for_signal('go') ~> 'SELECT 7'", "waiter")
        victim = start(conn, "'SELECT pg_sleep(60)'", "victim")
        for instance, expected in ((done, "completed"), (failed, "failed")):
            assert conn.execute("SELECT df.await_instance(%s, 60)", (instance,)).fetchone() == (expected,)
        wait_for(lambda: running(conn, sleeper) and running(conn, victim), message="the sleeps to run")
        wait_for(lambda: status_of(conn, waiter) == "running", message="the signal wait")

        # The banner prints the URL once, with the token; the console listens on loopback.
        line = wait_for(
            lambda: re.search(r"^  console:  (\S+)$", cluster.output(), re.M), message="the console URL"
        )
        assert line[1] == f"http://127.0.0.1:{port}/?token={token}"
        assert cluster.output().count(token) == 1
        wait_for(lambda: listening(port), message="the console to listen")
        assert token not in cluster.log()

        # Without the token or its cookie: 401, page and API alike.
        for path in (
            "/",
            "/?token=wrong-token-0123456789",
            "/api/instances",
            f"/api/instances/{done}",
            "/static/console.js",
        ):
            assert request(port, "GET", path)[0] == 401, path
        status, _, body = request(port, "POST", f"/api/instances/{sleeper}/cancel", body=b"{}")
        assert status == 401
        assert json.loads(body)["error"].startswith("not signed in")

        # Load with the token: it becomes an HttpOnly SameSite=Strict cookie and leaves the address bar.
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(line[1])
        page.wait_for_selector("#instances tbody tr")
        expect(page).to_have_url(f"http://127.0.0.1:{port}/")
        (cookie,) = context.cookies()
        assert cookie["name"] == "durable_console"
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert token not in cookie["value"]
        expect(page.locator("#role")).to_contain_text(f"role {alice}")

        # Only the console role's instances, newest first; the other role's do not exist.
        wait_rows(page, [victim, waiter, sleeper, failed, done])
        assert secret not in page.content()
        assert secret_running not in page.content()
        expect(page.locator("#count-completed")).to_have_text("completed 1")
        assert page.request.get(f"http://127.0.0.1:{port}/api/instances/{secret}").status == 404
        assert page.request.get(f"http://127.0.0.1:{port}/api/instances/{secret}/graph.svg").status == 404
        listed = page.request.get(f"http://127.0.0.1:{port}/api/instances?label=nightly").json()
        assert [row["instance_id"] for row in listed["instances"]] == [done]

        # Filters: by status, then by label.
        page.select_option("#status-filter", "completed")
        wait_rows(page, [done])
        page.select_option("#status-filter", "")
        page.fill("#label-filter", "flaky")
        page.click("#apply-filters")
        wait_rows(page, [failed])
        page.fill("#label-filter", "")
        page.click("#apply-filters")
        wait_rows(page, [victim, waiter, sleeper, failed, done])

        # Open an instance: its graph with each node's state, its nodes with timings and errors.
        page.click(f"#instances tbody tr[data-instance-id='{failed}']")
        expect(page.locator("#detail-id")).to_have_text(failed)
        expect(page.locator("#detail-status")).to_have_text("failed")
        expect(page.locator("#graph svg g.node")).to_have_count(2)  # RETRY and its SQL
        states = page.eval_on_selector_all("#graph svg g.node", "gs => gs.map(g => g.dataset.status)")
        assert sorted(states) == ["failed", "failed"]
        expect(page.locator("#nodes tbody")).to_contain_text("division by zero")
        expect(page.locator("#nodes tbody")).to_contain_text("2 / 2")
        page.click(f"#instances tbody tr[data-instance-id='{done}']")
        expect(page.locator("#detail-status")).to_have_text("completed")
        expect(page.locator("#graph svg g.node[data-status='completed']")).to_have_count(2)
        expect(page.locator("#graph svg g.node").first).to_contain_text("SQL: SELECT 1 |=> 'one'")
        assert page.locator("#cancel-button").is_disabled()

        # Cancel a running instance from the page; the live update shows it cancelled.
        page.click(f"#instances tbody tr[data-instance-id='{sleeper}']")
        expect(page.locator("#detail-status")).to_have_text("running")
        expect(page.locator("#graph svg g.node[data-status='running']")).to_have_count(1)
        expect(page.locator("#graph svg g.node[data-status='pending']")).to_have_count(1)
        page.click("#cancel-button")
        page.fill("#cancel-reason", "stopped from the browser")
        page.click("#cancel-confirm")
        expect(page.locator("#message")).to_have_text(
            f"Instance {sleeper} cancelled: stopped from the browser"
        )
        expect(page.locator("#detail-status")).to_have_text("cancelled")
        expect(page.locator(f"#instances tbody tr[data-instance-id='{sleeper}']")).to_have_attribute(
            "data-status", "cancelled"
        )
        expect(page.locator("#graph svg g.node[data-status='running']")).to_have_count(0)
        assert status_of(conn, sleeper) == "cancelled"

        # Signal a waiting instance from the page.
        page.click(f"#instances tbody tr[data-instance-id='{waiter}']")
        expect(page.locator("#detail-status")).to_have_text("running")
        page.fill("#signal-name", "go")
        page.fill("#signal-data", '{"ok": true}')
        page.click("#signal-send")
        expect(page.locator("#detail-status")).to_have_text("completed")
        assert status_of(conn, waiter) == "completed"

        # CSRF: the cookie alone does not make a POST, nor does a foreign Origin.
        base = f"http://127.0.0.1:{port}"
        cancel = f"{base}/api/instances/{victim}/cancel"
        refused = page.request.post(cancel, data=json.dumps({}), headers={"Content-Type": "application/json"})
        assert refused.status == 403
        assert "CSRF" in refused.json()["error"]
        csrf = page.request.get(f"{base}/api/session").json()["csrf"]
        foreign = page.request.post(
            cancel,
            data=json.dumps({}),
            headers={
                "Content-Type": "application/json",
                "X-CSRF-Token": csrf,
                "Origin": "http://evil.example",
            },
        )
        assert foreign.status == 403
        plain = page.request.post(
            cancel,
            data="reason=x",
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": csrf},
        )
        assert plain.status == 415
        assert status_of(conn, victim) == "running"
        # The other role's instance cannot be cancelled through the console either.
        others = page.request.post(
            f"{base}/api/instances/{secret_running}/cancel",
            data=json.dumps({}),
            headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
        )
        assert others.status == 404
        accepted = page.request.post(
            cancel,
            data=json.dumps({"reason": "api"}),
            headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
        )
        assert accepted.status == 200
        assert accepted.json()["status"] == "cancelled"
        assert errors == []
        context.close()
    with psycopg.connect(make_role.dsn(bob), autocommit=True) as conn:
        assert status_of(conn, secret_running) == "running"
        conn.execute("SELECT df.cancel(%s)", (secret_running,))  # lets the cluster stop at once

    # The console is the coordinator's helper: it stops with the cluster.
    assert cluster.stop() == 0
    assert "console started (pid" in cluster.log()
    wait_for(lambda: not listening(port), 10, message="the console to stop")


def test_the_console_command_acts_as_its_role_and_refuses_remote_binds(
    dsn: str, make_role: RoleFactory, tmp_path: Any, start_cluster: Callable[..., Cluster]
) -> None:
    alice, bob = make_role("alice"), make_role("bob")
    with psycopg.connect(make_role.dsn(alice), autocommit=True) as conn:
        mine = start(conn, "'SELECT 1'", "a")
    with psycopg.connect(make_role.dsn(bob), autocommit=True) as conn:
        theirs = start(conn, "'SELECT 1'", "b")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}

    def console(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "durable_cluster", "console", "--dsn", dsn, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def visible(*args: str) -> set[str]:
        port = free_port()
        with console("--bind", f"127.0.0.1:{port}", *args) as process:
            try:
                assert process.stdout is not None
                line = process.stdout.readline()
                match = re.fullmatch(
                    rf"durable-cluster console: (http://127\.0\.0\.1:{port}/\?token=(\S+))\n", line
                )
                assert match, line
                assert len(match[2]) >= 16
                status, headers, _ = request(port, "GET", f"/?token={match[2]}")
                assert status == 200
                assert headers["set-cookie"].endswith("; HttpOnly; SameSite=Strict; Path=/")
                assert headers["referrer-policy"] == "no-referrer"
                assert "frame-ancestors 'none'" in headers["content-security-policy"]
                cookie = headers["set-cookie"].split(";")[0]
                status, _, body = request(port, "GET", "/api/instances", headers={"Cookie": cookie})
                assert status == 200
                found = {row["instance_id"] for row in json.loads(body)["instances"]}
                status, _, body = request(port, "GET", "/api/session", headers={"Cookie": cookie})
                if args:
                    assert json.loads(body)["role"] == args[1]
                process.send_signal(signal.SIGTERM)
                assert process.wait(15) == 0
                return found
            finally:
                if process.poll() is None:
                    process.kill()
                process.communicate()

    assert {mine, theirs} <= visible()  # the DSN's superuser bypasses row-level security
    assert visible("--console-role", alice) == {mine}
    assert visible("--console-role", bob) == {theirs}

    # A non-loopback address needs --console-allow-remote; a short token is refused.
    with console("--bind", "0.0.0.0:8484") as refused:
        _, err = refused.communicate(timeout=30)
    assert refused.returncode == 1
    assert "not a loopback address" in err
    assert "--console-allow-remote" in err
    with console("--bind", "127.0.0.1:0", "--console-token", "short") as short:
        _, err = short.communicate(timeout=30)
    assert short.returncode == 1
    assert "at least 16 characters" in err
    started = subprocess.run(
        [sys.executable, "-m", "durable_cluster", "start", "--dsn", dsn, "--console", "192.0.2.1:8484"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert started.returncode == 1
    assert "not a loopback address" in started.stderr

    # A console that cannot start (its address is taken) is given up; the cluster keeps running.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = start_cluster(args=("--console", f"127.0.0.1:{port}"))
        wait_for(lambda: "the console is off, the workers keep running" in cluster.log(), message="giving up")
        assert "the console cannot listen on" in cluster.log()
        cluster.check_alive()
        assert cluster.stop() == 0
