"""The built-in HTTP steps ``http`` (``df.http``) and ``http_multipart`` (``df.http_multipart``).

Each step runs, in this order (pg_durable's order, with its known problems fixed):

1. **Privilege re-check**: the submitting role must still hold EXECUTE on
   ``df.http(text,text,text,jsonb,integer)`` (resp.
   ``df.http_multipart(text,text,jsonb,jsonb,integer)``), so a raw JSON node
   cannot bypass the grant and a REVOKE stops a running workflow.
2. **URL**: scheme ``http``/``https`` only; a host is required.
3. **Allow-list** ``--http-allow-hosts``: comma-separated, case-insensitive
   ``fnmatch`` patterns matched against the host (lower case, no brackets, no
   trailing dot; an internationalised name matches in Unicode or punycode
   form). ``*.example.com`` does not match ``example.com`` itself. Empty: any
   host.
4. **Request checks**: method (case-insensitive, so raw JSON nodes with
   ``"get"`` work), ``timeout_seconds`` positive, headers a JSON object of
   *string* values (a non-string value fails the node instead of being
   dropped), valid header names and values, no framing or hop-by-hop headers
   (``Host``, ``Content-Length``, ``Transfer-Encoding``, ``Connection``,
   ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Upgrade``:
   the client owns the framing), body at most ``--http-max-request-bytes``.
5. **SSRF guard at connect time** (:mod:`durable_cluster.ssrf`): the host is
   resolved once, restricted addresses are dropped and the connection goes to
   a vetted address. Off with ``--http-allow-private``.
6. **Request**: redirects are never followed (a 3xx is returned as it is);
   environment proxies are ignored; ``User-Agent: durable-cluster/<version>``
   and ``Idempotency-Key: <ctx.idempotency_key>`` are sent unless the caller
   set them; ``Accept-Encoding: identity`` unless the caller set one (so the
   size limit counts what the server sent; a caller asking for ``gzip`` gets
   the body decoded, and the limit then counts decoded bytes). The body is
   sent as given, for any method. The timeout is
   ``min(timeout_seconds, --http-timeout-ceiling)`` and bounds the whole
   exchange: resolution, connection, sending and reading the body.
7. **Response**: read as a stream; more than ``--http-max-response-bytes``
   (announced by ``Content-Length`` or counted while reading) fails the node.
   The envelope is ``{"status", "body", "encoding", "headers", "ok",
   "duration_ms"}``. The body is text when the ``Content-Type`` is textual and
   the bytes decode with its charset (UTF-8 by default), or when the bytes are
   valid UTF-8; text containing NUL is never used (PostgreSQL's jsonb cannot
   store ``\\u0000``); otherwise base64. Header names are lower case; values
   that are not visible ASCII are left out; a repeated header's values are
   joined with ``", "`` (RFC 9110 §5.3; for ``Set-Cookie`` this is the Fetch
   standard's joined form).
8. **Status**: 2xx, 3xx and 4xx succeed (``ok`` is true for 2xx only); 5xx
   fails the node with ``HTTP <METHOD> <url> returned <code>: <first 512
   bytes>`` (plus ``... [truncated, N bytes total]`` when longer).

Multipart: POST, PUT or PATCH; each part's ``data_b64`` is decoded with ASCII
whitespace ignored; ``name`` and ``filename`` must not contain quotes, line
breaks or control characters; ``content_type`` must be a MIME type. A caller
``Content-Type`` header is never sent (the boundary is ours): it is dropped
with a warning in the log.

Every request logs one audit line (``action=http_request``: url with any
password masked, method, submitter, status or error). Headers are not logged.
When ``ctx.cancelled`` is set the request is aborted and the handler raises
:class:`asyncio.CancelledError`: the result is not wanted, so nothing is
recorded (a step abandoned by a stopping worker runs again elsewhere).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import functools
import re
import secrets
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx

from durable_cluster import StepContext, StepFailed, __version__, hookimpl
from durable_cluster.config import Settings
from durable_cluster.ssrf import Blocked, Guard, GuardedTransport, Resolver, normalise_host

if TYPE_CHECKING:
    from durable_cluster import StepRegistry

T = TypeVar("T")

USER_AGENT = f"durable-cluster/{__version__}"
HTTP_SIGNATURE = "df.http(text,text,text,jsonb,integer)"
MULTIPART_SIGNATURE = "df.http_multipart(text,text,jsonb,jsonb,integer)"
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
MULTIPART_METHODS = ("POST", "PUT", "PATCH")
DEFAULT_TIMEOUT = 30.0
#: bytes of a 5xx body quoted in the failure message.
ERROR_BODY_BYTES = 512
#: headers the client owns: framing (RFC 9112) and hop-by-hop (RFC 9110 §7.6.1).
FORBIDDEN_HEADERS = (
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Upgrade",
)
_FORBIDDEN = {name.lower() for name in FORBIDDEN_HEADERS}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_DISPOSITION = re.compile(r'[\x00-\x1f\x7f"]')
_VISIBLE = re.compile(rb"[\x20-\x7e\t]*")
_RESTRICTED = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
_PARAMETER = rf"[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+=(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|{_QUOTED})"
_MIME = re.compile(rf"{_RESTRICTED}/{_RESTRICTED}(?:{_PARAMETER})*[ \t]*")
_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/x-www-form-urlencoded",
        "application/graphql",
        "application/yaml",
        "application/x-yaml",
    }
)
_B64_WHITESPACE = str.maketrans("", "", " \t\n\r\f\v")


@hookimpl
def durable_register_steps(registry: StepRegistry) -> None:
    registry.add("http", run_http, description="an HTTP request (df.http)")
    registry.add("http_multipart", run_http_multipart, description="a multipart/form-data upload")


async def run_http(ctx: StepContext) -> dict[str, Any]:
    """The ``http`` step handler (``df.http``)."""
    return await DEFAULT.http(ctx)


async def run_http_multipart(ctx: StepContext) -> dict[str, Any]:
    """The ``http_multipart`` step handler (``df.http_multipart``)."""
    return await DEFAULT.http_multipart(ctx)


@dataclass
class _Request:
    url: str  # as given (sent)
    shown: str  # for messages and logs: any password masked
    method: str
    headers: list[tuple[str, str]]
    body: bytes | None
    timeout: float


class HttpSteps:
    """The HTTP step handlers, with injectable name resolution and sockets.

    :param resolver: resolves host names for the SSRF guard (system resolver
        by default); see :class:`durable_cluster.ssrf.Guard`.
    :param network_backend: opens TCP connections to vetted addresses
        (``httpcore.AnyIOBackend`` by default).
    :param ssl_context: for https (a default verifying context by default).
    """

    def __init__(
        self,
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.resolver = resolver
        self.network_backend = network_backend
        self.ssl_context = ssl_context

    async def http(self, ctx: StepContext) -> dict[str, Any]:
        """Run a ``df.http`` node: ``ctx.args`` = ``{url, method, body, headers, timeout_seconds}``."""
        config = _config(ctx, "HTTP")
        shown = _shown(config.get("url"))
        method = str(config.get("method") or "POST").upper()
        outcome: dict[str, Any] = {"status": None, "error": None}
        try:
            await _check_privilege(ctx, "df.http", HTTP_SIGNATURE, "HTTP requests")
            settings = _settings(ctx)
            url = _check_url(config.get("url"), settings)
            if method not in HTTP_METHODS:
                raise StepFailed(f"Invalid HTTP method: {method}. Must be GET, POST, PUT, DELETE, or PATCH")
            timeout = _timeout(config, settings)
            headers = _headers(config.get("headers"))
            body = config.get("body")
            if body is not None and not isinstance(body, str):
                raise StepFailed(f"body must be a string or null, not {_json_type(body)}")
            content = body.encode() if body is not None else None
            _check_request_size(content, settings)
            request = _Request(url, shown, method, headers, content, timeout)
            return await self._send(ctx, request, settings, outcome)
        except Exception as exc:
            outcome["error"] = str(exc) or type(exc).__name__
            raise
        finally:
            _audit(ctx, shown, method, outcome)

    async def http_multipart(self, ctx: StepContext) -> dict[str, Any]:
        """Run a ``df.http_multipart`` node.

        ``ctx.args`` = ``{url, method, parts, headers, timeout_seconds}``.
        """
        config = _config(ctx, "HTTP_MULTIPART")
        shown = _shown(config.get("url"))
        method = str(config.get("method") or "POST").upper()
        outcome: dict[str, Any] = {"status": None, "error": None}
        try:
            await _check_privilege(ctx, "df.http_multipart", MULTIPART_SIGNATURE, "HTTP multipart requests")
            settings = _settings(ctx)
            url = _check_url(config.get("url"), settings)
            if method not in MULTIPART_METHODS:
                raise StepFailed(f"Invalid HTTP method for multipart: {method}. Must be POST, PUT, or PATCH")
            timeout = _timeout(config, settings)
            headers = _headers(config.get("headers"))
            kept = [(name, value) for name, value in headers if name.lower() != "content-type"]
            if len(kept) != len(headers):
                ctx.logger.warning(
                    "http_multipart: the caller's Content-Type header is not sent (the body is "
                    "multipart/form-data with its own boundary)"
                )
            content, content_type = encode_multipart(config.get("parts"))
            _check_request_size(content, settings)
            request = _Request(url, shown, method, [*kept, ("Content-Type", content_type)], content, timeout)
            return await self._send(ctx, request, settings, outcome)
        except Exception as exc:
            outcome["error"] = str(exc) or type(exc).__name__
            raise
        finally:
            _audit(ctx, shown, method, outcome)

    async def _send(
        self, ctx: StepContext, request: _Request, settings: Settings, outcome: dict[str, Any]
    ) -> dict[str, Any]:
        if ctx.cancelled.is_set():
            outcome["error"] = "cancelled"
            raise asyncio.CancelledError
        if not any(name.lower() == "idempotency-key" for name, _ in request.headers):
            request.headers.append(("Idempotency-Key", ctx.idempotency_key))
        try:
            return await _unless_cancelled(self._exchange(request, settings, outcome), ctx.cancelled)
        except asyncio.CancelledError:
            outcome["error"] = "cancelled"
            raise

    async def _exchange(
        self, request: _Request, settings: Settings, outcome: dict[str, Any]
    ) -> dict[str, Any]:
        guard = Guard(allow_private=settings.http_allow_private, resolver=self.resolver)
        transport = GuardedTransport(
            guard,
            inner=self.network_backend,
            ssl_context=self.ssl_context or _default_ssl_context(),
        )
        started = time.monotonic()
        limit = settings.http_max_response_bytes
        try:
            async with (
                asyncio.timeout(request.timeout),
                httpx.AsyncClient(
                    transport=transport,
                    follow_redirects=False,
                    trust_env=False,
                    timeout=httpx.Timeout(request.timeout),
                ) as client,
            ):
                built = client.build_request(
                    request.method,
                    request.url,
                    # UTF-8 for values beyond ASCII (obs-text), not httpx's ASCII-only default.
                    headers=[(name.encode(), value.encode()) for name, value in request.headers],
                    content=request.body,
                )
                given = {name.lower() for name, _ in request.headers}
                if "user-agent" not in given:
                    built.headers["User-Agent"] = USER_AGENT
                if "accept-encoding" not in given:
                    built.headers["Accept-Encoding"] = "identity"
                response = await client.send(built, stream=True)
                try:
                    outcome["status"] = response.status_code
                    body = await _read_limited(response, limit, request.shown)
                finally:
                    await response.aclose()
        except Blocked as exc:
            raise StepFailed(str(exc)) from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise StepFailed(f"HTTP timeout after {request.timeout:g}s: {request.shown}") from exc
        except httpx.ConnectError as exc:
            raise StepFailed(f"HTTP connection failed: {request.shown} - {_describe(exc)}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise StepFailed(f"HTTP request failed: {request.shown} - {_describe(exc)}") from exc
        duration_ms = round((time.monotonic() - started) * 1000)
        status = response.status_code
        if status >= 500:
            raise StepFailed(_server_error(request, status, body))
        text, encoding = decode_body(body, response.headers.get("content-type"))
        return {
            "status": status,
            "body": text,
            "encoding": encoding,
            "headers": response_headers(response.headers.raw),
            "ok": 200 <= status < 300,
            "duration_ms": duration_ms,
        }


DEFAULT = HttpSteps()


# -- checks --------------------------------------------------------------------------


def _config(ctx: StepContext, node_type: str) -> dict[str, Any]:
    if not isinstance(ctx.args, dict):
        raise StepFailed(f"{node_type} node config must be a JSON object")
    return ctx.args


def _settings(ctx: StepContext) -> Settings:
    return ctx.settings if ctx.settings is not None else Settings()


def _sql_identifier(role: str) -> str:
    if re.match(r"^[a-z_][a-z0-9_$]*$", role):
        return role
    return '"' + role.replace('"', '""') + '"'


async def _check_privilege(ctx: StepContext, function: str, signature: str, what: str) -> None:
    if not await ctx.has_function_privilege(signature):
        role = ctx.submitted_by
        raise StepFailed(
            f"Blocked: role '{role}' does not have EXECUTE privilege on {function}(). "
            f"Grant EXECUTE ON FUNCTION {signature} TO {_sql_identifier(role)} to allow {what}."
        )


def _check_url(raw: Any, settings: Settings) -> str:
    """The URL to request, after the scheme, host and allow-list checks."""
    if not isinstance(raw, str) or not raw:
        raise StepFailed("url cannot be NULL")
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise StepFailed(f"Invalid URL: {exc}") from exc
    if not url.scheme:
        raise StepFailed("Invalid URL: relative URL without a base")
    if url.scheme not in ("http", "https"):
        raise StepFailed(f"Blocked: unsupported URL scheme '{url.scheme}'. Only http and https are allowed.")
    if not url.host:
        raise StepFailed("Blocked: unable to extract hostname from URL.")
    if not host_allowed(url.host, settings.http_allow_hosts, punycode=url.raw_host.decode("ascii")):
        raise StepFailed(f"Blocked: '{url.host}' is not in the allowed endpoint list (--http-allow-hosts).")
    return raw


def allow_patterns(spec: str) -> list[str]:
    """The patterns of ``--http-allow-hosts`` (comma-separated, blanks ignored, lower case)."""
    return [part.strip().lower().rstrip(".") for part in spec.split(",") if part.strip()]


def host_allowed(host: str, spec: str, *, punycode: str | None = None) -> bool:
    """Whether ``host`` matches one of the ``--http-allow-hosts`` patterns (empty: any host)."""
    patterns = allow_patterns(spec)
    if not patterns:
        return True
    names = {normalise_host(host)}
    if punycode:
        names.add(normalise_host(punycode))
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)


def _timeout(config: dict[str, Any], settings: Settings) -> float:
    value = config.get("timeout_seconds")
    if value is None:
        value = DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise StepFailed("Timeout must be positive")
    return float(min(value, settings.http_timeout_ceiling))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string" if isinstance(value, str) else type(value).__name__


def _headers(raw: Any) -> list[tuple[str, str]]:
    """The caller's headers, validated: a JSON object of string values, no framing headers."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise StepFailed("headers must be a JSON object of string values")
    headers = []
    for name, value in raw.items():
        if not isinstance(value, str):
            raise StepFailed(f"Invalid header '{name}': the value must be a string, not {_json_type(value)}")
        if not _TOKEN.fullmatch(name):
            raise StepFailed(
                f"Invalid header name '{name}': must be a token (letters, digits and !#$%&'*+-.^_`|~)"
            )
        if name.lower() in _FORBIDDEN:
            raise StepFailed(
                f"Header '{name}' is not allowed: the HTTP client sets the framing and hop-by-hop "
                f"headers ({', '.join(FORBIDDEN_HEADERS)}) itself"
            )
        if _BAD_VALUE.search(value):
            raise StepFailed(f"Invalid header '{name}': the value contains a line break or control character")
        headers.append((name, value.strip(" \t")))
    return headers


