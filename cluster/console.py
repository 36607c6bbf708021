"""The web console: a read-mostly page over the ``df`` monitoring SQL, as one database role.

``durable-cluster console --bind 127.0.0.1:8484`` serves it on its own;
``durable-cluster start --console 127.0.0.1:8484`` makes the coordinator
start this same command as a helper process (``os.posix_spawn``: the
coordinator stays single-threaded and holds no connection; this process has
the threads and the connection pool).

What it serves (``docs/console.md``):

- ``/`` the page (``static/console.html``, ``.js``, ``.css``: vanilla
  JavaScript, no CDN): instances with status and label filters and
  pagination, an instance's graph as an SVG picture (:mod:`.render`) with
  each node's inferred status and timings, live updates (the page polls the
  JSON API every 2 s), cancel and signal buttons;
- ``/api/...`` the JSON API: the dictionaries of :mod:`.inspect`.

Security (``docs/security.md``, T29-T32):

- **The role.** Every query runs on a connection authenticated as the
  console role (``--console-role``, default the DSN's user), so row-level
  security decides what the page shows and what its buttons may cancel:
  exactly what that role sees in ``psql``.
- **The token.** Nothing is served without a secret: ``/?token=...``
  (compared in constant time) answers with the page and an ``HttpOnly;
  SameSite=Strict`` session cookie derived from the token; every other
  request needs that cookie, else 401. The page then drops the token from
  the address bar; ``Referrer-Policy: no-referrer`` keeps it out of
  Referer headers, and the access log never contains query strings.
- **CSRF.** POSTs also need the ``X-CSRF-Token`` header (from
  ``/api/session``, which needs the cookie), ``Content-Type:
  application/json`` and, when the browser sends one, an ``Origin`` equal to
  the console's own.
- **The address.** Loopback by default; any other address is refused unless
  ``--console-allow-remote`` (then put TLS in front: a reverse proxy).
- **The page** is sent with a Content-Security-Policy allowing only its own
  script and style, and may not be framed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from . import db, inspect, process, render
from .errors import ConfigError, DurableClusterError
from .version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import Settings
    from .coordinator import Helper

__all__ = [
    "App",
    "Plan",
    "check_bind",
    "command",
    "make_token",
    "parse_bind",
    "plan",
    "serve",
    "url",
]

log = logging.getLogger("durable_cluster.console")

COOKIE = "durable_console"
CSRF_HEADER = "X-CSRF-Token"
MIN_TOKEN_LENGTH = 16
MAX_BODY = 64 * 1024  # bytes of a POST body
POOL_SIZE = 4
PARENT_CHECK_INTERVAL = 1.0  # seconds between checks that the coordinator is alive
APPLICATION_NAME = "durable-cluster console"
STATIC = {
    "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/static/console.css": ("console.css", "text/css; charset=utf-8"),
}
INSTANCE_PATH = re.compile(r"^/api/instances/([0-9a-fA-F]{8})(/graph\.svg|/cancel|/signal)?$")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# -- configuration ------------------------------------------------------------------------------


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"console address must be HOST:PORT, not {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless ``--console-allow-remote``."""
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(
            f"the console would listen on {host}, which is not a loopback address: anyone who can reach "
            "it and learns the token acts as the console role. Give --console-allow-remote to do it "
            "anyway (and put a TLS reverse proxy in front, see docs/console.md)"
        )


def make_token() -> str:
    return secrets.token_urlsafe(24)


def check_token(token: str) -> str:
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"--console-token must be at least {MIN_TOKEN_LENGTH} characters")
    return token


def url(host: str, port: int, token: str | None = None) -> str:
    where = f"[{host}]" if ":" in host else host
    suffix = f"?token={urllib.parse.quote(token)}" if token else ""
    return f"http://{where}:{port}/{suffix}"


