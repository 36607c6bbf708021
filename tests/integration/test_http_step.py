"""The HTTP steps against real local HTTP servers (no database: a fake privilege service)."""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import json
import logging
import socket
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpcore
import pytest

from durable_cluster import StepContext, StepFailed, __version__
from durable_cluster.config import Settings
from durable_cluster.context import step_logger
from durable_cluster.plugins import http as http_plugin
from durable_cluster.plugins.http import (
    HTTP_SIGNATURE,
    MULTIPART_SIGNATURE,
    HttpSteps,
    host_allowed,
    run_http,
    run_http_multipart,
)
from durable_cluster.ssrf import IPAddress

T = TypeVar("T")
PUBLIC_IP = "93.184.215.14"
ENVELOPE_KEYS = ["status", "body", "encoding", "headers", "ok", "duration_ms"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# -- a local HTTP server -------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class Server:
    port: int
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [r.path for r in self.received]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        state = self.server.state
        state.received.append(Received(self.command, self.path, list(self.headers.items()), body))
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/text":
            self._reply(200, "héllo wörld".encode(), [("Content-Type", "text/plain; charset=utf-8")])
        elif path == "/json":
            self._reply(200, b'{"a": 1, "b": [true, null]}', [("Content-Type", "application/json")])
        elif path == "/problem":
            self._reply(200, b'{"title": "x"}', [("Content-Type", "application/problem+json")])
        elif path == "/binary":
            self._reply(200, b"\x89PNG\r\n\x1a\n\x00\xff", [("Content-Type", "image/png")])
        elif path == "/utf8-octets":
            self._reply(200, "plain é".encode(), [("Content-Type", "application/octet-stream")])
        elif path == "/nul-text":
            self._reply(200, b"a\x00b", [("Content-Type", "text/plain")])
        elif path == "/latin1":
            self._reply(200, b"caf\xe9", [("Content-Type", "text/plain; charset=iso-8859-1")])
        elif path == "/bad-utf8-text":
            self._reply(200, b"\xff\xfe\xfd", [("Content-Type", "text/plain")])
        elif path == "/rot13":
            self._reply(200, b"abc", [("Content-Type", "text/plain; charset=rot13")])
        elif path == "/unknown-charset":
            self._reply(200, "é".encode(), [("Content-Type", "text/plain; charset=x-nope")])
        elif path == "/no-type":
            self._reply(200, b"\xc3\x28")
        elif path == "/empty":
            self.send_response(204)
            self.end_headers()
        elif path == "/headers":
            self._reply(
                200,
                b"ok",
                [("X-Multi", "a"), ("X-Multi", "b"), ("X-Obs", "caf\xe9"), ("X-Plain", "v")],
            )
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            size = int(query.get("size", "0"))
            body = b"E" * size if size else query.get("body", "").encode()
            self._reply(status, body, [("Content-Type", "text/plain")])
        elif path == "/redirect":
            self._reply(302, b"", [("Location", f"http://127.0.0.1:{state.port}/target")])
        elif path == "/target":
            self._reply(200, b"target")
        elif path == "/slow":
            state.release.wait(10)
            self._reply(200, b"late")
        elif path == "/big":
            self._reply(200, b"B" * int(query.get("size", "2000")), [("Content-Type", "text/plain")])
        elif path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(int(query.get("chunks", "5"))):
                self.wfile.write(b"1f4\r\n" + b"S" * 500 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._reply(200, b"echo", [("Content-Type", "text/plain")])

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _HTTPServer(ThreadingHTTPServer):
    state: Server

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that give up (size limit, timeout, cancel) break pipes: expected


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    httpd = _HTTPServer(("127.0.0.1", 0), Handler)
    state = Server(port=httpd.server_address[1])
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def srv(server: Server) -> Server:
    server.received.clear()
    return server


@pytest.fixture(scope="module")
def garbage_port() -> Iterator[int]:
    """A TCP server that answers anything with bytes that are not HTTP."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()
    thread.join(5)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- contexts ------------------------------------------------------------------------


class FakeServices:
    """Only the privilege check; HTTP steps need no database connection."""

    def __init__(self, allowed: bool = True) -> None:
        self.allowed = allowed
        self.checks: list[tuple[str, str]] = []

    async def has_function_privilege(self, role: str, signature: str) -> bool:
        self.checks.append((role, signature))
        return self.allowed

    def submitter_connection(self, ctx: StepContext) -> Any:
        raise AssertionError("HTTP steps do not use the database")

    async def checkpoint_in(self, ctx: StepContext, conn: Any, value: Any) -> None:
        raise AssertionError("HTTP steps do not checkpoint themselves")


def make_ctx(
    args: Any,
    *,
    kind: str = "http",
    services: FakeServices | None = None,
    role: str = "alice",
    **settings: Any,
) -> StepContext:
    settings.setdefault("http_allow_private", True)
    return StepContext(
        instance_id="abcd0001",
        node_id="n7",
        key="n7:0:1",
        kind=kind,
        args=args,
        attempt=1,
        iteration=0,
        label=None,
        variables={},
        results={},
        submitted_by=role,
        database=None,
        partition=3,
        logger=step_logger(f"durable_cluster.step.{kind}", "abcd0001", "n7", "n7:0:1"),
        settings=Settings(**settings),
        _services=services or FakeServices(),
    )


def http_args(
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: Any = None,
    timeout_seconds: Any = 30,
) -> dict[str, Any]:
    return {
        "url": url,
        "method": method,
        "body": body,
        "headers": headers,
        "timeout_seconds": timeout_seconds,
    }


def multipart_args(
    url: str, parts: Any, method: str = "POST", headers: Any = None, timeout_seconds: Any = 30
) -> dict[str, Any]:
    return {
        "url": url,
        "method": method,
        "parts": parts,
        "headers": headers,
        "timeout_seconds": timeout_seconds,
    }


def get(url: str, **kw: Any) -> dict[str, Any]:
    return run(run_http(make_ctx(http_args(url), **kw)))


def fails(coro: Coroutine[Any, Any, Any]) -> str:
    with pytest.raises(StepFailed) as raised:
        run(coro)
    return str(raised.value)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- registration --------------------------------------------------------------------


def test_registered_as_builtin() -> None:
    from durable_cluster import pluginmanager

    plugins = pluginmanager.build(env={})
    registrations = {r.kind: r for r in plugins.registry.registrations()}
    assert registrations["http"].handler is run_http
    assert registrations["http_multipart"].handler is run_http_multipart
    assert registrations["http"].plugin == "http"
    builtins = pluginmanager.DEFAULT_PLUGINS
    assert builtins.index("durable_cluster.plugins.http") < builtins.index("durable_cluster.plugins.core")


# -- the envelope --------------------------------------------------------------------


def test_text_envelope(srv: Server) -> None:
    envelope = get(srv.url("/text"))
    assert list(envelope) == ENVELOPE_KEYS
    assert envelope["status"] == 200
    assert envelope["body"] == "héllo wörld"
    assert envelope["encoding"] == "text"
    assert envelope["ok"] is True
    assert isinstance(envelope["duration_ms"], int)
    assert envelope["duration_ms"] >= 0
    assert envelope["headers"]["content-type"] == "text/plain; charset=utf-8"
    assert all(name == name.lower() for name in envelope["headers"])
    json.dumps(envelope)


def test_json_envelope_body_is_text(srv: Server) -> None:
    envelope = get(srv.url("/json"))
    assert envelope["encoding"] == "text"
    assert json.loads(envelope["body"]) == {"a": 1, "b": [True, None]}
    assert get(srv.url("/problem"))["body"] == '{"title": "x"}'


def test_binary_envelope_is_base64(srv: Server) -> None:
    envelope = get(srv.url("/binary"))
    assert envelope["encoding"] == "base64"
    assert base64.b64decode(envelope["body"]) == b"\x89PNG\r\n\x1a\n\x00\xff"


@pytest.mark.parametrize(
    ("path", "body", "encoding"),
    [
        ("/utf8-octets", "plain é", "text"),  # non-textual type, valid UTF-8: text
        ("/latin1", "café", "text"),  # textual type decoded with its charset
        ("/nul-text", b64(b"a\x00b"), "base64"),  # NUL cannot go into jsonb
        ("/bad-utf8-text", b64(b"\xff\xfe\xfd"), "base64"),  # textual type, undecodable
        ("/no-type", b64(b"\xc3\x28"), "base64"),
        ("/rot13", "abc", "text"),  # not a text encoding: UTF-8
        ("/unknown-charset", "é", "text"),
        ("/empty", "", "text"),
    ],
)
def test_text_or_base64(srv: Server, path: str, body: str, encoding: str) -> None:
    envelope = get(srv.url(path))
    assert (envelope["body"], envelope["encoding"]) == (body, encoding)


def test_response_headers_join_repeats_and_drop_non_ascii(srv: Server) -> None:
    headers = get(srv.url("/headers"))["headers"]
    assert headers["x-multi"] == "a, b"
    assert headers["x-plain"] == "v"
    assert "x-obs" not in headers
    assert all(isinstance(value, str) for value in headers.values())


def test_4xx_succeeds_with_ok_false(srv: Server) -> None:
    envelope = get(srv.url("/status/404?body=not+here"))
    assert envelope["status"] == 404
    assert envelope["ok"] is False
    assert envelope["body"] == "not here"


def test_5xx_fails_with_the_body(srv: Server) -> None:
    url = srv.url("/status/503?body=down")
    assert fails(run_http(make_ctx(http_args(url)))) == f"HTTP GET {url} returned 503: down"


def test_5xx_failure_text_is_truncated(srv: Server) -> None:
    url = srv.url("/status/500?size=600")
    message = fails(run_http(make_ctx(http_args(url, method="post", body="x"))))
    assert message == f"HTTP POST {url} returned 500: {'E' * 512}... [truncated, 600 bytes total]"


def test_exactly_512_bytes_is_not_truncated(srv: Server) -> None:
    url = srv.url("/status/502?size=512")
    assert fails(run_http(make_ctx(http_args(url)))) == f"HTTP GET {url} returned 502: {'E' * 512}"


def test_redirects_are_not_followed(srv: Server) -> None:
    envelope = get(srv.url("/redirect"))
    assert envelope["status"] == 302
    assert envelope["ok"] is False
    assert envelope["headers"]["location"] == srv.url("/target")
    assert srv.paths() == ["/redirect"]


# -- the request ---------------------------------------------------------------------


def test_request_headers_body_and_method(srv: Server) -> None:
    envelope = run(
        run_http(
            make_ctx(
                http_args(
                    srv.url("/echo"),
                    method="get",  # lower case, as a raw JSON node may have it
                    body="payload",
                    headers={"X-Token": "secret", "Accept": "application/json", "X-Utf8": "café"},
                )
            )
        )
    )
    assert envelope["status"] == 200
    [received] = srv.received
    assert received.method == "GET"
    assert received.body == b"payload"
    assert received.header("X-Token") == ["secret"]
    assert received.header("Accept") == ["application/json"]
    assert received.header("X-Utf8")[0].encode("latin-1") == "café".encode()
    assert received.header("Idempotency-Key") == ["abcd0001:n7:0:1"]
    assert received.header("User-Agent") == [f"durable-cluster/{__version__}"]
    assert received.header("Accept-Encoding") == ["identity"]
    assert received.header("Host") == [f"127.0.0.1:{srv.port}"]


def test_caller_idempotency_key_and_user_agent_win(srv: Server) -> None:
    headers = {"idempotency-key": "mine", "User-Agent": "me/1"}
    run(run_http(make_ctx(http_args(srv.url("/echo"), method="POST", headers=headers))))
    [received] = srv.received
    assert received.header("Idempotency-Key") == ["mine"]
    assert received.header("User-Agent") == ["me/1"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "delete", "Patch"])
def test_methods(srv: Server, method: str) -> None:
    run(run_http(make_ctx(http_args(srv.url("/echo"), method=method, body="b"))))
    assert srv.received[0].method == method.upper()
    assert srv.received[0].body == b"b"


def test_default_method_is_post(srv: Server) -> None:
    args = http_args(srv.url("/echo"))
    del args["method"]
    run(run_http(make_ctx(args)))
    assert srv.received[0].method == "POST"


def test_invalid_method(srv: Server) -> None:
    message = fails(run_http(make_ctx(http_args(srv.url("/echo"), method="head"))))
    assert message == "Invalid HTTP method: HEAD. Must be GET, POST, PUT, DELETE, or PATCH"
    assert srv.received == []


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-A": 1}, "Invalid header 'X-A': the value must be a string, not number"),
        ({"X-A": None}, "Invalid header 'X-A': the value must be a string, not null"),
        ({"X-A": True}, "Invalid header 'X-A': the value must be a string, not boolean"),
        ({"X-A": ["a"]}, "Invalid header 'X-A': the value must be a string, not array"),
        (
            {"X-A": "a\r\nX-Injected: 1"},
            "Invalid header 'X-A': the value contains a line break or control character",
        ),
        ({"X-A": "a\x00"}, "Invalid header 'X-A': the value contains a line break or control character"),
        (
            {"bad name": "x"},
            "Invalid header name 'bad name': must be a token (letters, digits and !#$%&'*+-.^_`|~)",
        ),
        ({"": "x"}, "Invalid header name '': must be a token (letters, digits and !#$%&'*+-.^_`|~)"),
        (["X-A"], "headers must be a JSON object of string values"),
        ("X-A: b", "headers must be a JSON object of string values"),
    ],
)
def test_header_validation(srv: Server, headers: Any, message: str) -> None:
    assert fails(run_http(make_ctx(http_args(srv.url("/echo"), headers=headers)))) == message
    assert srv.received == []


@pytest.mark.parametrize(
    "name", ["Host", "content-length", "Transfer-Encoding", "CONNECTION", "Keep-Alive", "Upgrade", "TE"]
)
def test_framing_headers_are_refused(srv: Server, name: str) -> None:
    message = fails(run_http(make_ctx(http_args(srv.url("/echo"), headers={name: "x"}))))
    assert message == (
        f"Header '{name}' is not allowed: the HTTP client sets the framing and hop-by-hop headers "
        "(Host, Content-Length, Transfer-Encoding, Connection, Keep-Alive, Proxy-Connection, TE, "
        "Trailer, Upgrade) itself"
    )
    assert srv.received == []


def test_body_must_be_text(srv: Server) -> None:
    message = fails(run_http(make_ctx(http_args(srv.url("/echo"), method="POST", body={"a": 1}))))
    assert message == "body must be a string or null, not object"


@pytest.mark.parametrize("timeout", [0, -1, "5", True, 0.0])
def test_invalid_timeout(srv: Server, timeout: Any) -> None:
    message = fails(run_http(make_ctx(http_args(srv.url("/echo"), timeout_seconds=timeout))))
    assert message == "Timeout must be positive"


# -- limits --------------------------------------------------------------------------


def test_request_body_limit(srv: Server) -> None:
    url = srv.url("/echo")
    message = fails(run_http(make_ctx(http_args(url, "POST", "x" * 11), http_max_request_bytes=10)))
    assert message == "HTTP request body is 11 bytes, over the limit of 10 (--http-max-request-bytes)"
    assert srv.received == []
    run(run_http(make_ctx(http_args(url, "POST", "x" * 10), http_max_request_bytes=10)))
    assert srv.received[0].body == b"x" * 10


def test_request_body_limit_counts_utf8_bytes(srv: Server) -> None:
    message = fails(run_http(make_ctx(http_args(srv.url("/e"), "POST", "é" * 6), http_max_request_bytes=10)))
    assert message.startswith("HTTP request body is 12 bytes, over the limit of 10")


def test_response_limit_by_content_length(srv: Server) -> None:
    url = srv.url("/big?size=2000")
    message = fails(run_http(make_ctx(http_args(url), http_max_response_bytes=1000)))
    assert message == f"HTTP response from {url} exceeds 1000 bytes (--http-max-response-bytes)"


def test_response_limit_while_streaming(srv: Server) -> None:
    url = srv.url("/stream?chunks=5")
    message = fails(run_http(make_ctx(http_args(url), http_max_response_bytes=1000)))
    assert message == f"HTTP response from {url} exceeds 1000 bytes (--http-max-response-bytes)"
    envelope = get(srv.url("/stream?chunks=2"), http_max_response_bytes=1000)
    assert envelope["body"] == "S" * 1000


def test_response_exactly_at_the_limit(srv: Server) -> None:
    assert get(srv.url("/big?size=1000"), http_max_response_bytes=1000)["body"] == "B" * 1000


# -- transport errors ----------------------------------------------------------------


def test_timeout_is_capped_by_the_ceiling(srv: Server) -> None:
    url = srv.url("/slow")
    started = time.monotonic()
    message = fails(run_http(make_ctx(http_args(url, timeout_seconds=30), http_timeout_ceiling=0.3)))
    assert message == f"HTTP timeout after 0.3s: {url}"
    assert time.monotonic() - started < 3


def test_timeout_seconds(srv: Server) -> None:
    url = srv.url("/slow")
    assert fails(run_http(make_ctx(http_args(url, timeout_seconds=0.2)))) == f"HTTP timeout after 0.2s: {url}"


def test_connection_failed(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/x"
    assert fails(run_http(make_ctx(http_args(url)))).startswith(f"HTTP connection failed: {url} - ")


def test_unresolvable_name() -> None:
    url = "http://does-not-exist.invalid/"
    message = fails(run_http(make_ctx(http_args(url))))
    assert message.startswith(f"HTTP connection failed: {url} - cannot resolve 'does-not-exist.invalid'")


def test_request_failed(garbage_port: int) -> None:
    url = f"http://127.0.0.1:{garbage_port}/x"
    assert fails(run_http(make_ctx(http_args(url)))).startswith(f"HTTP request failed: {url} - ")


def test_password_is_masked_in_messages(closed_port: int) -> None:
    url = f"http://user:hunter2@127.0.0.1:{closed_port}/x"
    message = fails(run_http(make_ctx(http_args(url))))
    assert "hunter2" not in message
    assert f"http://user:***@127.0.0.1:{closed_port}/x" in message


# -- privilege, scheme, allow-list ---------------------------------------------------


def test_privilege_denied(srv: Server) -> None:
    services = FakeServices(allowed=False)
    message = fails(run_http(make_ctx(http_args(srv.url("/echo")), services=services, role="bob")))
    assert message == (
        "Blocked: role 'bob' does not have EXECUTE privilege on df.http(). Grant EXECUTE ON FUNCTION "
        "df.http(text,text,text,jsonb,integer) TO bob to allow HTTP requests."
    )
    assert services.checks == [("bob", HTTP_SIGNATURE)]
    assert srv.received == []


def test_privilege_denied_multipart(srv: Server) -> None:
    services = FakeServices(allowed=False)
    args = multipart_args(srv.url("/up"), [{"name": "a", "data_b64": "AA=="}])
    message = fails(run_http_multipart(make_ctx(args, kind="http_multipart", services=services, role="Bob")))
    assert message == (
        "Blocked: role 'Bob' does not have EXECUTE privilege on df.http_multipart(). Grant EXECUTE ON "
        'FUNCTION df.http_multipart(text,text,jsonb,jsonb,integer) TO "Bob" to allow HTTP multipart requests.'
    )
    assert services.checks == [("Bob", MULTIPART_SIGNATURE)]
    assert srv.received == []


def test_privilege_is_checked_first() -> None:
    services = FakeServices(allowed=False)
    message = fails(run_http(make_ctx(http_args("ftp://x/"), services=services)))
    assert message.startswith("Blocked: role 'alice' does not have EXECUTE privilege")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x/", "Blocked: unsupported URL scheme 'ftp'. Only http and https are allowed."),
        ("FILE:///etc/passwd", "Blocked: unsupported URL scheme 'file'. Only http and https are allowed."),
        ("gopher://h:70/", "Blocked: unsupported URL scheme 'gopher'. Only http and https are allowed."),
        ("http:///x", "Blocked: unable to extract hostname from URL."),
        ("{base}/x", "Invalid URL: relative URL without a base"),
        (None, "url cannot be NULL"),
    ],
)
def test_url_checks(url: Any, message: str) -> None:
    assert fails(run_http(make_ctx(http_args(url)))) == message


@pytest.mark.parametrize(
    ("host", "spec", "allowed"),
    [
        ("api.example.com", "", True),
        ("api.example.com", "*.example.com", True),
        ("API.Example.COM.", "*.example.com", True),
        ("example.com", "*.example.com", False),
        ("evil-example.com", "*.example.com", False),
        ("api.github.com", " api.github.com , *.azurewebsites.net ", True),
        ("x.azurewebsites.net", "api.github.com,*.azurewebsites.net", True),
        ("x.azurewebsites.net.evil.com", "api.github.com,*.azurewebsites.net", False),
        ("10.1.2.3", "10.1.2.*", True),
        ("::1", "::1", True),
        ("bücher.de", "xn--bcher-kva.de", True),
    ],
)
def test_host_allowed(host: str, spec: str, allowed: bool) -> None:
    punycode = host.encode("idna").decode() if not host.isascii() else None
    assert host_allowed(host, spec, punycode=punycode) is allowed


def test_allow_list_blocks(srv: Server) -> None:
    message = fails(run_http(make_ctx(http_args(srv.url("/echo")), http_allow_hosts="*.example.com")))
    assert message == "Blocked: '127.0.0.1' is not in the allowed endpoint list (--http-allow-hosts)."
    assert srv.received == []


def test_allow_list_allows(srv: Server) -> None:
    assert get(srv.url("/text"), http_allow_hosts="api.example.com, 127.0.0.*")["status"] == 200


# -- the SSRF guard (http_allow_private off) -----------------------------------------


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("127.0.0.1", "the IP address '127.0.0.1' is in a restricted range (loopback 127.0.0.1)"),
        ("2130706433", "the IP address '2130706433' is in a restricted range (loopback 127.0.0.1)"),
        ("0x7f.1", "the IP address '0x7f.1' is in a restricted range (loopback 127.0.0.1)"),
        ("[::1]", "the IP address '::1' is in a restricted range (loopback ::1)"),
        ("localhost", "'localhost' is in a restricted range (loopback host name)"),
        ("localhost.", "'localhost.' is in a restricted range (loopback host name)"),
    ],
)
def test_ssrf_blocks_local_server(srv: Server, host: str, message: str) -> None:
    url = srv.url("/echo", host=host)
    result = fails(run_http(make_ctx(http_args(url), http_allow_private=False)))
    assert result == f"Blocked: {message}. Use --http-allow-private for trusted networks."
    assert srv.received == []


def test_ssrf_blocks_metadata_endpoint() -> None:
    url = "http://169.254.169.254/latest/meta-data/"
    message = fails(run_http(make_ctx(http_args(url), http_allow_private=False)))
    assert message == (
        "Blocked: the IP address '169.254.169.254' is in a restricted range (cloud metadata "
        "169.254.169.254). Use --http-allow-private for trusted networks."
    )


class ScriptedResolver:
    def __init__(self, *answers: Sequence[str]) -> None:
        import ipaddress

        self.answers = [[ipaddress.ip_address(a) for a in answer] for answer in answers]
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


class NatBackend(httpcore.AsyncNetworkBackend):
    """Connects the 'public' address PUBLIC_IP to the local server; records every connect."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connects: list[tuple[str, int]] = []
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host != PUBLIC_IP:
            raise httpcore.ConnectError(f"NAT: no route to {host}")
        return await self.inner.connect_tcp("127.0.0.1", self.port, timeout=timeout)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_dns_rebinding_connects_to_the_vetted_address(srv: Server) -> None:
    """The name resolves public, then loopback: the request goes to the public address it
    was vetted for (Host keeps the name); the next request sees loopback and is blocked."""
    resolver = ScriptedResolver([PUBLIC_IP], ["127.0.0.1"])
    nat = NatBackend(srv.port)
    steps = HttpSteps(resolver=resolver, network_backend=nat)
    url = f"http://rebind.test:{srv.port}/echo"

    envelope = run(steps.http(make_ctx(http_args(url), http_allow_private=False)))
    assert envelope["status"] == 200
    assert nat.connects == [(PUBLIC_IP, srv.port)]
    assert srv.received[0].header("Host") == [f"rebind.test:{srv.port}"]

    message = fails(steps.http(make_ctx(http_args(url), http_allow_private=False)))
    assert message == (
        "Blocked: the resolved IP address for 'rebind.test' is in a restricted range (loopback "
        "127.0.0.1). Use --http-allow-private for trusted networks."
    )
    assert resolver.calls == ["rebind.test", "rebind.test"]
    assert nat.connects == [(PUBLIC_IP, srv.port)]
    assert len(srv.received) == 1


def test_mixed_answers_use_only_public_addresses(srv: Server) -> None:
    resolver = ScriptedResolver(["127.0.0.1", "10.0.0.5", PUBLIC_IP])
    nat = NatBackend(srv.port)
    steps = HttpSteps(resolver=resolver, network_backend=nat)
    envelope = run(
        steps.http(make_ctx(http_args(f"http://mixed.test:{srv.port}/text"), http_allow_private=False))
    )
    assert envelope["body"] == "héllo wörld"
    assert nat.connects == [(PUBLIC_IP, srv.port)]


def test_redirect_to_loopback_is_returned_not_followed(srv: Server) -> None:
    steps = HttpSteps(resolver=ScriptedResolver([PUBLIC_IP]), network_backend=NatBackend(srv.port))
    envelope = run(
        steps.http(make_ctx(http_args(f"http://public.test:{srv.port}/redirect"), http_allow_private=False))
    )
    assert envelope["status"] == 302
    assert envelope["headers"]["location"] == f"http://127.0.0.1:{srv.port}/target"
    assert srv.paths() == ["/redirect"]


def test_allow_list_with_names(srv: Server) -> None:
    steps = HttpSteps(resolver=ScriptedResolver([PUBLIC_IP]), network_backend=NatBackend(srv.port))
    ok = make_ctx(
        http_args(f"http://api.example.test:{srv.port}/text"),
        http_allow_private=False,
        http_allow_hosts="*.example.test",
    )
    assert run(steps.http(ok))["status"] == 200
    blocked = make_ctx(
        http_args(f"http://example.test:{srv.port}/text"),
        http_allow_private=False,
        http_allow_hosts="*.example.test",
    )
    assert fails(steps.http(blocked)) == (
        "Blocked: 'example.test' is not in the allowed endpoint list (--http-allow-hosts)."
    )


# -- multipart -----------------------------------------------------------------------


def _parse_multipart(received: Received) -> list[Any]:
    [content_type] = received.header("Content-Type")
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + received.body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert message.is_multipart()
    return list(message.iter_parts())


def test_multipart_encoding(srv: Server) -> None:
    doc = json.dumps({"k": "v"}).encode()
    parts = [
        {
            "name": "file",
            "data_b64": "aGVs\nbG8g\r\nd29y bGQ=\n",
            "filename": "a b.txt",
            "content_type": "text/plain",
        },
        {"name": "meta", "data_b64": b64(doc), "content_type": "application/json; charset=utf-8"},
        {"name": "raw", "data_b64": b64(b"\x00\x01\xff"), "filename": "données.bin"},
        {"name": "empty", "data_b64": ""},
    ]
    headers = {"Content-Type": "application/json", "X-A": "1"}
    args = multipart_args(srv.url("/up"), parts, method="put", headers=headers)
    envelope = run(run_http_multipart(make_ctx(args, kind="http_multipart")))
    assert envelope["status"] == 200
    [received] = srv.received
    assert received.method == "PUT"
    [content_type] = received.header("Content-Type")
    assert content_type.startswith("multipart/form-data; boundary=")
    assert received.header("X-A") == ["1"]
    assert received.header("Idempotency-Key") == ["abcd0001:n7:0:1"]
    found = _parse_multipart(received)
    assert [p.get_param("name", header="content-disposition") for p in found] == [
        "file",
        "meta",
        "raw",
        "empty",
    ]
    assert found[0].get_filename() == "a b.txt"
    assert found[0].get_content_type() == "text/plain"
    assert found[0].get_payload(decode=True) == b"hello world"
    assert found[1].get_content_type() == "application/json"
    assert json.loads(found[1].get_payload(decode=True)) == {"k": "v"}
    assert found[2].get_payload(decode=True) == b"\x00\x01\xff"
    assert 'filename="données.bin"' in received.body.decode("utf-8", "replace")
    assert "Content-Type" not in found[2]
    assert found[3].get_payload(decode=True) == b""


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([{"name": "f", "data_b64": "A!=="}], "Invalid base64 in part 'f': Only base64 data is allowed"),
        ([{"name": "f", "data_b64": "AA="}], "Invalid base64 in part 'f': Incorrect padding"),
        ([{"name": "f", "data_b64": "AAé="}], "Invalid base64 in part 'f': Only base64 data is allowed"),
        ([{"name": "f", "data_b64": 12}], "Invalid base64 in part 'f': data_b64 must be a string"),
        ([{"name": "f"}], "Invalid base64 in part 'f': data_b64 must be a string"),
        (
            [{"name": "ok", "data_b64": "AA=="}, {"name": "g", "data_b64": "AA==", "content_type": "text"}],
            "Invalid content_type for part 'g': 'text' is not a MIME type (type/subtype, optionally "
            "followed by ; parameter=value)",
        ),
        (
            [{"name": "g", "data_b64": "AA==", "content_type": "text/plain\r\nX-Evil: 1"}],
            "Invalid content_type for part 'g': 'text/plain\r\nX-Evil: 1' is not a MIME type (type/subtype, "
            "optionally followed by ; parameter=value)",
        ),
        (
            [{"name": "g", "data_b64": "AA==", "content_type": 5}],
            "Invalid content_type for part 'g': 'number' is not a MIME type (type/subtype, optionally "
            "followed by ; parameter=value)",
        ),
        (
            [{"name": "f", "data_b64": "AA==", "filename": 'a".txt'}],
            "Invalid filename for part 'f': must not contain quotes, line breaks or control characters",
        ),
        (
            [{"name": "f", "data_b64": "AA==", "filename": "a\r\nContent-Type: x"}],
            "Invalid filename for part 'f': must not contain quotes, line breaks or control characters",
        ),
        (
            [{"name": "f", "data_b64": "AA==", "filename": 3}],
            "Invalid filename for part 'f': must be a string",
        ),
        (
            [{"name": 'a"b', "data_b64": "AA=="}],
            "Invalid name for part #1: must not contain quotes, line breaks or control characters",
        ),
        ([{"data_b64": "AA=="}], "Invalid part #1: name must be a non-empty string"),
        ([{"name": "", "data_b64": "AA=="}], "Invalid part #1: name must be a non-empty string"),
        ({"name": "f"}, "parts must be a JSON array of part objects"),
        ([1], "parts must be a JSON array of part objects"),
        (None, "parts must be a JSON array of part objects"),
        ([], "parts must contain at least one part"),
    ],
)
def test_multipart_validation(srv: Server, parts: Any, message: str) -> None:
    args = multipart_args(srv.url("/up"), parts)
    assert fails(run_http_multipart(make_ctx(args, kind="http_multipart"))) == message
    assert srv.received == []