def _check_request_size(content: bytes | None, settings: Settings) -> None:
    size = len(content) if content is not None else 0
    limit = settings.http_max_request_bytes
    if size > limit:
        raise StepFailed(
            f"HTTP request body is {size} bytes, over the limit of {limit} (--http-max-request-bytes)"
        )


# -- multipart -----------------------------------------------------------------------


def encode_multipart(parts: Any) -> tuple[bytes, str]:
    """The multipart/form-data body of ``parts`` and its Content-Type (with the boundary).

    :raises StepFailed: a malformed part (bad base64, filename, content_type...).
    """
    if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        raise StepFailed("parts must be a JSON array of part objects")
    if not parts:
        raise StepFailed("parts must contain at least one part")
    fields: list[tuple[bytes, bytes]] = []
    for number, part in enumerate(parts, start=1):
        name = part.get("name")
        if not isinstance(name, str) or not name:
            raise StepFailed(f"Invalid part #{number}: name must be a non-empty string")
        if _BAD_DISPOSITION.search(name):
            raise StepFailed(
                f"Invalid name for part #{number}: must not contain quotes, line breaks or control characters"
            )
        data = _decode_part_data(name, part.get("data_b64"))
        disposition = f'form-data; name="{name}"'
        filename = part.get("filename")
        if filename is not None:
            if not isinstance(filename, str):
                raise StepFailed(f"Invalid filename for part '{name}': must be a string")
            if _BAD_DISPOSITION.search(filename):
                raise StepFailed(
                    f"Invalid filename for part '{name}': must not contain quotes, line breaks or "
                    "control characters"
                )
            disposition += f'; filename="{filename}"'
        head = f"Content-Disposition: {disposition}\r\n"
        content_type = part.get("content_type")
        if content_type is not None:
            if not isinstance(content_type, str) or not _MIME.fullmatch(content_type):
                shown = content_type if isinstance(content_type, str) else _json_type(content_type)
                raise StepFailed(
                    f"Invalid content_type for part '{name}': '{shown}' is not a MIME type "
                    "(type/subtype, optionally followed by ; parameter=value)"
                )
            head += f"Content-Type: {content_type.strip()}\r\n"
        fields.append((head.encode(), data))
    boundary = secrets.token_hex(16)
    while any(boundary.encode() in data for _, data in fields):  # pragma: no cover - 2^-128
        boundary = secrets.token_hex(16)
    marker = b"--" + boundary.encode()
    chunks: list[bytes] = []
    for part_head, part_data in fields:
        chunks += [marker, b"\r\n", part_head, b"\r\n", part_data, b"\r\n"]
    chunks += [marker, b"--\r\n"]
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _decode_part_data(name: str, data_b64: Any) -> bytes:
    if not isinstance(data_b64, str):
        raise StepFailed(f"Invalid base64 in part '{name}': data_b64 must be a string")
    compact = data_b64.translate(_B64_WHITESPACE)
    try:
        return base64.b64decode(compact.encode("ascii"), validate=True)
    except UnicodeEncodeError:
        raise StepFailed(f"Invalid base64 in part '{name}': Only base64 data is allowed") from None
    except binascii.Error as exc:
        raise StepFailed(f"Invalid base64 in part '{name}': {exc}") from exc