def command(*, bind: str, parent_pid: int, log_level: str) -> list[str]:
    """The helper's argv for ``start --console`` (secrets go in its environment, not here)."""
    return [
        sys.executable,
        "-m",
        "durable_cluster",
        "console",
        "--bind",
        bind,
        "--parent-pid",
        str(parent_pid),
        "--log-level",
        log_level,
    ]


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _static(name: str) -> bytes:
    return (resources.files("durable_cluster") / "static" / name).read_bytes()


# -- the application ------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] | None = None


def _json(status: int, value: Any) -> Response:
    return Response(status, json.dumps(inspect.jsonable(value)).encode())


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


UNAUTHORIZED_PAGE = (
    b"<!doctype html><meta charset=utf-8><title>durable-cluster console</title>"
    b"<h1>401: not signed in</h1><p>Open the console URL that <code>durable-cluster start --console</code>"
    b" (or <code>durable-cluster console</code>) printed: it carries the access token.</p>\n"
)


class App:
    """Routes, authentication and the database work of the console (no sockets: testable)."""

    def __init__(self, pool: ConnectionPool[Any], *, token: str, role: str, database: str) -> None:
        self.pool = pool
        self.token = token
        self.role = role
        self.database = database
        self.cookie_value = _derive(token, "session")
        self.csrf = _derive(token, "csrf")

    # -- authentication --------------------------------------------------------------------

    def signed_in(self, cookie_header: str | None) -> bool:
        for part in (cookie_header or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.cookie_value.encode()):
                return True
        return False

    def session_cookie(self) -> str:
        return f"{COOKIE}={self.cookie_value}; HttpOnly; SameSite=Strict; Path=/"

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())

    # -- dispatch --------------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes, *, host: str
    ) -> Response:
        parts = urllib.parse.urlsplit(target)
        path = parts.path
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        cookie = headers.get("cookie")
        if method == "GET" and path == "/" and "token" in query:
            if not self.token_ok(query["token"][0]):
                return Response(401, UNAUTHORIZED_PAGE, "text/html; charset=utf-8")
            return Response(
                200,
                _static("console.html"),
                "text/html; charset=utf-8",
                {"Set-Cookie": self.session_cookie()},
            )
        if not self.signed_in(cookie):
            if path == "/" or not path.startswith("/api/"):
                return Response(401, UNAUTHORIZED_PAGE, "text/html; charset=utf-8")
            return _error(401, "not signed in: open the console URL with its token")
        if method == "GET":
            return self.get(path, query)
        if method == "POST":
            refused = self.check_post(headers, host)
            if refused is not None:
                return refused
            return self.post(path, body)
        return _error(405, "method not allowed")

    def check_post(self, headers: dict[str, str], host: str) -> Response | None:
        given = headers.get(CSRF_HEADER.lower(), "")
        if not given or not hmac.compare_digest(given.encode(), self.csrf.encode()):
            return _error(403, "missing or wrong CSRF token")
        origin = headers.get("origin")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return _error(403, f"cross-origin request refused (Origin {origin})")
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "send application/json")
        return None

    def get(self, path: str, query: dict[str, list[str]]) -> Response:
        if path == "/":
            return Response(200, _static("console.html"), "text/html; charset=utf-8")
        if path == "/favicon.ico":
            return Response(204, b"", "image/x-icon")
        if path in STATIC:
            name, content_type = STATIC[path]
            return Response(200, _static(name), content_type)
        if path == "/api/session":
            return _json(
                200, {"role": self.role, "database": self.database, "version": __version__, "csrf": self.csrf}
            )
        if path == "/api/status":
            return self.db(inspect.status)
        if path == "/api/instances":

            def first(name: str) -> str | None:
                values = query.get(name)
                return values[0] if values and values[0] != "" else None

            limit_text = first("limit") or "50"
            if not limit_text.isdigit():
                return _error(400, "limit must be a number")
            status, label, cursor = first("status"), first("label"), first("cursor")
            return self.db(
                lambda conn: inspect.list_instances(
                    conn, status=status, label=label, limit=int(limit_text), cursor=cursor
                )
            )
        match = INSTANCE_PATH.match(path)
        if match and match.group(2) is None:
            return self.db(lambda conn: inspect.show(conn, match.group(1)))
        if match and match.group(2) == "/graph.svg":

            def picture(conn: inspect.Conn) -> Response:
                nodes, root = inspect.graph_nodes(inspect.show(conn, match.group(1)))
                return Response(200, render.svg(nodes, root).encode(), "image/svg+xml")

            return self.db_response(picture)
        return _error(404, "not found")

    def post(self, path: str, body: bytes) -> Response:
        match = INSTANCE_PATH.match(path)
        if match is None or match.group(2) not in ("/cancel", "/signal"):
            return _error(404, "not found")
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(data, dict):
            return _error(400, "the body must be a JSON object")
        instance = match.group(1)
        if match.group(2) == "/cancel":
            reason = str(data.get("reason") or "Cancelled from the console")
            log.info(
                "cancel of %s requested as %s",
                instance,
                self.role,
                extra={"action": "console_cancel", "instance_id": instance},
            )
            return self.db(lambda conn: inspect.cancel(conn, instance, reason))
        name = data.get("name")
        if not isinstance(name, str) or not name:
            return _error(400, "give the signal's name")
        payload = data.get("data", "{}")
        text = payload if isinstance(payload, str) else json.dumps(payload)
        log.info(
            "signal %s to %s requested as %s",
            name,
            instance,
            self.role,
            extra={"action": "console_signal", "instance_id": instance},
        )
        return self.db(lambda conn: inspect.signal(conn, instance, name, text))

    # -- the database ----------------------------------------------------------------------

    def db(self, work: Callable[[inspect.Conn], Any]) -> Response:
        return self.db_response(lambda conn: _json(200, work(conn)))

    def db_response(self, work: Callable[[inspect.Conn], Response]) -> Response:
        try:
            with self.pool.connection() as conn:
                return work(conn)
        except inspect.InstanceNotFound as exc:
            return _error(404, str(exc))
        except DurableClusterError as exc:
            return _error(400, str(exc))
        except psycopg.errors.RaiseException as exc:
            return _error(400, db.primary_message(exc))
        except psycopg.errors.InvalidParameterValue as exc:
            return _error(400, db.primary_message(exc))
        except psycopg.Error as exc:
            log.warning("database error: %s", exc, extra={"action": "console_db_error"})
            return _error(503, f"database error: {db.primary_message(exc)}")


