"""The CLI, run as a real subprocess through its installed entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from app.cli import cli

BIN = Path(sys.executable).parent / "internvl-search"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INTERNVL_SEARCH_")}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env={**base, **(env or {})}, timeout=120)


def _command_paths(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        paths.append((*prefix, name))
        if hasattr(command, "commands"):  # a sub-group such as `config`
            paths += _command_paths(command, (*prefix, name))
    return paths


def test_every_command_has_help() -> None:
    top = run_cli("--help")  # the installed entry point, once; each command's help in-process (a start-up each
    assert top.returncode == 0, top.stderr  # would cost seconds, minutes over all commands)
    paths = _command_paths(typer.main.get_command(cli))  # type: ignore[arg-type]
    assert {("serve",), ("version",), ("config",), ("config", "show"), ("demo",)} <= set(paths)
    runner = CliRunner()
    for path in paths:
        if path == ("bench",):
            continue  # hands its arguments to the benchmark suite's own argparse parser: checked below
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "usage:" in result.output.lower() and path[-1] in result.output, path
    bench = run_cli("bench", "--help")
    assert bench.returncode == 0 and "usage:" in bench.stdout.lower(), bench.stderr


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.strip()


def test_commands_that_run_no_model_do_not_import_torch() -> None:
    # torch's import took 2.1 of the 3.4 s `internvl-search --help` took, FastAPI's 0.5: without them 0.6 s.
    code = (
        "import sys; from typer.testing import CliRunner; from app.cli import cli; "
        "codes = [CliRunner().invoke(cli, args).exit_code for args in "
        "(['--help'], ['version'], ['config', 'show'], ['keys', '--help'], ['db', '--help'])]; "
        "print(codes, sorted(m for m in ('torch', 'faiss', 'sqlalchemy', 'fastapi') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["[0,", "0,", "0,", "0,", "0]", "[]"]


def test_serving_does_not_import_torchvision() -> None:
    # Our transforms are PIL + torch; torchvision's import (its models, ops and torch._dynamo) cost 2.9 s of 7.2.
    code = "import sys, app.main; print('torchvision' in sys.modules, 'torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]


def test_config_show_json(tmp_path: Path) -> None:
    result = run_cli("config", "show", "--json", env={"INTERNVL_SEARCH_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["data_dir"] == str(tmp_path)


@pytest.mark.parametrize("command", [["config", "show"], ["serve"]])
def test_bad_setting_is_one_clear_line_and_exit_2(command: list[str]) -> None:
    result = run_cli(*command, env={"INTERNVL_SEARCH_PORT": "not-a-port"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: invalid setting INTERNVL_SEARCH_PORT")
    assert "Traceback" not in result.stderr


def test_unknown_command_fails() -> None:
    result = run_cli("no-such-command")
    assert result.returncode != 0


def test_embed_texts_and_images(tmp_path: Path) -> None:
    import numpy as np
    from factories import make_tiny_internvl_checkpoint
    from PIL import Image

    checkpoint = make_tiny_internvl_checkpoint(tmp_path / "ckpt")
    common = ["--encoder", "internvl-c", "--checkpoint", str(checkpoint)]
    out = tmp_path / "texts.npy"
    result = run_cli("embed", "--text", "a red star", "-t", "红色的星星", "-o", str(out), *common)
    assert result.returncode == 0, result.stderr
    vectors = np.load(out)
    assert vectors.shape == (2, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

    paths = []
    for i, colour in enumerate(["red", "blue", "green"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (30 + i, 40), colour).save(paths[-1])
    result = run_cli("embed", *map(str, paths), "-o", str(tmp_path / "images.npy"), *common)
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "images.npy").shape == (3, 16)


def test_embed_reports_user_mistakes_in_one_line(tmp_path: Path) -> None:
    from factories import make_tiny_internvl_checkpoint

    checkpoint = make_tiny_internvl_checkpoint(tmp_path / "ckpt")
    common = ["-o", str(tmp_path / "x.npy"), "--checkpoint", str(checkpoint)]
    not_an_image = tmp_path / "fake.jpg"
    not_an_image.write_text("hello")
    cases = {
        "cannot read image": ["embed", str(not_an_image), *common],
        "not both": ["embed", str(not_an_image), "--text", "x", *common],
        "Unknown encoder": ["embed", "--text", "x", "--encoder", "nope", *common],
        "config.json": ["embed", "--text", "x", "-o", str(tmp_path / "x.npy"), "--checkpoint", str(tmp_path)],
    }
    for expected, args in cases.items():
        result = run_cli(*args)
        assert result.returncode == 2, (expected, result.stderr)
        assert expected.lower() in result.stderr.lower(), (expected, result.stderr)
        assert "Traceback" not in result.stderr


def test_db_upgrade_creates_the_catalog_and_is_idempotent(tmp_path: Path) -> None:
    env = {"INTERNVL_SEARCH_DATA_DIR": str(tmp_path / "data")}
    assert "none" in run_cli("db", "current", env={**env, "INTERNVL_SEARCH_DATA_DIR": str(tmp_path)}).stdout
    for _ in range(2):
        result = run_cli("db", "upgrade", env=env)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "catalog.db").is_file()
    current = run_cli("db", "current", env=env).stdout
    assert current.splitlines()[0].removeprefix("current: ") == current.splitlines()[1].removeprefix("expected: ")


def test_db_errors_are_one_line(tmp_path: Path) -> None:
    unreachable = {"INTERNVL_SEARCH_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"}
    result = run_cli("db", "upgrade", env=unreachable)
    assert result.returncode == 2 and result.stderr.startswith("error: catalog database error")
    result = run_cli("db", "upgrade", "no-such-revision", env={"INTERNVL_SEARCH_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "no-such-revision" in result.stderr
    assert "Traceback" not in result.stderr