# -- the response --------------------------------------------------------------------


async def _read_limited(response: httpx.Response, limit: int, shown: str) -> bytes:
    too_big = StepFailed(f"HTTP response from {shown} exceeds {limit} bytes (--http-max-response-bytes)")
    announced = response.headers.get("content-length")
    if announced is not None and announced.strip().isdigit() and int(announced) > limit:
        raise too_big
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _is_textual(mime: str) -> bool:
    if mime.startswith("text/") or mime in _TEXT_TYPES:
        return True
    return mime.endswith(("+json", "+xml", "+yaml"))


def decode_body(body: bytes, content_type: str | None) -> tuple[str, str]:
    """``(body, encoding)`` for the envelope: ``("...", "text")`` or ``("<base64>", "base64")``."""
    mime, _, params = (content_type or "").partition(";")
    charset = "utf-8"
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    if not _is_textual(mime.strip().lower()):
        charset = "utf-8"
    text = _decode(body, charset)
    if text is not None and "\x00" not in text:
        return text, "text"
    return base64.b64encode(body).decode("ascii"), "base64"


def _decode(body: bytes, charset: str) -> str | None:
    try:
        return body.decode(charset)
    except UnicodeDecodeError:
        return None
    except LookupError:  # unknown charset, or a codec that is not a text encoding (rot13)
        return None if charset == "utf-8" else _decode(body, "utf-8")


