"""Server-side paths: only regular files that resolve inside an allowed root, read without following tricks.

A path is refused when no root is configured, when it is relative or contains `..`, when it resolves (symlinks
followed) outside every root, or when it is not a regular file: a FIFO would block the reader forever and a device
file can be endless or have side effects on open. The final open uses O_NOFOLLOW on the resolved path and checks
the opened descriptor again (the same regular file that was checked, and, where /proc tells, still inside a root), so
a file or a parent directory swapped for a symlink between the check and the read is refused too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

# Files a directory walk picks up; a file named explicitly is always attempted, whatever its name.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".tga"}
)


class SourceError(Exception):
    """An item that cannot be read; the message is the reason recorded on its ledger row."""


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _inside(real: Path, roots: Sequence[Path]) -> bool:
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)


def _opened_path(fd: int) -> Path | None:
    """Where the kernel says descriptor `fd` leads (Linux's /proc); None where that cannot be told."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def resolve_allowed(raw: str, roots: Sequence[Path]) -> Path:
    """The real path of `raw` if it lies inside one of `roots`; `SourceError` with the reason otherwise."""
    if not roots:
        raise SourceError("server paths are disabled: no allowed roots are configured")
    if "\x00" in raw:
        raise SourceError("path contains a NUL byte")
    path = Path(raw)
    if not path.is_absolute():
        raise SourceError("server paths must be absolute")
    if ".." in path.parts:
        raise SourceError("path contains '..'")
    real = Path(os.path.realpath(path))
    if not _inside(real, roots):
        # The resolved target is not echoed: it would tell a caller where a symlink inside the root points.
        raise SourceError("path resolves outside the allowed roots (through a symlink or is not under any root)")
    return real


def read_file(raw: str, roots: Sequence[Path], max_bytes: int) -> bytes:
    """The bytes of the regular file `raw` (at most `max_bytes`), after `resolve_allowed`."""
    real = resolve_allowed(raw, roots)
    try:
        before = os.stat(real)
    except FileNotFoundError:
        raise SourceError("no such file") from None
    except OSError as exc:
        raise SourceError(f"cannot stat file: {exc.strerror}") from None
    if not stat.S_ISREG(before.st_mode):
        raise SourceError(f"refused: {_kind_of(before.st_mode)}, not a regular file")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"cannot open file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise SourceError("refused: the file changed while it was being opened")
        # O_NOFOLLOW guards only the last component: a parent directory swapped for a symlink after the check would
        # be followed by both the stat and the open above. The descriptor's own path says where it really leads.
        where = _opened_path(handle.fileno())
        if where is not None and not _inside(where, roots):
            raise SourceError("refused: the path changed while it was being opened (now outside the allowed roots)")
        if opened.st_size > max_bytes:
            raise SourceError(f"file is {opened.st_size:,} bytes, more than the limit of {max_bytes:,}")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SourceError(f"file is larger than the limit of {max_bytes:,} bytes")
    return data


def walk_images(directory: Path) -> Iterator[str]:
    """Image files under `directory` (already checked), recursively, in sorted order.

    Hidden entries are skipped and symlinked directories are not followed (a cycle, or a way out of the root);
    symlinked files are listed and checked like any path when they are read.
    """
    for current, dirnames, filenames in os.walk(directory, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield os.path.join(current, name)


def is_directory(raw: str, roots: Sequence[Path]) -> Path | None:
    """The real path when `raw` is an allowed directory; None for anything else (its read reports why)."""
    try:
        real = resolve_allowed(raw, roots)
        # Path.is_dir() swallows only some errors; a name too long for the filesystem raises.
        return real if stat.S_ISDIR(os.stat(real).st_mode) else None
    except (SourceError, OSError, ValueError):
        return None
