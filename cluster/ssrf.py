"""The SSRF guard of HTTP steps: vet the address at connect time, then connect to *that* address.

Why at connect time, and how
----------------------------
A check made before the request ("resolve the name, look at the address,
then let the HTTP client connect") is defeated by DNS rebinding: the name
resolves to a public address for the check and to ``127.0.0.1`` a moment later
for the connection. So the check and the connection must use the *same*
resolution. This module does it inside the HTTP client's connection step:

* :class:`GuardedBackend` is an ``httpcore`` network backend. httpcore calls
  its ``connect_tcp(host, port)`` whenever the pool opens a connection (for
  the request itself only: redirects are never followed). The backend asks
  :meth:`Guard.vet` for the addresses of ``host`` — **one** resolution,
  through a pluggable :data:`Resolver` — drops every address in a restricted
  range, and then opens the TCP connection to the vetted IP *literal* with
  the inner backend (``httpcore.AnyIOBackend``), trying the vetted addresses
  in order. The name is never resolved again, so there is no window for a
  second answer.
* TLS and the ``Host`` header still use the name: httpcore calls
  ``start_tls(server_hostname=<URL host>)`` on the stream the backend
  returned, and httpx writes ``Host`` from the URL. Certificates are verified
  against the name, exactly as without the guard.
* :class:`GuardedTransport` is an ``httpx.AsyncHTTPTransport`` whose
  connection pool uses the guarded backend (``trust_env`` off: no proxy from
  the environment could carry the request past the guard).

Host names that are IP literals are checked the same way, without DNS. The
literal forms the C library's ``inet_aton`` (and the WHATWG URL standard)
accept are recognised too — ``2130706433``, ``0x7f.1``, ``017700000001``,
``127.1`` — so they cannot pass as "names" and then resolve to loopback. The
RFC 6761 names ``localhost`` and ``*.localhost`` are refused before any
lookup, whatever ``/etc/hosts`` says.

Restricted ranges
-----------------
:func:`restriction` names the rule an address breaks, or returns ``None``:
unspecified (``0.0.0.0/8``, ``::``), loopback (``127/8``, ``::1``), private
(``10/8``, ``172.16/12``, ``192.168/16``), CGNAT (``100.64/10``), link-local
(``169.254/16``, ``fe80::/10``) with the cloud metadata endpoints
(``169.254.169.254``, ``fd00:ec2::254``) named as such, unique local
(``fc00::/7``), site-local (``fec0::/10``), multicast, broadcast, reserved
(``240/4``), IETF protocol assignments (``192.0.0.0/24``), benchmarking
(``198.18/15``), documentation, discard-only (``100::/64``), and, as a last
net, anything :mod:`ipaddress` does not consider global. IPv6 forms that
embed an IPv4 address — IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible
(``::a.b.c.d``, deprecated, always refused), IPv4-translated
(``::ffff:0:a.b.c.d``), 6to4 (``2002::/16``), NAT64 (``64:ff9b::/96``;
the local-use ``64:ff9b:1::/48`` is refused) and Teredo — are judged by the
IPv4 address they carry.

With ``allow_private`` (``--http-allow-private``) the guard allows every
address; it still resolves once and connects to the address it resolved.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``await resolver(host, port)`` -> the addresses of ``host`` (may raise OSError).
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

ALLOW_HINT = "Use --http-allow-private for trusted networks."


class Blocked(Exception):
    """A request refused by the SSRF guard; the message is the step's failure text."""


class ResolutionError(Exception):
    """The host name could not be resolved."""


# -- the classifier ------------------------------------------------------------------

_N4 = ipaddress.IPv4Network
_N6 = ipaddress.IPv6Network

_V4_RULES: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_N4("0.0.0.0/8"), "unspecified"),
    (_N4("10.0.0.0/8"), "private"),
    (_N4("100.64.0.0/10"), "CGNAT"),
    (_N4("127.0.0.0/8"), "loopback"),
    (_N4("169.254.169.254/32"), "cloud metadata"),
    (_N4("169.254.0.0/16"), "link-local"),
    (_N4("172.16.0.0/12"), "private"),
    (_N4("192.0.0.0/24"), "IETF protocol assignments"),
    (_N4("192.0.2.0/24"), "documentation"),
    (_N4("192.88.99.0/24"), "6to4 relay anycast"),
    (_N4("192.168.0.0/16"), "private"),
    (_N4("198.18.0.0/15"), "benchmarking"),
    (_N4("198.51.100.0/24"), "documentation"),
    (_N4("203.0.113.0/24"), "documentation"),
    (_N4("224.0.0.0/4"), "multicast"),
    (_N4("255.255.255.255/32"), "broadcast"),
    (_N4("240.0.0.0/4"), "reserved"),
)

_V6_RULES: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_N6("::/128"), "unspecified"),
    (_N6("::1/128"), "loopback"),
    (_N6("64:ff9b:1::/48"), "NAT64 local-use"),
    (_N6("100::/64"), "discard-only"),
    (_N6("2001:db8::/32"), "documentation"),
    (_N6("fd00:ec2::254/128"), "cloud metadata"),
    (_N6("fc00::/7"), "unique local"),
    (_N6("fe80::/10"), "link-local"),
    (_N6("fec0::/10"), "site-local"),
    (_N6("ff00::/8"), "multicast"),
)

_MAPPED = _N6("::ffff:0:0/96")
_COMPATIBLE = _N6("::/96")
_TRANSLATED = _N6("::ffff:0:0:0/96")
_NAT64 = _N6("64:ff9b::/96")