def test_multipart_method(srv: Server) -> None:
    args = multipart_args(srv.url("/up"), [{"name": "a", "data_b64": "AA=="}], method="get")
    message = fails(run_http_multipart(make_ctx(args, kind="http_multipart")))
    assert message == "Invalid HTTP method for multipart: GET. Must be POST, PUT, or PATCH"


def test_multipart_request_limit(srv: Server) -> None:
    args = multipart_args(srv.url("/up"), [{"name": "a", "data_b64": b64(b"x" * 100)}])
    message = fails(run_http_multipart(make_ctx(args, kind="http_multipart", http_max_request_bytes=100)))
    assert message.startswith("HTTP request body is ")
    assert message.endswith(" bytes, over the limit of 100 (--http-max-request-bytes)")
    assert srv.received == []


def test_multipart_ssrf_and_scheme(srv: Server) -> None:
    parts = [{"name": "a", "data_b64": "AA=="}]
    blocked = make_ctx(multipart_args(srv.url("/up"), parts), kind="http_multipart", http_allow_private=False)
    assert fails(run_http_multipart(blocked)).startswith("Blocked: the IP address '127.0.0.1'")
    scheme = make_ctx(multipart_args("gopher://h/", parts), kind="http_multipart")
    assert fails(run_http_multipart(scheme)) == (
        "Blocked: unsupported URL scheme 'gopher'. Only http and https are allowed."
    )
    assert srv.received == []