def response_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-case names; visible-ASCII values only; repeated headers joined with ``", "``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        if not _VISIBLE.fullmatch(raw_value):
            continue
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("ascii").strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _server_error(request: _Request, status: int, body: bytes) -> str:
    snippet = body[:ERROR_BODY_BYTES].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    message = f"HTTP {request.method} {request.shown} returned {status}: {snippet}"
    if len(body) > ERROR_BODY_BYTES:
        message += f"... [truncated, {len(body)} bytes total]"
    return message


# -- helpers -------------------------------------------------------------------------


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context(trust_env=False)


def _shown(url: Any) -> str:
    """The URL for messages and logs, any password replaced by ``***``."""
    if not isinstance(url, str):
        return str(url)
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _audit(ctx: StepContext, url: str, method: str, outcome: dict[str, Any]) -> None:
    status = outcome.get("status")
    error = outcome.get("error")
    base = dict(ctx.logger.extra or {})
    ctx.logger.logger.info(
        "HTTP %s %s by %s: %s",
        method,
        url,
        ctx.submitted_by,
        status if error is None else f"{error}",
        extra={
            **base,
            "action": "http_request",
            "url": url,
            "method": method,
            "submitter": ctx.submitted_by,
            "status": status,
            "error": error,
        },
    )


async def _unless_cancelled(work: Awaitable[T], cancelled: asyncio.Event) -> T:
    """Await ``work``; abort it and raise CancelledError as soon as ``cancelled`` is set."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise asyncio.CancelledError
    return task.result()
