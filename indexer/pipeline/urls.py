"""Downloading an image URL without letting the caller reach the service's own network (SSRF).

Each hop: http/https only; the host is resolved once and every address it resolves to is checked (loopback, private,
link-local including the metadata address 169.254.169.254, multicast, reserved, unspecified, and IPv6 forms
embedding an IPv4 address: IPv4-mapped, 6to4, Teredo, NAT64); the connection goes to that checked address (the name
travels in the Host header and TLS SNI, so certificates are still verified against it), which defeats DNS rebinding
between check and connect. Connections are pooled by address, so HTTPS keeps one pool per server name: a connection
whose certificate was verified for one name is never reused for another name on the same address. An operator's
allow-list of networks (`allowed_networks`) admits named internal ranges without opening all of them. Redirects are
followed by hand so each location is checked again. Timeouts bound the connect, each read and the whole download
(redirects included: every wait is cut to what is left of the total); the size cap holds on the bytes as they
arrive. The bytes' type is never taken from the Content-Type header: decoding recognises the format from the
content.

Name resolution goes through `resolver` (the system's by default); tests and deployments with their own DNS policy
pass another one, and every address it returns is checked the same way."""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from indexer.config import EngineConfig
from indexer.pipeline.paths import SourceError

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA = ipaddress.ip_address("169.254.169.254")
# HTTPS connection pools one Downloader keeps (one per server name); past this, a name's requests get a client of
# their own, closed after the request, so a job over many hosts cannot hold an unbounded number of connections.
MAX_TLS_POOLS = 32

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> every address the name resolves to, as text ("10.0.0.1", "fe80::1%eth0", ...).
Resolver = Callable[[str, int], Sequence[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver (getaddrinfo), TCP addresses only."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def parse_networks(networks: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    """CIDR strings ("10.1.0.0/16", "fd00::/8", a bare address) as networks; ValueError names a bad one."""
    parsed = []
    for network in networks:
        try:
            parsed.append(ipaddress.ip_network(network, strict=False))
        except ValueError:
            raise ValueError(f"{network!r} is not an IP network (e.g. 10.1.0.0/16 or fd00::/8)") from None
    return tuple(parsed)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every Downloader: loading the CA bundle costs ~0.1 s, and a query by image URL
    makes a Downloader per request. Contexts are safe to share between threads."""
    return httpx.create_ssl_context()


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    return True


def _in_networks(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    # An IPv4-mapped IPv6 address is the IPv4 address for this purpose, as it is for the refusal rules.
    candidates = [ip] + ([ip.ipv4_mapped] if ip.version == 6 and ip.ipv4_mapped else [])
    return any(c in net for c in candidates for net in networks if c.version == net.version)


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` is not a public unicast address (None when it is one)."""
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_refusal(embedded)
            return f"{inner} (embedded in {ip})" if inner else None
    if ip == _METADATA:
        return "the cloud metadata address"
    for attribute, name in (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(ip, attribute):
            return name
    return None if ip.is_global else "a non-public address"


class Downloader:
    """Fetches URLs with the checks above; one per job, shared by its decode threads (httpx clients are)."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 20.0,
        total_timeout_s: float = 60.0,
        max_redirects: int = 5,
        max_bytes: int = 50 * 2**20,
        allowed_networks: Iterable[str | IPNetwork] = (),
        resolver: Resolver = system_resolver,
    ) -> None:
        self.allow_private = allow_private
        self.allowed_networks = parse_networks(allowed_networks)
        self.resolver = resolver
        self.total_timeout_s = total_timeout_s
        self.max_redirects = max_redirects
        self.max_bytes = max_bytes
        self._timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=60.0)
        # Requests go to the checked address, so httpx pools connections by address. A TLS connection was verified
        # for the name it was opened with (SNI), so reusing it for another name on the same address would skip that
        # name's certificate check: HTTPS gets one client (one pool) per server name; plain HTTP shares one ("").
        self._clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def _new_client(self) -> httpx.Client:
        # trust_env=False: a proxy from the environment would connect to the *name* and undo the address check.
        return httpx.Client(
            timeout=self._timeout, follow_redirects=False, trust_env=False, headers={"User-Agent": "internvl-search"},
            verify=_ssl_context(),
        )  # fmt: skip

    def _client_for(self, server_name: str) -> tuple[httpx.Client, bool]:
        """The client whose pool serves `server_name`, and whether it is a one-off the caller must close."""
        with self._lock:
            client = self._clients.get(server_name)
            if client is None and (server_name == "" or len(self._clients.keys() - {""}) < MAX_TLS_POOLS):
                client = self._clients[server_name] = self._new_client()
        return (client, False) if client is not None else (self._new_client(), True)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def download(self, url: str) -> bytes:
        """The body of `url`; `SourceError` with the reason for every refusal or failure."""
        deadline = time.monotonic() + self.total_timeout_s
        for _ in range(self.max_redirects + 1):
            target = self._check(url)
            client, one_off = self._client_for(target.extensions.get("sni_hostname", ""))
            try:
                timeout = self._timeout_within(deadline)
                with client.stream("GET", target.url, headers=target.headers, extensions=target.extensions,
                                   timeout=timeout) as r:  # fmt: skip
                    if r.is_redirect and "location" in r.headers:
                        url = urljoin(url, r.headers["location"])
                        continue
                    if r.status_code >= 400:
                        raise SourceError(f"HTTP {r.status_code} {r.reason_phrase}".rstrip())
                    return self._read(r, deadline)
            except httpx.TimeoutException as exc:
                raise SourceError(f"download timed out ({type(exc).__name__})") from None
            except httpx.HTTPError as exc:
                raise SourceError(f"download failed: {type(exc).__name__}: {exc}") from None
            finally:
                if one_off:
                    client.close()
        raise SourceError(f"more than {self.max_redirects} redirects")

    def _timeout_within(self, deadline: float) -> httpx.Timeout:
        """The client's timeouts, each cut to what is left of the whole download's time: a chain of redirects, or a
        server slow to send its headers, cannot stretch a download past `total_timeout_s`."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise SourceError(f"download took longer than {self.total_timeout_s:g} s")
        t = self._timeout
        return httpx.Timeout(connect=min(t.connect, left), read=min(t.read, left), write=min(t.write, left),
                             pool=min(t.pool, left))  # fmt: skip

    def _check(self, url: str) -> _Target:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise SourceError(f"invalid URL: {exc}") from None
        if parsed.scheme not in ("http", "https"):
            raise SourceError(f"URL scheme {parsed.scheme!r} is not allowed (only http and https)")
        if not parsed.host:
            raise SourceError("URL has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        address = self._resolve(parsed.host, port)
        return _Target(
            url=parsed.copy_with(host=address),
            headers={"Host": parsed.netloc.decode("ascii")},
            extensions={"sni_hostname": parsed.host} if parsed.scheme == "https" else {},
        )

    def _resolve(self, host: str, port: int) -> str:
        try:
            # An address literal needs no resolver (and must not be handed to one that might map it elsewhere).
            found = [host.strip("[]")] if _is_literal(host) else self.resolver(host, port)
            addresses = list(dict.fromkeys(ipaddress.ip_address(a.split("%")[0]) for a in found))
        except (OSError, UnicodeError, ValueError) as exc:  # socket.gaierror is an OSError
            raise SourceError(f"cannot resolve host {host!r}: {exc}") from None
        if not addresses:
            raise SourceError(f"host {host!r} has no address")
        if not self.allow_private:
            # Every address must pass, or a name with one public and one private record could be steered.
            for ip in addresses:
                reason = None if _in_networks(ip, self.allowed_networks) else address_refusal(ip)
                if reason:
                    raise SourceError(
                        f"refused: host {host!r} resolves to {reason} ({ip}); private URLs are disabled and no "
                        "allowed network contains it"
                    )
        return str(addresses[0])

    def _read(self, response: httpx.Response, deadline: float) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise SourceError(f"download is {int(declared):,} bytes, more than the limit of {self.max_bytes:,}")
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise SourceError(f"download exceeds the limit of {self.max_bytes:,} bytes")
            if time.monotonic() > deadline:
                raise SourceError(f"download took longer than {self.total_timeout_s:g} s")
            chunks.append(chunk)
        return b"".join(chunks)


def downloader_for(config: EngineConfig, resolver: Resolver | None = None) -> Downloader:
    """A `Downloader` with the engine's URL policy (ingestion, query images and chat `image_url` share it)."""
    return Downloader(
        allow_private=config.allow_private_urls,
        connect_timeout_s=config.url_connect_timeout_s,
        read_timeout_s=config.url_read_timeout_s,
        total_timeout_s=config.url_total_timeout_s,
        max_redirects=config.url_max_redirects,
        max_bytes=config.max_source_bytes,
        allowed_networks=config.url_allowed_networks,
        resolver=resolver or system_resolver,
    )


@dataclass(frozen=True)
class _Target:
    """One checked hop: the URL pinned to the checked address, and the name for Host and SNI."""

    url: httpx.URL
    headers: dict[str, str]
    extensions: dict[str, str]
