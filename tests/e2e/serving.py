"""Start the real `internvl-search serve` process (uvicorn) on a free loopback port for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent / "internvl-search"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(data_dir: Path, *, ready_path: str = "/readyz", timeout_s: float = 90, **settings: str) -> Iterator[str]:
    """Run the service (settings as INTERNVL_SEARCH_<NAME>) until the block ends; yields its base URL once
    `ready_path` answers 200. The developer's own INTERNVL_SEARCH_* variables never leak in.

    The server's output is read as it comes (and dropped): a server logging every request into a pipe nobody reads
    blocks its event loop once the pipe's 64 KiB are full, which is a hang of the test, not of the service."""
    with serve_process(data_dir, ready_path=ready_path, timeout_s=timeout_s, **settings) as (process, base):
        threading.Thread(target=_drain, args=(process,), name="serve-output", daemon=True).start()
        yield base


def _drain(process: subprocess.Popen) -> None:
    for _ in process.stdout or ():
        pass


@contextmanager
def serve_process(
    data_dir: Path, *, ready_path: str = "/readyz", timeout_s: float = 90, **settings: str
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`serve`, yielding the server process too (for tests that signal it); stopped at the end if still running."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERNVL_SEARCH_")}
    env |= {"INTERNVL_SEARCH_DATA_DIR": str(data_dir), "INTERNVL_SEARCH_PORT": str(port)}
    env |= {f"INTERNVL_SEARCH_{name.upper()}": value for name, value in settings.items()}
    proc = subprocess.Popen([str(BIN), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited early:\n{proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(f"{base}{ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"server did not answer {ready_path} within {timeout_s:.0f} s")
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)
