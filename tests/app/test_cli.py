"""The CLI, run as a real subprocess through its installed entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

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
    top = run_cli("--help")
    assert top.returncode == 0, top.stderr
    paths = _command_paths(typer.main.get_command(cli))  # type: ignore[arg-type]
    assert {("serve",), ("version",), ("config",), ("config", "show"), ("demo",)} <= set(paths)
    for path in paths:
        result = run_cli(*path, "--help")
        assert result.returncode == 0, (path, result.stderr)
        assert "Usage:" in result.stdout and path[-1] in result.stdout


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.strip()


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
