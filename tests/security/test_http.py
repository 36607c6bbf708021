"""HTTP steps through a running cluster (spec §3.5, §2.16): the guard against a local server.

Every request goes to a server of this test on 127.0.0.1. Host names are
resolved inside the cluster by a ``sitecustomize`` module put on its
PYTHONPATH, which answers for ``*.sectest.invalid`` only (no DNS, no other
address is ever contacted): a name that resolves to loopback, to IPv6
loopback, to an IPv4-mapped loopback, or to a private plus a loopback address.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from psycopg import sql

from tests.security.conftest import failures, ident, status, wait_parked

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.fix_cluster import Cluster
    from tests.security.conftest import Conn, User

pytestmark = [pytest.mark.timeout(240)]

HTTP_SIGNATURE = "df.http(text,text,text,jsonb,integer)"
HINT = "Use --http-allow-private for trusted networks."
SITECUSTOMIZE = """
import socket

_real = socket.getaddrinfo
_NAMES = {
    "loop4.sectest.invalid": ["127.0.0.1"],
    "allowed.sectest.invalid": ["127.0.0.1"],
    "loop6.sectest.invalid": ["::1"],
    "mapped.sectest.invalid": ["::ffff:127.0.0.1"],
    "private.sectest.invalid": ["10.0.0.1", "127.0.0.1"],
}


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    name = host.decode() if isinstance(host, bytes) else host
    key = name.lower().rstrip(".") if isinstance(name, str) else None
    if key in _NAMES:
        answers = []
        for address in _NAMES[key]:
            number = int(port or 0)
            if ":" in address:
                answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, number, 0, 0)))
            else:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, number)))
        return answers
    if key is not None and key.endswith(".sectest.invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _real(host, port, family, type, proto, flags)


socket.getaddrinfo = getaddrinfo
"""


class LocalServer:
    """A small HTTP server on 127.0.0.1 that records the paths it was asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
                self.send_response(code)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                owner.paths.append(self.path)
                if self.path == "/redirect":
                    self._reply(302, b"", (("Location", owner.url("/ok")),))
                elif self.path == "/big":
                    self._reply(200, b"x" * 65536, (("Content-Type", "text/plain"),))
                elif self.path == "/slow":
                    owner.stop.wait(5)
                    self._reply(200, b"late")
                else:
                    self._reply(200, b"ok", (("Content-Type", "text/plain"),))

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1})

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as running:
        yield running


@pytest.fixture
def resolver_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a cluster whose resolver knows the *.sectest.invalid names."""
    folder = tmp_path / "resolver"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(folder), path) if p)}


def http(url: str, method: str = "GET", body: str | None = None, timeout: int = 30) -> str:
    """SQL text for a df.http(...) call."""
    return sql.SQL("df.http({}, {}, {}, NULL, {})").format(url, method, body, timeout).as_string(None)


def run_all(conn: Conn, user: User, graphs: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Start every graph as ``user``; return key -> (status, failure messages)."""
    started = {key: user.start(graph) for key, graph in graphs.items()}
    return {key: (user.await_(i, 60), failures(conn, i)) for key, i in started.items()}


def test_the_guard_blocks_local_addresses(
    start_cluster: Callable[..., Cluster],
    conn: Conn,
    users: Callable[..., User],
    server: LocalServer,
    resolver_env: dict[str, str],
) -> None:
    start_cluster(env=resolver_env)
    web = users("web", include_http=True)
    port = server.port
    blocked = {
        "127.0.0.1": "the IP address '127.0.0.1' is in a restricted range (loopback 127.0.0.1)",
        "localhost": "'localhost' is in a restricted range (loopback host name)",
        "LocalHost.": "'localhost.' is in a restricted range (loopback host name)",
        "app.localhost": "'app.localhost' is in a restricted range (loopback host name)",
        "[::1]": "the IP address '::1' is in a restricted range (loopback ::1)",
        "[::ffff:127.0.0.1]": (
            "the IP address '::ffff:127.0.0.1' is in a restricted range (IPv4-mapped loopback"
        ),
        "2130706433": "the IP address '2130706433' is in a restricted range (loopback 127.0.0.1)",
        "0x7f.1": "the IP address '0x7f.1' is in a restricted range (loopback 127.0.0.1)",
        "127.1": "the IP address '127.1' is in a restricted range (loopback 127.0.0.1)",
        "0.0.0.0": "the IP address '0.0.0.0' is in a restricted range (unspecified 0.0.0.0)",
        "169.254.169.254": "restricted range (cloud metadata 169.254.169.254)",
        "10.1.2.3": "restricted range (private 10.1.2.3)",
        "loop4.sectest.invalid": (
            "the resolved IP address for 'loop4.sectest.invalid' is in a restricted range"
            " (loopback 127.0.0.1)"
        ),
        "loop6.sectest.invalid": (
            "the resolved IP address for 'loop6.sectest.invalid' is in a restricted range (loopback ::1)"
        ),
        "mapped.sectest.invalid": (
            "for 'mapped.sectest.invalid' is in a restricted range (IPv4-mapped loopback"
        ),
        "private.sectest.invalid": (
            "for 'private.sectest.invalid' is in a restricted range (private 10.0.0.1; loopback 127.0.0.1)"
        ),
    }
    outcomes = run_all(conn, web, {host: http(server.url("/ok", host)) for host in blocked})
    for host, expected in blocked.items():
        state, message = outcomes[host]
        assert state == "failed", host
        assert message.startswith("Blocked: "), (host, message)
        assert expected in message, (host, message)
        assert message.endswith(HINT), (host, message)
    # Only http and https, also when the URL arrives through a variable at run time.
    web.conn.execute("SELECT df.setvar('target', %s)", (f"file:///etc/passwd#{port}",))
    web.conn.execute("SELECT df.setvar('gopher', %s)", (f"gopher://127.0.0.1:{port}/",))
    outcomes = run_all(conn, web, {"file": http("{target}"), "gopher": http("{gopher}")})
    assert outcomes["file"] == (
        "failed",
        "Blocked: unsupported URL scheme 'file'. Only http and https are allowed.",
    )
    assert outcomes["gopher"][1].startswith("Blocked: unsupported URL scheme 'gopher'")
    assert server.paths == []


