"""A hostile corpus through the whole engine: every item ends as a clear ledger row, the job never crashes, and
the legitimately decodable oddities (CMYK, 16-bit, animated GIF, EXIF-rotated) are indexed."""

from __future__ import annotations

import os
from pathlib import Path

from hostile import cached_encoder_factory, engine_config, hostile_corpus, http_server, image_bytes, send_bytes

from indexer import Engine, IngestItem


def _outcomes(engine: Engine, job_id: int) -> dict[str, tuple[str, str | None]]:
    from indexer.catalog import repo
    from indexer.catalog.db import session_scope
    from indexer.pipeline.flow import ItemSpec

    with session_scope(engine.sessions) as session:
        rows = repo.job_items(session, job_id, limit=1000)
        return {ItemSpec.from_source(r.source).display: (r.state, r.reason) for r in rows}


def test_hostile_corpus_ends_as_clear_rows(tmp_path: Path, catalog_url: str) -> None:
    corpus = tmp_path / "corpus"
    expected = hostile_corpus(corpus)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(image_bytes(seed=5))
    os.symlink(outside, corpus / "escape.png")
    os.mkfifo(corpus / "pipe.png")
    expected |= {"escape.png": "outside the allowed roots", "pipe.png": "a FIFO"}
    png = image_bytes("teal", seed=11)
    config = engine_config(tmp_path / "root", catalog_url, max_frames=5, allowed_roots=(corpus.resolve(),))
    with http_server({"/ok.png": send_bytes(png), "/text": send_bytes(b"<html>", "text/html")}) as base:
        with Engine(config, cached_encoder_factory).open() as engine:
            engine.create_collection("h")
            private = f"{base}/ok.png"
            job = engine.run_job(engine.submit("h", [IngestItem.path(corpus), IngestItem.url(private)]))
            assert job.state == "done" and job.total == len(expected) + 1
            rows = _outcomes(engine, job.id)
            for name, reason in expected.items():
                state, why = rows[str(corpus.resolve() / name)]
                assert (state == "done") if reason is None else (state == "failed" and reason in why), (name, why)
            assert rows[private][0] == "failed" and "loopback" in rows[private][1]
            assert job.done == sum(r is None for r in expected.values())
        config = engine_config(tmp_path / "root", catalog_url, allow_private_urls=True)
        with Engine(config, cached_encoder_factory).open() as engine:
            urls = [f"{base}/ok.png", f"{base}/missing.png", f"{base}/text", "ftp://example.com/a.png"]
            job = engine.run_job(engine.submit("h", [IngestItem.url(u) for u in urls]))
            rows = _outcomes(engine, job.id)
            assert rows[urls[0]] == ("done", None)
            assert rows[urls[1]] == ("failed", "HTTP 404 Not Found")
            assert rows[urls[2]][0] == "failed" and rows[urls[2]][1].startswith("not an image")
            assert "scheme 'ftp' is not allowed" in rows[urls[3]][1]
            (hit,) = engine.search("h", image=png, k=1)
            assert hit.source == urls[0] and hit.format == "PNG"
