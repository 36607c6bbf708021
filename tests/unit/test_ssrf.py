"""The SSRF guard: the address classifier, host literals, and the connect-time guard."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import httpcore
import httpx
import pytest

from durable_cluster.ssrf import (
    Blocked,
    Guard,
    GuardedBackend,
    GuardedTransport,
    IPAddress,
    ResolutionError,
    is_localhost_name,
    normalise_host,
    parse_ip_host,
    restriction,
)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


# -- the classifier ------------------------------------------------------------------

BLOCKED = [
    # IPv4
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.255", "CGNAT"),
    ("169.254.0.1", "link-local"),
    ("169.254.169.254", "cloud metadata"),
    ("192.0.0.1", "IETF protocol assignments"),
    ("192.0.0.170", "IETF protocol assignments"),
    ("192.0.2.5", "documentation"),
    ("198.51.100.5", "documentation"),
    ("203.0.113.5", "documentation"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("febf::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fd00:ec2::254", "cloud metadata"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("100::1", "discard-only"),
    ("2001:db8::1", "documentation"),
    ("64:ff9b:1::1", "NAT64 local-use"),
    # IPv4 inside IPv6
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:7f00:1", "IPv4-mapped loopback"),
    ("::ffff:10.1.2.3", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata"),
    ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
    ("::ffff:100.64.0.1", "IPv4-mapped CGNAT"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::192.168.0.1", "IPv4-compatible private"),
    ("::8.8.8.8", "IPv4-compatible (deprecated)"),
    ("::ffff:0:127.0.0.1", "IPv4-translated loopback"),
    ("2002:7f00:1::", "6to4 loopback"),
    ("2002:a9fe:a9fe::1", "6to4 cloud metadata"),
    ("2002:c0a8:101::", "6to4 private"),
    ("64:ff9b::127.0.0.1", "NAT64 loopback"),
    ("64:ff9b::a00:1", "NAT64 private"),
    ("2001:0:4136:e378:8000:63bf:3f57:fefe", "Teredo private"),  # client 192.168.1.1
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",
    "172.32.0.0",
    "169.253.255.255",
    "11.0.0.1",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "2002:808:808::1",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize(("address", "rule"), BLOCKED)
def test_restricted(address: str, rule: str) -> None:
    assert restriction(ip(address)) == rule


@pytest.mark.parametrize("address", ALLOWED)
def test_public(address: str) -> None:
    assert restriction(ip(address)) is None


def test_teredo_with_public_client_is_still_not_global() -> None:
    # 2001::/32 is not globally routable; Teredo with a public client is refused by the last net.
    assert restriction(ip("2001:0:4136:e378:8000:63bf:f7f7:f7f7")) == "non-global"


# -- host literals -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # decimal
        ("0x7f000001", "127.0.0.1"),  # hex
        ("0x7f.1", "127.0.0.1"),
        ("0x7F.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),  # octal
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("10.1", "10.0.0.1"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("127.0.0.1.", "127.0.0.1"),  # trailing dot
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("fe80::1%25eth0", "fe80::1%eth0"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_parse_ip_host(host: str, expected: str) -> None:
    assert parse_ip_host(host) == ip(expected)


@pytest.mark.parametrize(
    "host", ["example.com", "localhost", "256.1", "1.2.3.4.5", "1..2", "0x1g", "1e1", "08", "", "a.1"]
)
def test_names_are_not_literals(host: str) -> None:
    assert parse_ip_host(host) is None


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "a.localhost", "x.y.LocalHost.."])
def test_localhost_names(host: str) -> None:
    assert is_localhost_name(host)


@pytest.mark.parametrize("host", ["localhost.example.com", "notlocalhost", "example.com"])
def test_not_localhost_names(host: str) -> None:
    assert not is_localhost_name(host)


def test_normalise_host() -> None:
    assert normalise_host("[::1]") == "::1"
    assert normalise_host("Example.COM.") == "example.com"


# -- the guard -----------------------------------------------------------------------


class FakeResolver:
    """Answers from a script: one list of addresses per call, the last one repeated."""

    def __init__(self, *answers: Sequence[str], error: OSError | None = None) -> None:
        self.answers = [[ip(a) for a in answer] for answer in answers]
        self.error = error
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls.append((host, port))
        if self.error is not None:
            raise self.error
        index = min(len(self.calls) - 1, len(self.answers) - 1)
        return self.answers[index]


def test_vet_keeps_public_addresses_in_order() -> None:
    resolver = FakeResolver(["127.0.0.1", "93.184.215.14", "10.0.0.1", "2606:4700::1", "93.184.215.14"])
    guard = Guard(resolver=resolver)
    assert run(guard.vet("example.test", 443)) == [ip("93.184.215.14"), ip("2606:4700::1")]
    assert resolver.calls == [("example.test", 443)]


def test_vet_blocks_when_every_address_is_restricted() -> None:
    guard = Guard(resolver=FakeResolver(["127.0.0.1"]))
    with pytest.raises(Blocked) as raised:
        run(guard.vet("evil.test", 80))
    assert str(raised.value) == (
        "Blocked: the resolved IP address for 'evil.test' is in a restricted range (loopback 127.0.0.1). "
        "Use --http-allow-private for trusted networks."
    )


def test_vet_names_every_restricted_address() -> None:
    guard = Guard(resolver=FakeResolver(["10.0.0.1", "::ffff:169.254.169.254"]))
    with pytest.raises(Blocked) as raised:
        run(guard.vet("evil.test", 80))
    mapped = ip("::ffff:169.254.169.254")
    assert f"(private 10.0.0.1; IPv4-mapped cloud metadata {mapped}). Use" in str(raised.value)


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("127.0.0.1", "loopback 127.0.0.1"),
        ("2130706433", "loopback 127.0.0.1"),
        ("0x7f.1", "loopback 127.0.0.1"),
        ("0xa9fea9fe", "cloud metadata 169.254.169.254"),
        ("::1", "loopback ::1"),
        ("::ffff:127.0.0.1", f"IPv4-mapped loopback {ip('::ffff:127.0.0.1')}"),
        ("fd00:ec2::254", "cloud metadata fd00:ec2::254"),
    ],
)
def test_literals_are_checked_without_dns(host: str, shown: str) -> None:
    resolver = FakeResolver(["93.184.215.14"])
    with pytest.raises(Blocked) as raised:
        run(Guard(resolver=resolver).vet(host, 80))
    assert str(raised.value) == (
        f"Blocked: the IP address '{host}' is in a restricted range ({shown}). "
        "Use --http-allow-private for trusted networks."
    )
    assert resolver.calls == []


def test_public_literal_is_used_as_is() -> None:
    resolver = FakeResolver(["127.0.0.1"])
    assert run(Guard(resolver=resolver).vet("8.8.8.8", 80)) == [ip("8.8.8.8")]
    assert resolver.calls == []


@pytest.mark.parametrize("host", ["localhost", "LocalHost.", "api.localhost"])
def test_localhost_is_blocked_by_name(host: str) -> None:
    resolver = FakeResolver(["93.184.215.14"])
    with pytest.raises(Blocked) as raised:
        run(Guard(resolver=resolver).vet(host, 80))
    assert str(raised.value) == (
        f"Blocked: '{host}' is in a restricted range (loopback host name). "
        "Use --http-allow-private for trusted networks."
    )
    assert resolver.calls == []


def test_allow_private_allows_everything() -> None:
    guard = Guard(allow_private=True, resolver=FakeResolver(["127.0.0.1", "10.0.0.1"]))
    assert run(guard.vet("internal.test", 80)) == [ip("127.0.0.1"), ip("10.0.0.1")]
    assert run(guard.vet("localhost", 80)) == [ip("127.0.0.1"), ip("10.0.0.1")]
    assert run(guard.vet("169.254.169.254", 80)) == [ip("169.254.169.254")]


def test_resolution_failures() -> None:
    with pytest.raises(ResolutionError, match=r"cannot resolve 'nx\.test': boom"):
        run(Guard(resolver=FakeResolver(error=OSError("boom"))).vet("nx.test", 80))
    with pytest.raises(ResolutionError, match="no addresses"):
        run(Guard(resolver=FakeResolver([])).vet("empty.test", 80))


def test_system_resolver_handles_literals_and_localhost() -> None:
    guard = Guard()
    with pytest.raises(Blocked):
        run(guard.vet("127.0.0.1", 80))
    assert run(Guard(allow_private=True).vet("127.0.0.1", 80)) == [ip("127.0.0.1")]


# -- connect time: the backend connects to the vetted address ------------------------


class Stop(Exception):
    pass


class RecordingStream(httpcore.AsyncNetworkStream):
    def __init__(self, backend: RecordingBackend) -> None:
        self.backend = backend

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        raise Stop("read")

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.backend.written.append(buffer)
        raise Stop("write")

    async def aclose(self) -> None:
        pass

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        self.backend.tls.append(server_hostname)
        return self


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records the hosts it is asked to connect to; refuses the ones in ``refuse``."""

    def __init__(self, refuse: Iterable[str] = ()) -> None:
        self.connects: list[tuple[str, int]] = []
        self.tls: list[str | None] = []
        self.written: list[bytes] = []
        self.refuse = set(refuse)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host in self.refuse:
            raise httpcore.ConnectError(f"refused {host}")
        return RecordingStream(self)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_rebinding_connects_to_the_vetted_address_or_fails() -> None:
    """First resolution public, second loopback: the first connection goes to the public
    address (never re-resolved), the second one is refused."""
    resolver = FakeResolver(["93.184.215.14"], ["127.0.0.1"])
    inner = RecordingBackend()
    backend = GuardedBackend(Guard(resolver=resolver), inner)

    async def scenario() -> None:
        stream = await backend.connect_tcp("rebind.test", 8080)
        assert isinstance(stream, RecordingStream)
        with pytest.raises(
            Blocked, match=r"'rebind\.test' is in a restricted range \(loopback 127\.0\.0\.1\)"
        ):
            await backend.connect_tcp("rebind.test", 8080)

    run(scenario())
    assert inner.connects == [("93.184.215.14", 8080)]
    assert resolver.calls == [("rebind.test", 8080), ("rebind.test", 8080)]


