"""API keys never reach the logs of a real `internvl-search serve` (uvicorn, the service's own log format, debug level
on every logger): keys configured in the clear and as digests, presented in both header forms, accepted, refused
(401, 403), and on requests that fail later (404, 422). The log is read back to make sure it did record those
requests, so the test cannot pass merely because nothing was logged."""

from __future__ import annotations

import hashlib
import re
import signal
import threading
from pathlib import Path

import httpx
import serving
from factories import make_tiny_internvl_checkpoint

READ_PLAIN = "plain-read-key-5cc0a1f4e2b94d1e"
WRITE_HASHED = "hashed-write-key-9d2f7be01c3a4e56"
ADMIN_IN_FILE = "admin-file-key-0b7e4c2d9a1f3e88"
UNKNOWN = "unknown-key-3f6a2c8e1d0b4a79"


def _digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_keys_are_never_logged(tmp_path: Path) -> None:
    checkpoint = make_tiny_internvl_checkpoint(tmp_path / "tiny")
    key_file = tmp_path / "keys"
    key_file.write_text(f"admin:{_digest(ADMIN_IN_FILE)}\n")
    settings = {
        "encoder_checkpoint": str(checkpoint), "device": "cpu", "log_level": "debug",
        "api_keys": f"read:{READ_PLAIN},write:{_digest(WRITE_HASHED)}", "api_keys_file": str(key_file),
    }  # fmt: skip
    lines: list[str] = []
    with serving.serve_process(tmp_path / "data", ready_path="/healthz", **settings) as (process, base):
        # Drain the log while the server runs, so a chatty debug log can never fill the pipe and stall it.
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        read, write = {"Authorization": f"Bearer {READ_PLAIN}"}, {"X-API-Key": WRITE_HASHED}
        admin = {"Authorization": f"bearer {ADMIN_IN_FILE}"}
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.get("/v1/collections", headers=read).status_code == 200
            assert client.post("/v1/collections", json={"name": "k"}, headers=read).status_code == 403
            assert client.post("/v1/collections", json={"name": "k"}, headers=write).status_code == 201
            assert client.get("/v1/collections/nope", headers=write).status_code == 404
            assert client.post("/v1/search", json={"collection": "k", "k": 0}, headers=read).status_code == 422
            assert client.get("/v1/collections", headers={"X-API-Key": UNKNOWN}).status_code == 401
            assert client.get("/v1/collections", headers={"Authorization": f"Bearer {UNKNOWN}"}).status_code == 401
            assert client.delete("/v1/collections/k", headers=admin).status_code == 204
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=30)
    log = "".join(lines)
    assert "GET /v1/collections" in log and "DELETE /v1/collections/k" in log, log[-3000:]  # the requests were logged
    # Each access line names its request id (what the response's X-Request-ID says), so one request's lines join up.
    access = [line for line in lines if "logger=uvicorn.access" in line]
    assert access and all(re.search(r"request_id=[0-9a-f]{32}", line) for line in access), access[:3]
    for key in (READ_PLAIN, WRITE_HASHED, ADMIN_IN_FILE, UNKNOWN):
        assert key not in log, f"a key reached the log: {key}"
        assert key[:12] not in log  # not even a prefix
