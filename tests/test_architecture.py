"""Layering and size rules (STYLE.md part b), checked by walking the AST of every project file.

Layers only look down: app -> indexer -> internvl_models. The model library must stay usable without the
service, so it may not import HTTP, SQL or FAISS code; the engine may not import the HTTP layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN_IMPORTS = {
    "internvl_models": {"indexer", "app", "fastapi", "starlette", "sqlalchemy", "alembic", "faiss", "uvicorn"},
    "indexer": {"app", "fastapi", "starlette", "uvicorn"},
    "app/routes": {"sqlalchemy", "faiss", "torch", "numpy"},
}
MODEL_FILE_MAX_LINES = 500
OTHER_FILE_MAX_LINES = 600
FUNCTION_MAX_LINES = 60
ROUTE_FUNCTION_MAX_LINES = 25


def _python_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if ".venv" not in p.parts)


def _imported_top_levels(tree: ast.AST, path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):  # walk() also sees function-local imports, which must obey the same rule
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level > 0:
                # A relative import resolves inside the file's own package; climbing out of it counts as the target.
                package_parts = path.relative_to(ROOT).parts[:-1]
                if node.level > len(package_parts):
                    names.add("<outside the project>")
                else:
                    names.add(package_parts[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_layers_only_import_downwards(package: str) -> None:
    violations = []
    for path in _python_files(package):
        imported = _imported_top_levels(ast.parse(path.read_text()), path)
        for name in sorted(imported & FORBIDDEN_IMPORTS[package]):
            violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not violations, "layering violated:\n" + "\n".join(violations)


def test_the_import_checker_sees_violations(tmp_path: Path) -> None:
    # Guard against a checker that silently passes everything.
    code = "import faiss\nfrom sqlalchemy.orm import Session\ndef f():\n    from fastapi import FastAPI\n"
    names = _imported_top_levels(ast.parse(code), ROOT / "internvl_models" / "x.py")
    assert {"faiss", "sqlalchemy", "fastapi"} <= names


def _long_functions(path: Path, limit: int) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() has {length} lines > {limit}")
    return out


def test_file_and_function_sizes() -> None:
    problems = []
    for package in ("internvl_models", "indexer", "app", "bench"):
        for path in _python_files(package):
            lines = len(path.read_text().splitlines())
            is_model_file = package == "internvl_models" and path.parent.name == "internvl_models"
            limit = MODEL_FILE_MAX_LINES if is_model_file else OTHER_FILE_MAX_LINES
            if lines > limit:
                problems.append(f"{path.relative_to(ROOT)} has {lines} lines > {limit}")
            routes = path.parent.name == "routes"
            problems += _long_functions(path, ROUTE_FUNCTION_MAX_LINES if routes else FUNCTION_MAX_LINES)
    assert not problems, "\n".join(problems)


def test_only_app_reads_the_environment() -> None:
    offenders = []
    for package in ("internvl_models", "indexer"):
        for path in _python_files(package):
            text = path.read_text()
            if "os.environ" in text or "getenv(" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"environment read below app/: {offenders}"