# -- HTTP -----------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "durable-cluster-console"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._send(_error(400, "bad Content-Length"), close=True)
            return
        if length > MAX_BODY:
            self._send(_error(413, "request body too large"), close=True)
            return
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        host = headers.get("host", "")
        try:
            response = self.server.app.handle(method, self.path, headers, body, host=host)
        except Exception:
            log.exception("console request failed", extra={"action": "console_error"})
            response = _error(500, "internal error (see the console's log)")
        self._send(response)

    def _send(self, response: Response, *, close: bool = False) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in {**SECURITY_HEADERS, **(response.headers or {})}.items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access log at debug level, without query strings (the token travels in one)."""
        path = self.path.split("?", 1)[0]
        log.debug(
            "%s %s %s",
            self.command,
            path,
            args[1] if len(args) > 1 else "",
            extra={"action": "console_request"},
        )


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: App) -> None:
        import socket  # noqa: PLC0415

        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.app = app


# -- the process ----------------------------------------------------------------------------------


def role_conninfo(dsn: str, role: str | None) -> str:
    """The console's connection string: the DSN, logged in as ``role`` when given."""
    return db.conninfo(dsn, user=role or None, application_name=APPLICATION_NAME)


def open_pool(dsn: str, role: str | None) -> tuple[ConnectionPool[Any], str, str]:
    """A small pool logged in as the console role; returns it with the role and database names."""
    conninfo = role_conninfo(dsn, role)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_user, current_database(), r.rolsuper, r.rolbypassrls"
                " FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"
            ).fetchone()
    except psycopg.OperationalError as exc:
        raise DurableClusterError(
            f"the console cannot log in as {role or db.dsn_user(dsn) or 'the DSN user'}: "
            f"{db.primary_message(exc)}"
        ) from exc
    assert row is not None
    name, database, superuser, bypass = str(row[0]), str(row[1]), bool(row[2]), bool(row[3])
    if superuser or bypass:
        log.warning(
            "the console acts as %s, which bypasses row-level security: it shows every role's instances "
            "(give --console-role to show one role's)",
            name,
            extra={"action": "console_role"},
        )
    pool: ConnectionPool[Any] = ConnectionPool(
        conninfo,
        min_size=1,
        max_size=POOL_SIZE,
        kwargs={"autocommit": True, "row_factory": dict_row},
        check=ConnectionPool.check_connection,
        name="durable-console",
        open=True,
        timeout=10.0,
    )
    return pool, name, database