def test_backend_tries_each_vetted_address() -> None:
    inner = RecordingBackend(refuse={"93.184.215.14"})
    resolver = FakeResolver(["93.184.215.14", "127.0.0.1", "2606:4700::1"])
    backend = GuardedBackend(Guard(resolver=resolver), inner)
    run(backend.connect_tcp("multi.test", 80))
    assert inner.connects == [("93.184.215.14", 80), ("2606:4700::1", 80)]


def test_backend_reports_the_last_connect_error() -> None:
    inner = RecordingBackend(refuse={"93.184.215.14"})
    backend = GuardedBackend(Guard(resolver=FakeResolver(["93.184.215.14"])), inner)
    with pytest.raises(httpcore.ConnectError, match=r"refused 93\.184\.215\.14"):
        run(backend.connect_tcp("down.test", 80))


def test_backend_turns_resolution_errors_into_connect_errors() -> None:
    backend = GuardedBackend(Guard(resolver=FakeResolver(error=OSError("nope"))), RecordingBackend())
    with pytest.raises(httpcore.ConnectError, match=r"cannot resolve 'nx\.test': nope"):
        run(backend.connect_tcp("nx.test", 80))


def test_backend_refuses_unix_sockets() -> None:
    backend = GuardedBackend(Guard(), RecordingBackend())
    with pytest.raises(httpcore.ConnectError):
        run(backend.connect_unix_socket("/tmp/x.sock"))