def restriction(address: IPAddress) -> str | None:
    """The restricted range ``address`` is in (``"loopback"``, ``"private"``...), or None."""
    if isinstance(address, ipaddress.IPv4Address):
        return _restriction_v4(address)
    return _restriction_v6(ipaddress.IPv6Address(address.packed))  # drops any %scope


def _restriction_v4(address: ipaddress.IPv4Address) -> str | None:
    for network, rule in _V4_RULES:
        if address in network:
            return rule
    return None if address.is_global else "non-global"


def _restriction_v6(address: ipaddress.IPv6Address) -> str | None:
    for network6, rule6 in _V6_RULES:
        if address in network6:
            return rule6
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        form, inner = embedded
        rule = _restriction_v4(inner)
        if rule is not None:
            return f"{form} {rule}"
        if form == "IPv4-compatible":
            return "IPv4-compatible (deprecated)"
        if form != "Teredo":
            return None
    return None if address.is_global else "non-global"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    low32 = ipaddress.IPv4Address(address.packed[-4:])
    if address in _MAPPED:
        return "IPv4-mapped", low32
    if address in _COMPATIBLE:
        return "IPv4-compatible", low32
    if address in _TRANSLATED:
        return "IPv4-translated", low32
    if address in _NAT64:
        return "NAT64", low32
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address.teredo is not None:
        return "Teredo", address.teredo[1]
    return None


# -- host names ----------------------------------------------------------------------

_NUMBER = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """``inet_aton`` / WHATWG IPv4 parsing: 1-4 dotted parts, decimal, octal (0..) or hex (0x..)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER.fullmatch(part) for part in parts):
        return None
    values = []
    for part in parts:
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part[0] == "0":
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(value > 255 for value in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for index, value in enumerate(head):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def parse_ip_host(host: str) -> IPAddress | None:
    """The IP address a URL host denotes, when it is a literal (in any form), else None.

    Accepts ``[v6]`` brackets, a trailing dot, a percent-encoded zone
    (``fe80::1%25eth0``) and the numeric IPv4 forms of ``inet_aton``.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = unquote(text).rstrip(".")
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return _inet_aton(text)


def is_localhost_name(host: str) -> bool:
    """``localhost`` or a name under it (RFC 6761), any case, trailing dots ignored."""
    name = host.strip().rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def normalise_host(host: str) -> str:
    """Lower case, no brackets, no trailing dot: the form allow-list patterns match."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return text.rstrip(".").lower()


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Resolve ``host`` with the operating system's resolver (``getaddrinfo``), in order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    seen: set[IPAddress] = set()
    out = []
    for address in addresses:
        if address not in seen:
            seen.add(address)
            out.append(address)
    return out


# -- the guard -----------------------------------------------------------------------


class Guard:
    """Resolve a host once and keep only the addresses a request may connect to.

    :param allow_private: allow every address (``--http-allow-private``).
    :param resolver: ``await resolver(host, port)`` -> addresses; the system
        resolver by default. Tests pass a fake (e.g. one that rebinds).
    """

    def __init__(self, *, allow_private: bool = False, resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.resolver: Resolver = resolver or system_resolver

    def check_literal(self, host: str) -> IPAddress | None:
        """Vet ``host`` without DNS: its address when it is an IP literal, None for a name.

        :raises Blocked: a restricted literal, or a ``localhost`` name.
        """
        literal = parse_ip_host(host)
        if literal is not None:
            rule = None if self.allow_private else restriction(literal)
            if rule is not None:
                raise Blocked(
                    f"Blocked: the IP address '{host}' is in a restricted range ({rule} {literal}). "
                    f"{ALLOW_HINT}"
                )
            return literal
        if not self.allow_private and is_localhost_name(host):
            raise Blocked(f"Blocked: '{host}' is in a restricted range (loopback host name). {ALLOW_HINT}")
        return None

    async def vet(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of ``host`` that may be connected to, from ONE resolution.

        :raises Blocked: every address is in a restricted range.
        :raises ResolutionError: the name does not resolve.
        """
        literal = self.check_literal(host)
        if literal is not None:
            return [literal]
        try:
            addresses = _unique(await self.resolver(host, port))
        except (OSError, UnicodeError) as exc:
            raise ResolutionError(f"cannot resolve '{host}': {exc}") from exc
        if not addresses:
            raise ResolutionError(f"cannot resolve '{host}': no addresses")
        if self.allow_private:
            return addresses
        allowed = [address for address in addresses if restriction(address) is None]
        if allowed:
            return allowed
        found = "; ".join(f"{restriction(address)} {address}" for address in addresses)
        raise Blocked(
            f"Blocked: the resolved IP address for '{host}' is in a restricted range ({found}). {ALLOW_HINT}"
        )


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the guard vetted.

    :param guard: the :class:`Guard`.
    :param inner: the backend that opens the socket to the vetted IP literal
        (``httpcore.AnyIOBackend`` by default).
    """

    def __init__(self, guard: Guard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.guard = guard
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.guard.vet(host, port)
        except ResolutionError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        options = list(socket_options) if socket_options is not None else None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("Unix sockets are not allowed for HTTP steps")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose every TCP connection goes through :class:`GuardedBackend`.

    HTTP/1.1 only, no retries, no proxy (environment proxies are ignored).
    """

    def __init__(
        self,
        guard: Guard,
        *,
        inner: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if ssl_context is None:
            ssl_context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False, retries=0)
        # The pool httpx builds for a direct connection, with the guarded network backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            http1=True,
            http2=False,
            retries=0,
            network_backend=GuardedBackend(guard, inner),
        )
