"""`eval` and `collections migrate | migration | rollback | purge-previous` on the command line, in process (same
`main()`, same exit codes), with the tiny random encoder as the configured one and the shipped shapes encoder as the
one switched to."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from app.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "internvl_models" / "shapes_world" / "weights" / "internvl-shapes"
pytestmark = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="no shipped shapes encoder")


@pytest.fixture
def env(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    from factories import make_tiny_internvl_checkpoint

    clean_env.setenv("INTERNVL_SEARCH_DATA_DIR", str(tmp_path / "data"))
    clean_env.setenv("INTERNVL_SEARCH_ENCODER_CHECKPOINT", str(make_tiny_internvl_checkpoint(tmp_path / "ckpt")))
    clean_env.setenv("INTERNVL_SEARCH_DEVICE", "cpu")


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    """A labelled folder (3 colour classes, 2 images each) and a caption manifest over the same images."""
    folder, lines = tmp_path / "labelled", []
    for colour in ("red", "green", "blue"):
        for i, size in enumerate([(30, 20), (24, 36)]):
            path = folder / colour / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, colour).save(path)
            lines.append(json.dumps({"image": f"{colour}/{i}.png", "captions": [f"a {colour} picture"]}))
    manifest = folder / "captions.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return folder, manifest


def run(*args: str) -> tuple[int, str, str]:
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, sys.argv = sys.argv, ["internvl-search", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def test_eval_writes_a_report_and_compares_two_encoders(env: None, data: tuple[Path, Path], tmp_path: Path) -> None:
    folder, manifest = data
    out = tmp_path / "report.json"
    code, stdout, stderr = run("eval", "--classification", str(folder), "--retrieval", str(manifest), "-o", str(out))
    assert code == 0, stderr
    (report,) = json.loads(out.read_text())["reports"]
    assert report["classification"]["n_images"] == 6 and report["classification"]["n_classes"] == 3
    assert report["retrieval"]["languages"]["default"]["n_captions"] == 6
    assert "classification.top1" in stdout and "retrieval.image_to_text.R@10" in stdout
    code, stdout, stderr = run("eval", "--retrieval", str(manifest), "--compare-checkpoint", str(SHIPPED), "-q")
    assert code == 0, stderr
    # one row per metric: the two encoders' values and the difference
    assert re.search(r"^retrieval\.text_to_image\.R@1 .*\d\.\d{4} +\d\.\d{4}  [+-]\d\.\d{4}$", stdout, re.M), stdout


def test_eval_refuses_missing_data(env: None, tmp_path: Path) -> None:
    assert run("eval")[0] == 2
    code, _, stderr = run("eval", "--classification", str(tmp_path / "missing"))
    assert code == 2 and "no such file or folder" in stderr


def test_migrate_show_rollback_and_purge(env: None, data: tuple[Path, Path]) -> None:
    folder, _ = data
    assert run("index", str(folder), "-c", "c", "--create", "-q")[0] == 0
    code, stdout, stderr = run("collections", "migrate", "c", "--checkpoint", str(SHIPPED), "-q")
    assert code == 0, stderr
    assert "re-embedded 6 of 6, failed 0" in stdout and "now uses internvl-c" in stdout
    code, stdout, _ = run("collections", "migration", "c")
    assert code == 0 and "dim 128" in stdout.splitlines()[0] and "dim 16" in stdout.splitlines()[2]
    assert run("collections", "rollback", "c")[0] == 0
    assert json.loads(run("collections", "migration", "c", "--json")[1])["serving"]["dim"] == 16
    assert run("collections", "purge-previous", "c", "--yes")[0] == 0
    code, _, stderr = run("collections", "rollback", "c")
    assert code == 2 and "no previous encoder" in stderr
    code, _, stderr = run("collections", "migrate", "c", "--checkpoint", str(SHIPPED), "--max-regression", "2", "-q")
    assert code == 2 and "max_regression must be between 0 and 1" in stderr
