"""SSRF suite: every non-public address class, reached as a literal, through a DNS name, through a redirect, or
hidden among public records, is refused before any connection; an allow-list admits exactly what it names; a
public-looking address on a test host of our own (a private network namespace) is fetched.

DNS answers come from a resolver function handed to the Downloader (the same hook production uses, with the
system's getaddrinfo behind it); every HTTP exchange is with a real server on this machine.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hostile import http_server, image_bytes, redirect_to, send_bytes

from indexer.pipeline import urls
from indexer.pipeline.decode import decode_image
from indexer.pipeline.paths import SourceError
from indexer.pipeline.urls import Downloader

PNG = image_bytes("teal", seed=21)
NETNS_SCRIPT = Path(__file__).parent / "hostile" / "netns_fetch.py"

# One address per class the policy refuses, with the words its refusal must contain.
BLOCKED = {
    "127.0.0.1": "loopback",
    "127.45.6.7": "loopback",
    "10.20.30.40": "private",
    "172.16.0.9": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "metadata",
    "169.254.10.10": "link-local",
    "100.64.0.5": "non-public",  # carrier-grade NAT
    "0.0.0.0": "unspecified",
    "224.0.0.251": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "private",  # reserved 240/4 (Python files it under private)
    "255.255.255.255": "private",  # broadcast
    "198.18.0.1": "private",  # benchmarking
    "192.0.2.1": "private",  # documentation
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "metadata",
    "2002:a9fe:a9fe::": "metadata",  # 6to4 embedding 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "loopback",  # Teredo whose client address is 127.0.0.1
    "64:ff9b::a00:1": "private",  # NAT64 of 10.0.0.1
    "fd00:ec2::254": "private",  # the IPv6 metadata address of EC2
}


def resolver_for(table: dict[str, list[str]]):  # noqa: ANN201 - a Resolver
    calls: list[str] = []

    def resolve(host: str, _port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.fixture(scope="module")
def shared_server():  # noqa: ANN201 - (base URL, hits)
    hits: list[str] = []

    def record(handler: BaseHTTPRequestHandler) -> None:
        hits.append(handler.headers.get("Host", ""))
        send_bytes(PNG)(handler)

    with http_server({"/a.png": record}) as base:
        yield base, hits


@pytest.fixture
def recording_server(shared_server):  # noqa: ANN001, ANN201 - one local server, its hits counted per test
    shared_server[1].clear()
    return shared_server


@pytest.mark.parametrize(("address", "reason"), sorted(BLOCKED.items()))
def test_a_name_resolving_to_a_blocked_class_is_refused(address: str, reason: str, recording_server) -> None:  # noqa: ANN001
    base, hits = recording_server
    port = base.rsplit(":", 1)[1]
    downloader = Downloader(resolver=resolver_for({"images.example.org": [address]}))
    try:
        with pytest.raises(SourceError, match=rf"refused: host 'images.example.org' resolves to .*{reason}"):
            downloader.download(f"http://images.example.org:{port}/a.png")
        literal = f"[{address}]" if ":" in address else address
        with pytest.raises(SourceError, match=rf"refused: .*{reason}"):
            downloader.download(f"http://{literal}:{port}/a.png")
    finally:
        downloader.close()
    assert hits == []  # refused before connecting: the local server never saw a request


def test_other_spellings_of_loopback_are_refused(recording_server) -> None:  # noqa: ANN001
    base, hits = recording_server
    port = base.rsplit(":", 1)[1]
    downloader = Downloader()  # the system resolver parses these forms the way a C library would
    try:
        for host in ("localhost", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0", "[::ffff:7f00:1]"):
            with pytest.raises(SourceError, match="refused|cannot resolve|invalid URL"):
                downloader.download(f"http://{host}:{port}/a.png")
    finally:
        downloader.close()
    assert hits == []


def test_one_blocked_record_among_public_ones_refuses_the_name() -> None:
    resolve = resolver_for({"mixed.example.org": ["93.184.215.14", "10.0.0.7", "2606:4700::6810:85e5"]})
    downloader = Downloader(resolver=resolve)
    try:
        with pytest.raises(SourceError, match=r"resolves to a private address \(10.0.0.7\)"):
            downloader.download("http://mixed.example.org/a.png")
    finally:
        downloader.close()


def test_names_that_do_not_resolve_are_refused_clearly() -> None:
    downloader = Downloader(resolver=resolver_for({"empty.example.org": [], "bad.example.org": ["not-an-ip"]}))
    try:
        for host, reason in (("nowhere.example.org", "cannot resolve"), ("empty.example.org", "has no address"),
                             ("bad.example.org", "cannot resolve")):  # fmt: skip
            with pytest.raises(SourceError, match=reason):
                downloader.download(f"http://{host}/a.png")
    finally:
        downloader.close()


def test_every_redirect_hop_is_checked_again() -> None:
    """The first hop is a test host admitted by the allow-list; every redirect out of it lands on a refusal."""
    hits: list[str] = []
    routes = {"/a.png": lambda h: (hits.append(h.path), send_bytes(PNG)(h))}
    with http_server(routes) as base:
        port = base.rsplit(":", 1)[1]
        targets = {
            "/to-metadata": ("http://169.254.169.254/latest/meta-data/", "metadata"),
            "/to-private": ("http://10.0.0.1/a.png", "private"),
            "/to-other-loopback": (f"http://127.0.0.2:{port}/a.png", "loopback"),
            "/to-ipv6-loopback": (f"http://[::1]:{port}/a.png", "loopback"),
            "/to-mapped": (f"http://[::ffff:127.0.0.3]:{port}/a.png", "loopback"),
            "/to-name": (f"http://internal.example.org:{port}/a.png", "private"),
            "/to-file": ("file:///etc/passwd", "scheme 'file'"),
            "/to-gopher": ("gopher://127.0.0.1:6379/_INFO", "scheme 'gopher'"),
        }
        for path, (location, _) in targets.items():
            routes[path] = redirect_to(location)
        routes["/chain"] = redirect_to(f"{base}/to-metadata")  # allowed, allowed, then refused
        resolve = resolver_for({"internal.example.org": ["192.168.7.7"]})
        downloader = Downloader(allowed_networks=["127.0.0.1/32"], resolver=resolve)
        try:
            for path, (_, reason) in targets.items():
                with pytest.raises(SourceError, match=reason):
                    downloader.download(base + path)
            with pytest.raises(SourceError, match="metadata"):
                downloader.download(f"{base}/chain")
            assert downloader.download(f"{base}/a.png") == PNG  # the allowed host itself still works
        finally:
            downloader.close()
    assert hits == ["/a.png"]


def test_a_redirect_into_any_blocked_class_is_refused() -> None:
    """Every class of BLOCKED, as a literal and as a name resolving to it, reached by a redirect from a first hop the
    allow-list admits (127.0.0.1 only, so the two spellings of that one address are left out here)."""
    hits: list[str] = []
    routes = {"/a.png": lambda h: (hits.append(h.path), send_bytes(PNG)(h))}
    admitted = {"127.0.0.1", "::ffff:127.0.0.1"}
    cases = {address: reason for address, reason in BLOCKED.items() if address not in admitted}
    with http_server(routes) as base:
        port = base.rsplit(":", 1)[1]
        names = {}
        for n, address in enumerate(cases):
            literal = f"[{address}]" if ":" in address else address
            routes[f"/literal-{n}"] = redirect_to(f"http://{literal}:{port}/a.png")
            routes[f"/name-{n}"] = redirect_to(f"https://blocked-{n}.example.org:{port}/a.png")
            names[f"blocked-{n}.example.org"] = [address]
        downloader = Downloader(allowed_networks=["127.0.0.1/32"], resolver=resolver_for(names))
        try:
            for n, reason in enumerate(cases.values()):
                for path in (f"/literal-{n}", f"/name-{n}"):
                    with pytest.raises(SourceError, match=rf"refused: .*{reason}"):
                        downloader.download(base + path)
        finally:
            downloader.close()
    assert hits == []  # no redirect reached anything


def test_the_allow_list_admits_exactly_its_networks() -> None:
    with http_server({"/a.png": send_bytes(PNG)}) as base:
        port = base.rsplit(":", 1)[1]
        names = {"store.internal": ["127.0.0.1"], "other.internal": ["127.0.0.2"], "meta.internal": ["169.254.169.254"]}
        downloader = Downloader(allowed_networks=["127.0.0.1/32"], resolver=resolver_for(names))
        try:
            assert downloader.download(f"http://store.internal:{port}/a.png") == PNG
            assert downloader.download(f"http://[::ffff:127.0.0.1]:{port}/a.png") == PNG  # the same address
            for url in (f"http://other.internal:{port}/a.png", "http://meta.internal/", f"http://[::1]:{port}/a.png"):
                with pytest.raises(SourceError, match="refused"):
                    downloader.download(url)
        finally:
            downloader.close()
    with pytest.raises(ValueError, match="not an IP network"):
        Downloader(allowed_networks=["10.0.0.0/33"])


def test_the_checked_address_is_the_one_connected_to() -> None:
    """DNS rebinding: the name is resolved once per hop and the connection goes to that answer, so a resolver that
    would answer differently a moment later never gets the chance."""
    answers = iter([["127.0.0.1"], ["10.9.9.9"]])
    calls: list[str] = []

    def rebinding(host: str, _port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    with http_server({"/a.png": send_bytes(PNG)}) as base:
        port = base.rsplit(":", 1)[1]
        downloader = Downloader(allowed_networks=["127.0.0.1/32"], resolver=rebinding)
        try:
            assert downloader.download(f"http://rebind.example.org:{port}/a.png") == PNG
        finally:
            downloader.close()
    assert calls == ["rebind.example.org"]


def test_content_type_is_sniffed_not_trusted() -> None:
    html = b"<html><body>not an image</body></html>"
    routes = {"/png-as-html": send_bytes(PNG, "text/html"), "/html-as-png": send_bytes(html, "image/png")}
    with http_server(routes) as base:
        downloader = Downloader(allow_private=True)
        try:
            as_html = downloader.download(f"{base}/png-as-html")
            as_png = downloader.download(f"{base}/html-as-png")
        finally:
            downloader.close()
    assert decode_image(as_html, max_pixels=10**6, max_frames=5).format == "PNG"
    with pytest.raises(Exception, match="not an image"):
        decode_image(as_png, max_pixels=10**6, max_frames=5)


def test_a_public_looking_address_on_our_own_test_host_is_fetched() -> None:
    """Run in a fresh network namespace (no route off this machine), where 11.0.0.7 is a test host of ours."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare(1) and ip(8) to make a private network namespace")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here (needs root or user namespaces): {probe.stderr.strip()}")
    done = subprocess.run(
        ["unshare", "-n", sys.executable, str(NETNS_SCRIPT)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    outcomes, port = report["outcomes"], report["port"]
    assert outcomes["public_name"] == {"ok": True} and outcomes["public_literal"] == {"ok": True}
    assert "loopback" in outcomes["redirect_into_loopback"]["error"]
    assert "loopback" in outcomes["name_to_loopback"]["error"]
    # The name travelled in the Host header while the connection went to the checked address.
    assert report["hosts"][0] == f"images.example.org:{port}"
    assert len(report["hosts"]) == 3  # the two public fetches and the redirect hop; never the loopback target


def test_an_ipv6_address_is_connected_to_as_checked() -> None:
    """The pinned address of an IPv6 answer goes into the URL correctly bracketed, and the fetch works."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")

    class V6Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    try:
        server = V6Server(("::1", 0), _KeepAliveHandler)
    except OSError as exc:
        pytest.skip(f"cannot listen on ::1: {exc}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    downloader = Downloader(allowed_networks=["::1/128"], resolver=resolver_for({"v6.example.org": ["::1"]}))
    try:
        assert downloader.download(f"http://v6.example.org:{port}/a.png") == PNG
        assert downloader.download(f"http://[::1]:{port}/a.png") == PNG
    finally:
        downloader.close()
        server.shutdown()
        server.server_close()
    assert _KeepAliveHandler.hosts[-2:] == [f"v6.example.org:{port}", f"[::1]:{port}"]


class _KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, so a client may reuse the connection (http.server's default closes it)."""

    protocol_version = "HTTP/1.1"
    hosts: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        type(self).hosts.append(self.headers.get("Host", ""))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args: object) -> None:
        pass


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def test_a_tls_connection_verified_for_one_name_is_not_reused_for_another(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Connections go to the checked address, so httpx pools them by address. A server with a certificate for
    a.test only, and b.test resolving to the same address: once a.test's connection is pooled, b.test must still
    get a TLS handshake of its own, which fails its certificate check (it used to reuse a.test's connection)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl(1) to make a test certificate authority")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=internvl-search test CA", cwd=tmp_path)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "a.key", "-out", "a.csr", "-subj", "/CN=a.test",
             cwd=tmp_path)  # fmt: skip
    (tmp_path / "ext").write_text("subjectAltName=DNS:a.test\n")
    _openssl("x509", "-req", "-in", "a.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "a.pem",
             "-days", "2", "-extfile", "ext", cwd=tmp_path)  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveHandler)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "a.pem", tmp_path / "a.key")
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    trusting = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    monkeypatch.setattr(urls, "_ssl_context", lambda: trusting)
    names = {"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]}
    downloader = Downloader(allowed_networks=["127.0.0.1/32"], resolver=resolver_for(names))
    try:
        assert downloader.download(f"https://a.test:{port}/a.png") == PNG
        assert downloader.download(f"https://a.test:{port}/a.png") == PNG  # the pooled connection, still fine
        with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
            downloader.download(f"https://b.test:{port}/a.png")
    finally:
        downloader.close()
        server.shutdown()
        server.server_close()