def test_allowed_requests_and_their_limits(
    start_cluster: Callable[..., Cluster],
    conn: Conn,
    users: Callable[..., User],
    server: LocalServer,
    resolver_env: dict[str, str],
) -> None:
    start_cluster(
        env=resolver_env,
        args=(
            "--http-allow-private",
            "--http-max-response-bytes",
            "1024",
            "--http-max-request-bytes",
            "1024",
            "--http-timeout-ceiling",
            "1",
        ),
    )
    web = users("web", include_http=True)
    outcomes = run_all(
        conn,
        web,
        {
            "literal": http(server.url("/ok")),
            "name": http(server.url("/ok", "loop4.sectest.invalid")),
        },
    )
    assert outcomes == {"literal": ("completed", ""), "name": ("completed", "")}
    assert server.paths == ["/ok", "/ok"]
    server.paths.clear()
    # A redirect (here to loopback) is returned, never followed.
    redirect = web.start(http(server.url("/redirect")))
    assert web.await_(redirect) == "completed"
    envelope = web.result(redirect)
    assert (envelope["status"], envelope["ok"], envelope["headers"]["location"]) == (
        302,
        False,
        server.url("/ok"),
    )
    assert server.paths == ["/redirect"]
    server.paths.clear()
    outcomes = run_all(
        conn,
        web,
        {
            "response": http(server.url("/big")),
            "request": http(server.url("/upload"), "POST", "y" * 2000),
            "timeout": http(server.url("/slow"), timeout=30),
        },
    )
    assert outcomes["response"] == (
        "failed",
        f"HTTP response from {server.url('/big')} exceeds 1024 bytes (--http-max-response-bytes)",
    )
    assert outcomes["request"] == (
        "failed",
        "HTTP request body is 2000 bytes, over the limit of 1024 (--http-max-request-bytes)",
    )
    assert outcomes["timeout"] == ("failed", f"HTTP timeout after 1s: {server.url('/slow')}")
    assert sorted(server.paths) == ["/big", "/slow"]


def test_http_privilege_is_checked_per_request(
    start_cluster: Callable[..., Cluster],
    conn: Conn,
    users: Callable[..., User],
    server: LocalServer,
) -> None:
    start_cluster(args=("--http-allow-private",))
    web, plain = users("web", include_http=True), users("plain")
    url = server.url("/ok")
    # A raw JSON node does not need EXECUTE on df.http to be started...
    config = {"url": url, "method": "GET", "body": None, "headers": None, "timeout_seconds": 30}
    raw = json.dumps({"node_type": "HTTP", "query": json.dumps(config)})
    instance = plain.start(sql.Literal(raw).as_string(None))
    assert plain.await_(instance) == "failed"
    # ...but the step re-checks the privilege before any request.
    assert failures(conn, instance) == (
        f"Blocked: role '{plain.role}' does not have EXECUTE privilege on df.http(). "
        f"Grant EXECUTE ON FUNCTION {HTTP_SIGNATURE} TO {plain.role} to allow HTTP requests."
    )
    # A revoke takes effect on the next request of a running instance.
    waiting = web.start(f"df.wait_for_signal('go') ~> {http(url)}")
    wait_parked(conn, waiting)
    conn.execute(
        sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM {}").format(sql.SQL(HTTP_SIGNATURE), ident(web.role))
    )
    assert web.scalar("SELECT df.signal(%s, 'go')", waiting) == "OK"
    assert web.await_(waiting) == "failed"
    assert f"Blocked: role '{web.role}' does not have EXECUTE privilege on df.http()" in failures(
        conn, waiting
    )
    assert status(conn, waiting) == "failed"
    assert server.paths == []


def test_the_host_allow_list(
    start_cluster: Callable[..., Cluster],
    conn: Conn,
    users: Callable[..., User],
    server: LocalServer,
    resolver_env: dict[str, str],
) -> None:
    start_cluster(
        env=resolver_env, args=("--http-allow-private", "--http-allow-hosts", "allowed.sectest.invalid")
    )
    web = users("web", include_http=True)
    outcomes = run_all(
        conn,
        web,
        {host: http(server.url("/ok", host)) for host in ("127.0.0.1", "loop4.sectest.invalid")},
    )
    for host, outcome in outcomes.items():
        assert outcome == (
            "failed",
            f"Blocked: '{host}' is not in the allowed endpoint list (--http-allow-hosts).",
        )
    allowed = web.start(http(server.url("/ok", "allowed.sectest.invalid")))
    assert web.await_(allowed) == "completed"
    assert server.paths == ["/ok"]
