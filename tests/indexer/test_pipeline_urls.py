"""URL sources against a real local HTTP server: downloads, HTTP errors, redirects, caps, and SSRF refusals."""

from __future__ import annotations

import ipaddress
import time
from http.server import BaseHTTPRequestHandler

import pytest
from hostile import http_server, image_bytes, redirect_to, send_bytes

from indexer.pipeline.paths import SourceError
from indexer.pipeline.urls import Downloader, address_refusal

PNG = image_bytes(seed=7)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("240.0.0.1", "private"),  # 240/4 is reserved; Python files it under private
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:7f00:1::", "loopback"),
        ("64:ff9b::a00:1", "private"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_classification(address: str, reason: str | None) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert (refusal is None) if reason is None else (reason in refusal), refusal


def _slow(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b"x")
    handler.wfile.flush()
    time.sleep(1.5)


def _big(handler: BaseHTTPRequestHandler) -> None:
    # No Content-Length: the cap must hold on the streamed bytes themselves.
    handler.send_response(200)
    handler.end_headers()
    for _ in range(100):
        handler.wfile.write(b"\0" * 1024)


def test_downloads_follow_redirects_and_report_failures() -> None:
    routes = {"/a.png": send_bytes(PNG), "/big": _big, "/slow": _slow, "/to-ftp": redirect_to("ftp://example.com/x")}
    with http_server(routes) as base:
        routes["/r1"] = redirect_to(f"{base}/a.png")
        routes["/loop"] = redirect_to(f"{base}/loop")
        downloader = Downloader(allow_private=True, read_timeout_s=0.5, max_bytes=50_000, max_redirects=3)
        try:
            assert downloader.download(f"{base}/a.png") == PNG
            assert downloader.download(f"{base}/r1") == PNG
            cases = {
                "/missing.png": "HTTP 404",
                "/loop": "more than 3 redirects",
                "/to-ftp": "scheme 'ftp' is not allowed",
                "/big": "exceeds the limit of 50,000 bytes",
                "/slow": "timed out",
            }
            for path, reason in cases.items():
                with pytest.raises(SourceError, match=reason):
                    downloader.download(base + path)
        finally:
            downloader.close()


def test_private_addresses_are_refused_before_connecting() -> None:
    hits = []

    def record(handler: BaseHTTPRequestHandler) -> None:
        hits.append(handler.path)
        send_bytes(PNG)(handler)

    with http_server({"/a.png": record}) as base:
        port = base.rsplit(":", 1)[1]
        downloader = Downloader(allow_private=False)
        try:
            for url in (
                f"{base}/a.png",
                f"http://localhost:{port}/a.png",
                f"http://[::ffff:127.0.0.1]:{port}/a.png",
                "http://169.254.169.254/latest/meta-data/",
                "http://10.0.0.1/x.png",
            ):
                with pytest.raises(SourceError, match="refused: host .* resolves to"):
                    downloader.download(url)
            for url, reason in (("file:///etc/passwd", "scheme 'file'"), ("http://", "no host")):
                with pytest.raises(SourceError, match=reason):
                    downloader.download(url)
        finally:
            downloader.close()
    assert hits == []  # nothing ever reached the server


def _trickle(handler: BaseHTTPRequestHandler) -> None:
    # A byte every 0.1 s: each read is well inside the read timeout, the whole never ends in time.
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    try:
        for _ in range(100):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.1)
    except OSError:
        pass  # the client gave up, as it should


def _declares_too_much(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**12))
    handler.end_headers()
    try:
        handler.wfile.write(b"\0" * 1024)
    except OSError:
        pass


def test_the_whole_download_is_bounded_and_a_declared_size_is_refused_up_front() -> None:
    with http_server({"/trickle": _trickle, "/declares": _declares_too_much}) as base:
        downloader = Downloader(allow_private=True, read_timeout_s=2.0, total_timeout_s=0.6, max_bytes=50_000)
        try:
            started = time.monotonic()
            with pytest.raises(SourceError, match="download took longer than 0.6 s"):
                downloader.download(f"{base}/trickle")
            assert time.monotonic() - started < 5  # stopped by the total limit, not at the end of the body (10 s)
            with pytest.raises(SourceError, match="download is 1,000,000,000,000 bytes, more than the limit"):
                downloader.download(f"{base}/declares")
        finally:
            downloader.close()


def _slow_redirect(handler: BaseHTTPRequestHandler) -> None:
    time.sleep(0.3)
    redirect_to(handler.path)(handler)  # to itself, after a pause


def _slow_headers(handler: BaseHTTPRequestHandler) -> None:
    time.sleep(3)
    try:
        send_bytes(PNG)(handler)
    except OSError:
        pass  # the client gave up long ago, as it should


def test_redirect_chains_and_slow_headers_stay_within_the_total_time() -> None:
    """Each hop and each wait for headers gets only what is left of the total, not a fresh read timeout."""
    with http_server({"/again": _slow_redirect, "/late": _slow_headers}) as base:
        downloader = Downloader(allow_private=True, read_timeout_s=5.0, total_timeout_s=0.8, max_redirects=5)
        try:
            for path, reason in (("/again", "took longer than 0.8 s|timed out"), ("/late", "timed out")):
                started = time.monotonic()
                with pytest.raises(SourceError, match=reason):
                    downloader.download(base + path)
                assert time.monotonic() - started < 1.5, path  # not 6 x 0.3 s of redirects, nor 3 s of waiting
        finally:
            downloader.close()
