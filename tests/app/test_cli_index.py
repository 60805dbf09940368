"""`index`, `search` and `collections` on the command line: a real subprocess round trip, then the rest of the
surface in process (same `main()`, same exit codes) to keep the suite fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from app.cli import main

BIN = Path(sys.executable).parent / "internvl-search"


@pytest.fixture
def env(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> dict[str, str]:
    from factories import make_tiny_internvl_checkpoint

    values = {
        "INTERNVL_SEARCH_DATA_DIR": str(tmp_path / "data"),
        "INTERNVL_SEARCH_ENCODER": "internvl-c",
        "INTERNVL_SEARCH_ENCODER_CHECKPOINT": str(make_tiny_internvl_checkpoint(tmp_path / "ckpt")),
        "INTERNVL_SEARCH_DEVICE": "cpu",
    }
    for name, value in values.items():
        clean_env.setenv(name, value)
    return values


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, colour in enumerate(["red", "green", "blue", "yellow", "white"]):
        Image.new("RGB", (30 + i, 20), colour).save(folder / ("sub" if i == 4 else ".") / f"{colour}.png")
    (folder / "notes.jpg").write_text("not an image")
    return folder


def run(*args: str) -> tuple[int, str, str]:
    """`internvl-search ARGS` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err, code = io.StringIO(), io.StringIO(), 0
    argv = sys.argv
    sys.argv = ["internvl-search", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def test_index_and_search_round_trip_in_a_subprocess(env: dict[str, str], photos: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INTERNVL_SEARCH_")}
    result = subprocess.run(
        [str(BIN), "index", str(photos), "-c", "photos", "--create", "--metadata", '{"album": "test"}'],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "added 5, duplicates 0, failed 1 (of 6)" in result.stdout
    assert f"failed: {photos.resolve() / 'notes.jpg'}: not an image" in result.stdout
    assert "img" in result.stderr  # the progress bar
    result = subprocess.run(
        [str(BIN), "search", "a red circle", "-c", "photos", "-k", "3", "--json"],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 3 and all(h["metadata"] == {"album": "test"} for h in hits)


def test_collections_search_and_reindex_in_process(env: dict[str, str], photos: Path) -> None:
    assert run("collections", "create", "c1", "--index-kind", "hnsw")[0] == 0
    code, out, err = run("index", str(photos / "sub"), str(photos / "red.png"), "-c", "c1", "-q")
    assert code == 0, err
    assert "added 2, duplicates 0, failed 0" in out
    code, out, _ = run("index", str(photos / "red.png"), "-c", "c1", "-q")
    assert "added 0, duplicates 1" in out
    code, out, _ = run("collections", "list")
    assert code == 0 and out.splitlines()[1].split()[:5] == ["c1", "internvl-c", "16", "2", "hnsw"]
    code, out, _ = run("search", "-c", "c1", "--image", str(photos / "red.png"), "-k", "1")
    assert code == 0 and out.split()[1] == "1.0000" and out.strip().endswith("red.png")
    code, out, _ = run("search", "rot", "-c", "c1", "--filter", '{"album": "none"}')
    assert (code, out.strip()) == (0, "no results")
    assert run("collections", "delete", "c1", "--yes")[0] == 0
    assert "no collections" in run("collections", "list")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["index", "/no/such/dir", "-c", "x"], "no such file or folder"),
        (["index", "{photos}", "-c", "missing"], "add --create"),
        (["index", "{photos}", "-c", "x", "--create", "--metadata", "[1]"], "--metadata must be a JSON object"),
        (["index", "-c", "x"], "--resume"),
        (["search", "x", "-c", "missing"], "Collection 'missing' not found"),
        (["search", "-c", "x"], "a text query or --image"),
        (["search", "x", "-c", "x", "--filter", "{nope"], "--filter is not valid JSON"),
        (["collections", "create", "bad name"], "Invalid collection name"),
        (["collections", "create", "y", "--encoder", "nope"], "Unknown encoder 'nope'"),
        (["collections", "delete", "missing", "-y"], "not found"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    env: dict[str, str], photos: Path, args: list[str], message: str
) -> None:
    code, _, err = run(*(a.replace("{photos}", str(photos)) for a in args))
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
