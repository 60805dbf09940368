"""Distributed ingestion on Ray Data (issue #10): a local 2-CPU Ray ingests a shapes-world demo corpus (plus a
corrupt file and a duplicate) into a fresh catalog, and the result equals the local pipeline's in another fresh
catalog: the same image rows and ids, the same ledger outcomes and reasons, vectors within tolerance. The Ray run is
interrupted after its first batch and resumed, and `index --ray` on the same sources adds nothing."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hostile import cached_encoder_factory, engine_config, tiny_checkpoint

from indexer import Engine, IngestItem
from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.vector_store import EmbeddingStore
from internvl_models.shapes_world import write_demo_corpus

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'internvl-search[scale]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")

from indexer import ray_ingest  # noqa: E402 - after the skip

pytestmark = pytest.mark.slow
SCENES = 40
EXTRA = ("zz_corrupt.png", "zz_copy_of_3.png")  # a corrupt file, and a copy of scene 3 (a duplicate)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    if ray.is_initialized():
        yield
        return
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False,
        configure_logging=False,
    )  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def corpus(tmp_path: Path) -> list[IngestItem]:
    manifest = write_demo_corpus(tmp_path / "corpus", SCENES)
    images = manifest.parent / "images"
    (images / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # a PNG signature, then garbage
    shutil.copy(images / "test_00003.png", images / "zz_copy_of_3.png")
    return [IngestItem.manifest(manifest), *(IngestItem.path(images / name) for name in EXTRA)]


def _engine(tmp_path: Path, name: str) -> Engine:
    url = f"sqlite:///{tmp_path / f'{name}.db'}"
    config = engine_config(tmp_path, url, data_dir=tmp_path / name, image_batch_size=8, job_workers=1)
    return Engine(config, cached_encoder_factory).open(resume_jobs=False)


def _catalog(engine: Engine, job_id: int) -> tuple[list[tuple], list[tuple]]:
    """The collection's image rows and the job's ledger outcomes, in id / position order."""
    with session_scope(engine.sessions) as session:
        collection_id = repo.get_job(session, job_id).collection_id
        ids = repo.image_ids(session, collection_id, status=None).tolist()
        images = [
            (im.id, im.sha256, im.source, im.width, im.height, im.format, im.byte_size, im.status, im.meta)
            for im in repo.get_images(session, ids)
        ]
        items = [(it.position, it.state, it.reason, it.image_id) for it in repo.job_items(session, job_id, limit=10**6)]
    return sorted(images), items


def _vectors(engine: Engine, name: str) -> tuple[np.ndarray, np.ndarray]:
    live = engine._live_by_name(name)
    ids, vectors = EmbeddingStore(live.files.embeddings_dir, live.dim).load_all()
    order = np.argsort(ids)
    np.testing.assert_array_equal(np.sort(live.store.ids()), ids[order])  # the index holds exactly the shards' ids
    return ids[order], vectors[order].astype(np.float32)


def test_ray_ingest_equals_local_pipeline(
    tmp_path: Path, corpus: list[IngestItem], local_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus_dir = tmp_path / "corpus"
    with _engine(tmp_path, "local") as local, _engine(tmp_path, "ray") as distributed:
        local.create_collection("scenes")
        local_job = local.submit("scenes", corpus, metadata={"corpus": "demo"}, start=False)
        expected = local.run_job(local_job)
        assert (expected.state, expected.total, expected.done, expected.skipped, expected.failed) == (
            "done", SCENES + 2, SCENES, 1, 1,
        )  # fmt: skip

        distributed.create_collection("scenes")
        job = distributed.submit("scenes", corpus, metadata={"corpus": "demo"}, start=False)
        stop = threading.Event()
        first = ray_ingest.run_job(distributed, job, progress=lambda info: stop.set(), stop=stop)
        assert first.state == "queued" and 0 < first.processed < SCENES + 2  # interrupted after its first batch
        info = ray_ingest.run_job(distributed, job)  # resumed: only the pending items
        assert (info.state, info.total, info.done, info.skipped, info.failed) == (
            expected.state, expected.total, expected.done, expected.skipped, expected.failed,
        )  # fmt: skip
        assert [(f.source, f.reason) for f in info.failures] == [(f.source, f.reason) for f in expected.failures]
        assert "not an image" in info.failures[0].reason or "corrupt" in info.failures[0].reason

        assert _catalog(distributed, job) == _catalog(local, local_job)  # same ids, rows, outcomes and reasons
        ids, vectors = _vectors(distributed, "scenes")
        local_ids, local_vectors = _vectors(local, "scenes")
        np.testing.assert_array_equal(ids, local_ids)
        assert np.abs(vectors - local_vectors).max() <= 2e-3  # float16 shards: one rounding step at most
        cosine = np.sum(vectors * local_vectors, axis=1) / (
            np.linalg.norm(vectors, axis=1) * np.linalg.norm(local_vectors, axis=1)
        )  # fmt: skip
        assert cosine.min() >= 0.9999
        hits = [h.id for h in distributed.search("scenes", text="a red circle", k=5)]
        assert hits == [h.id for h in local.search("scenes", text="a red circle", k=5)]
        image = distributed.get_image("scenes", int(ids[0]))
        assert (
            distributed.image_path("scenes", image.id).read_bytes() == local.image_path("scenes", image.id).read_bytes()
        )

        collection = distributed.get_collection("scenes")

    # Idempotent, through `internvl-search index --ray`: the same sources again add nothing (every image is a
    # duplicate, the corrupt file fails again), and the index still holds exactly the same ids.
    sources = [str(corpus_dir / "manifest.jsonl"), *(str(corpus_dir / "images" / n) for n in EXTRA)]
    code, out, err = _cli(
        "index", *sources, "-c", "scenes", "--ray", "local", "-q", "--metadata", '{"corpus": "demo"}',
        env={"DATA_DIR": tmp_path / "ray", "DATABASE_URL": f"sqlite:///{tmp_path / 'ray.db'}", "DEVICE": "cpu",
             "ENCODER": "internvl-c", "ENCODER_CHECKPOINT": tiny_checkpoint(), "IMAGE_BATCH_SIZE": 8},
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    assert f"added 0, duplicates {SCENES + 1}, failed 1 (of {SCENES + 2})" in out
    with _engine(tmp_path, "ray") as distributed:
        assert _vectors(distributed, "scenes")[0].tolist() == ids.tolist()
        assert distributed.get_collection("scenes").images == collection.images
        assert collection.images["indexed"] == collection.vectors == SCENES


def _cli(*args: str, env: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """`internvl-search ARGS` in this process with INTERNVL_SEARCH_* = env: (exit status, stdout, stderr)."""
    import contextlib
    import io
    import os
    import sys

    from app.cli import main

    for name in [n for n in os.environ if n.startswith("INTERNVL_SEARCH_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(f"INTERNVL_SEARCH_{name}", str(value))
    monkeypatch.setattr(sys, "argv", ["internvl-search", *args])
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def test_missing_ray_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from indexer import InvalidInput

    real_import = builtins.__import__

    def no_ray(name: str, *args: object, **kwargs: object):  # noqa: ANN202
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(InvalidInput, match=r"internvl-search\[scale\]"):
        ray_ingest.connect("local")
