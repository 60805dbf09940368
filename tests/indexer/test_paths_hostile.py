"""Path suite: every server-path trick, each refused with its own reason, both by the path check itself and as
failed ledger rows of a real ingestion job (the rows a caller sees in GET /v1/jobs/{id}).

test_pipeline_sources.py covers the basic refusals (`..`, relative, outside, symlinks out, FIFO, directory); this
file adds device nodes, sockets, NUL bytes, look-alike sibling roots, symlink loops, over-long names, and runs the
whole table through the engine.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile import cached_encoder_factory, engine_config, image_bytes

from indexer import Engine, IngestItem, InvalidInput
from indexer.pipeline.paths import SourceError, read_file, resolve_allowed

MAX = 1 << 20


def _symlink(link: Path, target: Path | str) -> str:
    os.symlink(target, link)
    return str(link)


def _device(path: Path, kind: int, major: int, minor: int) -> str:
    try:
        os.mknod(path, kind | 0o600, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("making device nodes needs root (CAP_MKNOD)")
    return str(path)


def _unix_socket(path: Path) -> str:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays behind, which is what a path check meets
    return str(path)


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


# name -> (build the path given (root, outside), reason fragment)
CASES: dict[str, tuple[Callable[[Path, Path], str], str]] = {
    "dotdot": (lambda r, o: f"{r}/sub/../sub/ok.png", "contains '..'"),
    "dotdot_escape": (lambda r, o: f"{r}/../outside/secret.png", "contains '..'"),
    "relative": (lambda r, o: "sub/ok.png", "must be absolute"),
    "absolute_outside": (lambda r, o: str(o / "secret.png"), "outside the allowed roots"),
    "etc_passwd": (lambda r, o: "/etc/passwd", "outside the allowed roots"),
    "sibling_prefix": (lambda r, o: str(r.parent / f"{r.name}-evil" / "x.png"), "outside the allowed roots"),
    "symlink_out": (lambda r, o: _symlink(r / "out.png", o / "secret.png"), "outside the allowed roots"),
    "symlinked_dir_out": (lambda r, o: _symlink(r / "outdir", o) + "/secret.png", "outside the allowed roots"),
    "symlink_to_dev_zero": (lambda r, o: _symlink(r / "zero.png", "/dev/zero"), "outside the allowed roots"),
    "symlink_loop": (
        lambda r, o: (_symlink(r / "loop_a", r / "loop_b"), _symlink(r / "loop_b", r / "loop_a"))[0],
        "symbolic links",
    ),  # fmt: skip
    "fifo": (lambda r, o: _fifo(r / "pipe.png"), "a FIFO"),
    "unix_socket": (lambda r, o: _unix_socket(r / "sock.png"), "a socket"),
    "char_device": (lambda r, o: _device(r / "null.png", stat.S_IFCHR, 1, 3), "a character device"),
    "block_device": (lambda r, o: _device(r / "disk.png", stat.S_IFBLK, 7, 0), "a block device"),
    "directory": (lambda r, o: str(r / "sub"), "a directory"),
    "missing": (lambda r, o: str(r / "missing.png"), "no such file"),
    "nul_byte": (lambda r, o: f"{r}/ok.png\x00.txt", "NUL"),
    "name_too_long": (lambda r, o: f"{r}/{'x' * 300}.png", "too long"),
}


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = (tmp_path / "root").resolve(), (tmp_path / "outside").resolve()
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "ok.png").write_bytes(image_bytes("red", seed=1))
    (outside / "secret.png").write_bytes(image_bytes("blue", seed=2))
    (root.parent / f"{root.name}-evil").mkdir()
    (root.parent / f"{root.name}-evil" / "x.png").write_bytes(image_bytes("green", seed=3))
    return root, outside


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_path_trick_is_refused_with_its_reason(case: str, tree: tuple[Path, Path]) -> None:
    root, outside = tree
    make, reason = CASES[case]
    with pytest.raises(SourceError, match=reason):
        read_file(make(root, outside), [root], MAX)


def test_no_roots_means_no_server_paths(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(SourceError, match="no allowed roots are configured"):
        resolve_allowed(str(root / "sub" / "ok.png"), [])


def test_a_symlink_inside_the_root_to_a_file_inside_it_is_read(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    link = _symlink(root / "alias.png", root / "sub" / "ok.png")
    assert read_file(link, [root], MAX) == (root / "sub" / "ok.png").read_bytes()


def test_the_path_table_as_failed_ledger_rows(tree: tuple[Path, Path], tmp_path: Path) -> None:
    """One ingestion job over every trick: one failed row each, with its reason; the legitimate file is indexed."""
    root, outside = tree
    paths = {name: make(root, outside) for name, (make, _) in CASES.items() if name != "nul_byte"}
    paths["ok"] = str(root / "sub" / "ok.png")
    config = engine_config(tmp_path / "engine", f"sqlite:///{tmp_path / 'catalog.db'}", allowed_roots=(root,))
    with Engine(config, cached_encoder_factory).open() as engine:
        engine.create_collection("paths")
        job = engine.run_job(engine.submit("paths", [IngestItem.path(p) for p in paths.values()], start=False))
        assert (job.state, job.done) == ("done", 1)
        by_source = {f.source: f.reason for f in engine.get_job(job.id, failures=100).failures}
        with pytest.raises(InvalidInput, match="without NUL"):  # refused with the request, before any ledger row
            engine.submit("paths", [IngestItem.path(CASES["nul_byte"][0](root, outside))])
    for name, path in paths.items():
        if name in ("ok", "directory"):
            continue  # a directory is walked (it holds ok.png, already indexed once: a duplicate, not a failure)
        assert CASES[name][1] in by_source[path], (name, by_source.get(path))
    assert job.failed == len(paths) - 2


def test_a_parent_directory_swapped_for_a_symlink_after_the_check_is_refused(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race O_NOFOLLOW cannot see: between the root check and the open, the file's parent directory becomes a
    symlink to a directory outside holding a file of the same name. The stat and the open both follow it (the same
    inode both times); the opened descriptor's real path is what gives it away."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("the descriptor check needs Linux's /proc")
    root, outside = tree
    (outside / "ok.png").write_bytes(b"secret outside the root")
    real_stat = os.stat
    swapped: list[bool] = []

    def stat_after_swapping(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if not swapped and str(path) == str(root / "sub" / "ok.png"):
            swapped.append(True)
            os.rename(root / "sub", root / "sub-moved")
            os.symlink(outside, root / "sub")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_after_swapping)
    with pytest.raises(SourceError, match="changed while it was being opened"):
        read_file(str(root / "sub" / "ok.png"), [root], MAX)
    assert swapped
