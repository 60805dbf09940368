"""Fetch from a public-looking address that is really a test host inside a private network namespace.

    unshare -n python netns_fetch.py

Run in a fresh network namespace (made by `unshare -n`, so it has nothing but its own loopback device and no route
out of the machine), it gives that loopback device the public-looking address PUBLIC, serves an image there, and
checks what the SSRF-checked Downloader does with names resolving to it: accepted as public; redirects from it into
the namespace's loopback refused. Prints one JSON object with the outcomes; the test asserts on it.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from indexer.pipeline.paths import SourceError
from indexer.pipeline.urls import Downloader

PUBLIC = "11.0.0.7"  # a globally routed address in form; inside this namespace it is our own test host
NAMES = {"images.example.org": [PUBLIC], "inside.example.org": ["127.0.0.1"]}


def main() -> None:
    for command in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{PUBLIC}/32", "dev", "lo"]):
        subprocess.run(command, check=True)
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(out, "PNG")
    png = out.getvalue()
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            hosts.append(self.headers.get("Host", ""))
            if self.path == "/into-loopback":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/a.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")  # a lie: the bytes decide what they are
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    # Bound to every address of the namespace, so the loopback redirect would succeed if it were followed.
    server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    downloader = Downloader(resolver=lambda host, _port: NAMES[host], connect_timeout_s=2, read_timeout_s=2)
    outcomes = {}
    for name, url in {
        "public_name": f"http://images.example.org:{port}/a.png",
        "public_literal": f"http://{PUBLIC}:{port}/a.png",
        "redirect_into_loopback": f"http://images.example.org:{port}/into-loopback",
        "name_to_loopback": f"http://inside.example.org:{port}/a.png",
    }.items():
        try:
            outcomes[name] = {"ok": downloader.download(url) == png}
        except SourceError as exc:
            outcomes[name] = {"error": str(exc)}
    downloader.close()
    server.shutdown()
    print(json.dumps({"outcomes": outcomes, "hosts": hosts, "port": port}))


if __name__ == "__main__":
    main()