def _request(transport: GuardedTransport, url: str) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            await client.get(url)

    run(go())


def test_transport_keeps_the_name_for_tls_and_host_header() -> None:
    """TCP goes to the vetted IP; TLS SNI and the Host header carry the name."""
    inner = RecordingBackend()
    transport = GuardedTransport(Guard(resolver=FakeResolver(["93.184.215.14"])), inner=inner)
    with pytest.raises(Stop):
        _request(transport, "https://api.example.test/x")
    assert inner.connects == [("93.184.215.14", 443)]
    assert inner.tls == ["api.example.test"]
    assert b"\r\nHost: api.example.test\r\n" in inner.written[0]


def test_transport_blocks_restricted_resolutions() -> None:
    inner = RecordingBackend()
    transport = GuardedTransport(Guard(resolver=FakeResolver(["169.254.169.254"])), inner=inner)
    with pytest.raises(Blocked, match=r"\(cloud metadata 169\.254\.169\.254\)"):
        _request(transport, "http://metadata.test/latest/")
    assert inner.connects == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://127.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost./",
        "http://LOCALHOST/",
        "http://0/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
    ],
)
def test_transport_blocks_literal_urls(url: str) -> None:
    inner = RecordingBackend()
    resolver = FakeResolver(["93.184.215.14"])
    transport = GuardedTransport(Guard(resolver=resolver), inner=inner)
    with pytest.raises(Blocked):
        _request(transport, url)
    assert inner.connects == []
    assert resolver.calls == []
