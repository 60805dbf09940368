"""`make run`'s command: `internvl-search demo` indexes a corpus, prints searches in six languages, then serves."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
from factories import make_tiny_internvl_checkpoint
from serving import BIN, free_port


def run_demo(data_dir: Path, cwd: Path | None = None, **settings: str) -> tuple[str, int]:
    """Start the demo (in `cwd`), wait until it serves, stop it; returns what it printed and how many images it
    indexed."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERNVL_SEARCH_")}
    env |= {"INTERNVL_SEARCH_DATA_DIR": str(data_dir), "INTERNVL_SEARCH_PORT": str(port)}
    env |= {f"INTERNVL_SEARCH_{k.upper()}": v for k, v in settings.items()}
    proc = subprocess.Popen([str(BIN), "demo", "--scenes", "8"], env=env, stdout=subprocess.PIPE, text=True, cwd=cwd)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    collections = httpx.get(f"http://127.0.0.1:{port}/v1/collections").json()["collections"]
                    indexed = sum(c["images"].get("indexed", 0) for c in collections)
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError(f"demo did not serve (exit {proc.poll()})")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    return out, indexed


def test_demo_indexes_searches_in_six_languages_and_serves(tmp_path: Path) -> None:
    checkpoint = make_tiny_internvl_checkpoint(tmp_path / "ckpt")
    # A relative data dir, as `make run` has it (the default "./data"): the corpus's manifest must still be found.
    out, indexed = run_demo(Path("data"), cwd=tmp_path, encoder_checkpoint=str(checkpoint))
    assert indexed == 8 and "failed 0" in out, out
    for language in ("en", "de", "fr", "es", "zh", "ja"):
        assert f"[{language}]" in out
    assert "1. " in out  # each query printed ranked hits
    again, indexed = run_demo(tmp_path / "data", encoder_checkpoint=str(checkpoint))
    assert "already holds 8 images" in again and indexed == 8


def test_demo_still_serves_when_the_default_weights_are_missing(tmp_path: Path) -> None:
    out, indexed = run_demo(tmp_path / "data", encoder_checkpoint=str(tmp_path / "absent"))
    assert "no demo collection" in out and indexed == 0