def serve(
    settings: Settings,
    *,
    dsn: str,
    bind: str,
    parent_pid: int | None = None,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Run the console until SIGTERM (or Ctrl-C when standalone, or the coordinator's death)."""
    host, port = parse_bind(bind)
    check_bind(host, allow_remote=settings.console_allow_remote)
    token = check_token(settings.console_token) if settings.console_token else make_token()
    stop = threading.Event()
    if parent_pid is not None:
        # A helper of `start --console`: Ctrl-C belongs to the coordinator, which TERMs us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            process.set_parent_death_signal(signal.SIGTERM)
        if not process.parent_alive(parent_pid):
            return 0
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    process.set_process_title("durable-cluster: console")
    pool, role, database = open_pool(dsn, settings.console_role)
    try:
        try:
            server = ConsoleServer((host, port), App(pool, token=token, role=role, database=database))
        except OSError as exc:
            raise DurableClusterError(f"the console cannot listen on {bind}: {exc.strerror or exc}") from exc
        with server:
            port = server.server_address[1]
            thread = threading.Thread(target=server.serve_forever, name="console-http", daemon=True)
            thread.start()
            log.info(
                "console listening on %s as role %s",
                url(host, port),
                role,
                extra={"action": "console_listening", "role": role},
            )
            if announce is not None:
                announce(url(host, port, token))
            try:
                while not stop.wait(PARENT_CHECK_INTERVAL):
                    if parent_pid is not None and not process.parent_alive(parent_pid):
                        log.info("the coordinator is gone: stopping", extra={"action": "console_stopping"})
                        break
            except KeyboardInterrupt:
                pass
            server.shutdown()
            thread.join(5.0)
    finally:
        pool.close()
    log.info("console stopped", extra={"action": "console_stopped"})
    return 0


@dataclass(frozen=True)
class Plan:
    """``start --console``: where the console will listen and its token, checked before anything starts."""

    bind: str
    host: str
    port: int
    token: str

    @property
    def url(self) -> str:
        """The URL printed once in the start banner (it carries the token)."""
        return url(self.host, self.port, self.token)

    def helper(self, settings: Settings, dsn: str) -> Helper:
        """The coordinator's helper process; the DSN and the token travel in its environment."""
        from .coordinator import Helper  # noqa: PLC0415

        env = {
            "DURABLE_DSN": dsn,
            "DURABLE_CONSOLE_TOKEN": self.token,
            "DURABLE_CONSOLE_ALLOW_REMOTE": "1" if settings.console_allow_remote else "0",
        }
        if settings.console_role:
            env["DURABLE_CONSOLE_ROLE"] = settings.console_role
        argv = command(bind=self.bind, parent_pid=os.getpid(), log_level=settings.log_level)
        return Helper("console", tuple(argv), env=env, off="the console is off")


def plan(settings: Settings) -> Plan | None:
    """Check ``--console`` and pick the token (``--console-token`` or a new one); None without it."""
    if not settings.console:
        return None
    host, port = parse_bind(settings.console)
    check_bind(host, allow_remote=settings.console_allow_remote)
    token = check_token(settings.console_token) if settings.console_token else make_token()
    return Plan(settings.console, host, port, token)
