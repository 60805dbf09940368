"""Sources stage: allowed roots, refused path tricks, directory walks and manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hostile import image_bytes, write_images

from indexer.pipeline.flow import ItemSpec
from indexer.pipeline.paths import SourceError, read_file, resolve_allowed
from indexer.pipeline.sources import plan

MAX = 1 << 20


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    write_images(root / "a", 2)
    write_images(root / "a" / "nested", 1, start=2)
    (root / "a" / "notes.txt").write_text("not listed by a walk")
    (root / "a" / ".hidden.png").write_bytes(image_bytes())
    return root.resolve()


def test_reads_files_inside_a_root(root: Path) -> None:
    path = root / "a" / "img_000.png"
    assert read_file(str(path), [root], MAX) == path.read_bytes()
    assert resolve_allowed(str(path), [root.parent / "elsewhere", root]) == path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda root, out: str(root / "a" / ".." / "a" / "img_000.png"), "contains '..'"),
        (lambda root, out: "relative/img.png", "must be absolute"),
        (lambda root, out: str(out / "secret.png"), "outside the allowed roots"),
        (lambda root, out: _symlink(root / "a" / "link.png", out / "secret.png"), "outside the allowed roots"),
        (lambda root, out: _symlink(root / "dirlink", out), "outside the allowed roots"),
        (lambda root, out: _fifo(root / "pipe.png"), "a FIFO"),
        (lambda root, out: str(root / "a"), "a directory"),
        (lambda root, out: str(root / "missing.png"), "no such file"),
    ],
)
def test_refused_paths_say_why(root: Path, tmp_path: Path, make, reason: str) -> None:  # noqa: ANN001
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.png").write_bytes(image_bytes())
    with pytest.raises(SourceError, match=reason):
        read_file(make(root, outside), [root], MAX)


def test_device_files_and_size_cap_are_refused(root: Path) -> None:
    with pytest.raises(SourceError, match="a character device"):
        read_file("/dev/zero", [Path("/dev")], MAX)
    with pytest.raises(SourceError, match="more than the limit"):
        read_file(str(root / "a" / "img_000.png"), [root], 10)
    with pytest.raises(SourceError, match="no allowed roots"):
        read_file(str(root / "a" / "img_000.png"), [], MAX)


def test_plan_walks_directories_for_image_files_only(root: Path) -> None:
    specs = list(plan([ItemSpec("path", str(root / "a"), meta={"set": "x"})], [root]))
    names = [Path(s.ref).relative_to(root).as_posix() for s in specs]
    assert names == ["a/img_000.png", "a/img_001.png", "a/nested/img_002.png"]
    assert all(s.kind == "path" and s.meta == {"set": "x"} for s in specs)
    # A directory outside the roots is not walked: it stays one item, which fails with its reason when read.
    assert list(plan([ItemSpec("path", "/etc")], [root])) == [ItemSpec("path", "/etc")]


def test_manifests_jsonl_and_csv(root: Path) -> None:
    jsonl = root / "m.jsonl"
    rows = [
        {"path": "a/img_000.png", "year": 2001, "metadata": {"tags": ["x"]}},
        {"url": "https://example.com/x.png", "caption": "远处的山"},
        {"caption": "no location"},
        {"path": "a/nested"},
    ]
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{broken\n")
    specs = list(plan([ItemSpec("manifest", str(jsonl), meta={"batch": 1})], [root]))
    assert specs[0] == ItemSpec("path", str(root / "a/img_000.png"), meta={"batch": 1, "year": 2001, "tags": ["x"]})
    assert specs[1] == ItemSpec("url", "https://example.com/x.png", meta={"batch": 1, "caption": "远处的山"})
    assert specs[2].kind == "invalid" and "no location column" in specs[2].reason
    assert specs[3].ref == str(root / "a/nested/img_002.png")
    assert specs[4].kind == "invalid" and specs[4].ref == "manifest line 5" and "invalid JSON" in specs[4].reason

    csv = root / "m.csv"
    csv.write_text("path,year,score,colour\na/img_001.png,1999,0.5,red\n/abs/x.png,,,\n")
    specs = list(plan([ItemSpec("manifest", str(csv))], [root]))
    assert specs[0].meta == {"year": 1999, "score": 0.5, "colour": "red"}
    assert specs[1] == ItemSpec("path", "/abs/x.png")


def test_manifest_outside_the_roots_is_one_failed_item(root: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "x.png"}\n')
    (spec,) = plan([ItemSpec("manifest", str(manifest))], [root])
    assert spec.kind == "invalid" and "outside the allowed roots" in spec.reason


def test_ledger_specs_round_trip() -> None:
    spec = ItemSpec("upload", "/data/jobs/1/00000000", name="cat.png", meta={"k": "ü"})
    assert ItemSpec.from_source(spec.to_source()) == spec
    assert spec.display == "upload:cat.png"
    assert ItemSpec.from_source("not json").kind == "invalid"


def _symlink(link: Path, target: Path) -> str:
    os.symlink(target, link)
    return str(link)


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"\n \n", "empty"),
        (b"\xff\xfe\x00p\x00a", "not UTF-8"),
        (b'{"path": "/a.png"}\0', "not UTF-8"),
        (b"name,year\na.png,2020\n", "location column"),
        (b"url\n", "no rows"),
        (b'path\n"unterminated' + b"x" * 200_000, "not valid CSV"),
    ],
)
def test_uploaded_bytes_that_cannot_be_a_manifest_are_refused(data: bytes, words: str) -> None:
    from indexer import InvalidInput
    from indexer.pipeline.sources import IngestItem

    with pytest.raises(InvalidInput, match=words):
        IngestItem.manifest(data=data, filename="m.jsonl")


def test_uploaded_manifests_that_can_be_read_are_taken() -> None:
    from indexer.pipeline.sources import IngestItem

    for data in (b'{"path": "/a.png"}\n{"broken', b"\xef\xbb\xbfurl,year\nhttp://example.org/a.png,2020\n"):
        assert IngestItem.manifest(data=data).data == data  # bad rows fail later, one item each