# -- cancellation --------------------------------------------------------------------


def test_cancellation_aborts_the_request(srv: Server) -> None:
    ctx = make_ctx(http_args(srv.url("/slow")))

    async def scenario() -> None:
        task = asyncio.ensure_future(run_http(ctx))
        for _ in range(200):
            if srv.received:
                break
            await asyncio.sleep(0.01)
        assert srv.paths() == ["/slow"]
        ctx.cancelled.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)

    started = time.monotonic()
    run(scenario())
    assert time.monotonic() - started < 3


def test_already_cancelled_sends_nothing(srv: Server) -> None:
    ctx = make_ctx(http_args(srv.url("/echo")))

    async def scenario() -> None:
        ctx.cancelled.set()
        with pytest.raises(asyncio.CancelledError):
            await run_http(ctx)

    run(scenario())
    assert srv.received == []


def test_task_cancellation_propagates(srv: Server) -> None:
    ctx = make_ctx(http_args(srv.url("/slow")))

    async def scenario() -> None:
        task = asyncio.ensure_future(run_http(ctx))
        for _ in range(200):
            if srv.received:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())


# -- audit ---------------------------------------------------------------------------


def test_audit_line(srv: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="durable_cluster.step.http")
    get(srv.url("/status/404"))
    fails(run_http(make_ctx(http_args("ftp://x/"))))
    records = [r for r in caplog.records if getattr(r, "action", None) == "http_request"]
    assert len(records) == 2
    first, second = records
    assert first.__dict__["url"] == srv.url("/status/404")
    assert first.__dict__["method"] == "GET"
    assert first.__dict__["submitter"] == "alice"
    assert first.__dict__["status"] == 404
    assert first.__dict__["instance_id"] == "abcd0001"
    assert first.__dict__["step_key"] == "n7:0:1"
    assert second.__dict__["status"] is None
    assert second.__dict__["error"].startswith("Blocked: unsupported URL scheme")
    assert "secret" not in caplog.text


def test_module_default_is_shared() -> None:
    assert isinstance(http_plugin.DEFAULT, HttpSteps)
