"""The engine end to end on SQLite and PostgreSQL with a tiny real InternVL encoder: collections, ingestion from
folders, uploads and manifests, search by text / image / image id with filters, dedup, deletes and metadata."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from hostile import cached_encoder_factory, engine_config, image_bytes, tiny_checkpoint, write_images

from indexer import Conflict, Engine, IngestItem, InvalidInput, NotFound, SchemaNotCurrent
from indexer.search import NearestQuery
from indexer.vector_store import EmbeddingStore


@pytest.fixture
def engine(tmp_path: Path, catalog_url: str) -> Iterator[Engine]:
    with Engine(engine_config(tmp_path, catalog_url), cached_encoder_factory).open() as engine:
        yield engine


def _consistent(engine: Engine, name: str) -> np.ndarray:
    """Catalog, vector store and embedding shards hold the same ids; returns them."""
    from indexer.catalog import repo
    from indexer.catalog.db import session_scope

    live = engine._live_by_name(name)
    with session_scope(engine.sessions) as session:
        indexed = repo.image_ids(session, live.id, status="indexed")
    stored, _ = EmbeddingStore(live.files.embeddings_dir, live.dim).load_all()
    np.testing.assert_array_equal(live.store.ids(), indexed)
    assert set(indexed) <= set(stored)
    return indexed


def test_ingest_search_filter_and_delete(engine: Engine, tmp_path: Path) -> None:
    photos = write_images(tmp_path / "photos", 12)
    manifest = tmp_path / "photos" / "meta.csv"
    manifest.write_text("path,year,colour\n" + "".join(f"{p.name},{2000 + i},c{i % 3}\n" for i, p in enumerate(photos)))
    engine.create_collection("photos")
    job = engine.submit("photos", [IngestItem.manifest(manifest)], metadata={"batch": "one"})
    info = engine.wait_job(job, timeout_s=60)
    assert (info.state, info.total, info.done, info.failed, info.skipped) == ("done", 12, 12, 0, 0)
    assert set(info.timings) >= {"fetch_s", "decode_s", "wait_s", "encode_s", "write_s", "wall_s"}
    upload = image_bytes("white", (50, 50), seed=99)
    info = engine.run_job(engine.submit("photos", [IngestItem.upload(upload, "snow.png", {"year": 1990})]))
    assert info.done == 1
    collection = engine.get_collection("photos")
    assert (collection.vectors, collection.images["indexed"], collection.store_kind) == (13, 13, "flat")
    _consistent(engine, "photos")

    threads = faiss.omp_get_max_threads()
    hits = engine.search("photos", text="a red circle", k=5)
    assert len(hits) == 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.metadata["batch"] == "one" for h in hits if h.source != "upload:snow.png")
    (top,) = engine.search("photos", image=photos[4].read_bytes(), k=1)
    assert top.source == str(photos[4].resolve()) and top.score == pytest.approx(1.0, abs=2e-3)
    assert top.metadata == {"batch": "one", "year": 2004, "colour": "c1"} and (top.width, top.height) == (36, 28)
    similar = engine.search("photos", image_id=top.id, k=12)
    assert len(similar) == 12 and top.id not in {h.id for h in similar}
    assert engine.search("photos", text="雪", k=3)  # any language reaches the same space
    assert faiss.omp_get_max_threads() == threads  # single-threaded queries leave the caller's setting alone

    # A filter keeps k results whenever k images match, and only those.
    newer = engine.search("photos", text="red", k=4, filter={"year": {"gte": 2006}})
    assert len(newer) == 4 and all(h.metadata["year"] >= 2006 for h in newer)
    assert len(engine.search("photos", text="red", k=10, filter={"colour": "c2"})) == 4
    assert engine.search("photos", text="red", k=10, filter={"colour": "none"}) == []
    page = engine.search("photos", text="red", k=3, offset=3)
    assert [h.id for h in page] == [h.id for h in engine.search("photos", text="red", k=6)][3:]
    assert all(h.score >= 0.2 for h in engine.search("photos", text="red", k=13, min_score=0.2))
    with pytest.raises(InvalidInput, match="Unknown filter operator"):
        engine.search("photos", text="red", filter={"year": {"near": 1}})
    with pytest.raises(InvalidInput, match="exactly one of"):
        engine.search("photos", text="red", image_id=1)

    # Originals, metadata, deletes.
    assert engine.image_path("photos", top.id).read_bytes() == photos[4].read_bytes()
    assert engine.update_metadata("photos", top.id, {"year": 1800}, merge=True).metadata["year"] == 1800
    assert [h.id for h in engine.search("photos", text="x", k=5, filter={"year": 1800})] == [top.id]
    assert engine.delete_images("photos", [top.id, similar[0].id]) == 2
    assert {top.id, similar[0].id}.isdisjoint(h.id for h in engine.search("photos", text="red", k=13))
    assert len(_consistent(engine, "photos")) == 11
    with pytest.raises(NotFound):
        engine.get_image("photos", top.id)
    with pytest.raises(NotFound):
        engine.delete_images("photos", [top.id])


def test_search_vectors_answers_each_query_as_alone(engine: Engine, tmp_path: Path) -> None:
    """Several queries in one call (what a micro-batch of searches makes): each with its own k, offset, min_score,
    filter and excluded image gets what it gets searched alone; bad input is refused before any search."""
    photos = write_images(tmp_path / "photos", 10)
    engine.create_collection("photos")
    engine.run_job(engine.submit("photos", [IngestItem.path(p, {"n": i}) for i, p in enumerate(photos)]))
    encoder = engine.collection_encoder("photos")
    queries = encoder.encode_texts(["red", "a blue square", "green", "white", "black"])
    wants = [NearestQuery(k=3), NearestQuery(k=2, offset=2), NearestQuery(k=10, min_score=0.0),
             NearestQuery(k=4, filter={"n": {"lt": 5}}), NearestQuery(k=9, exclude=1)]  # fmt: skip
    together = engine.search_vectors("photos", queries, wants, fingerprint=encoder.fingerprint)
    for query, want, hits in zip(queries, wants, together, strict=True):
        (alone,) = engine.search_vectors("photos", query[None], [want], fingerprint=encoder.fingerprint)
        assert [(h.id, h.score) for h in hits] == [(h.id, pytest.approx(h.score, abs=1e-5)) for h in alone]
    assert [len(h) for h in together[:2]] == [3, 2] and all(h.metadata["n"] < 5 for h in together[3])
    assert 1 not in {h.id for h in together[4]}
    with pytest.raises(InvalidInput, match="2 searches need 2 query vectors"):
        engine.search_vectors("photos", queries, wants[:2])
    with pytest.raises(InvalidInput, match="Unknown filter operator"):
        NearestQuery(filter={"n": {"near": 1}})
    with pytest.raises(InvalidInput, match="k must be"):
        NearestQuery(k=0)


def test_a_query_image_gets_the_limits_of_ingested_images(tmp_path: Path, catalog_url: str) -> None:
    """engine.search decodes a query image under the engine's frame and pixel limits, as the HTTP layer does (it
    applied only the pixel limit, with a frame limit of its own)."""
    from hostile import animated_gif

    config = engine_config(tmp_path, catalog_url, max_frames=5, max_image_pixels=40 * 30)
    with Engine(config, cached_encoder_factory).open() as engine:
        engine.create_collection("pics")
        engine.run_job(engine.submit("pics", [IngestItem.upload(image_bytes("red", (40, 30), seed=1), "a.png")]))
        assert len(engine.search("pics", image=image_bytes("red", (40, 30), seed=2), k=1)) == 1
        with pytest.raises(InvalidInput, match="frames"):
            engine.search("pics", image=animated_gif(12), k=1)
        with pytest.raises(InvalidInput, match="pixels"):
            engine.search("pics", image=image_bytes("red", (41, 30), seed=2), k=1)


def test_an_image_is_never_indexed_twice(engine: Engine, tmp_path: Path) -> None:
    write_images(tmp_path / "a", 6)
    engine.create_collection("c")
    first = engine.run_job(engine.submit("c", [IngestItem.path(tmp_path / "a")]))
    assert (first.done, first.skipped) == (6, 0)
    again = [IngestItem.path(tmp_path / "a"), IngestItem.upload((tmp_path / "a" / "img_002.png").read_bytes())]
    new = image_bytes("olive", seed=1234)
    twice = [IngestItem.upload(new, "n1.png"), IngestItem.upload(new, "n2.png")]
    second = engine.run_job(engine.submit("c", again + twice))
    assert (second.done, second.skipped, second.failed) == (1, 8, 0)
    assert engine.get_collection("c").images["indexed"] == 7 and len(_consistent(engine, "c")) == 7
    # A deleted image can come back, under a new id (ids are FAISS labels and are never reused).
    (old,) = engine.search("c", image=new, k=1)
    engine.delete_images("c", [old.id])
    third = engine.run_job(engine.submit("c", [IngestItem.upload(new)]))
    (back,) = engine.search("c", image=new, k=1)
    assert third.done == 1 and back.id > old.id


def test_collections_lifecycle(engine: Engine, tmp_path: Path) -> None:
    info = engine.create_collection("one", index_kind="hnsw")
    assert (info.encoder, info.dim, info.index_kind, info.store_kind) == ("internvl-c", 16, "hnsw", "hnsw")
    assert info.checkpoint == str(tiny_checkpoint())
    engine.create_collection("two")
    assert [c.name for c in engine.list_collections()] == ["one", "two"]
    with pytest.raises(Conflict, match="already exists"):
        engine.create_collection("one")
    with pytest.raises(InvalidInput, match="Invalid collection name"):
        engine.create_collection("no spaces")
    with pytest.raises(InvalidInput, match="Unknown index kind"):
        engine.create_collection("three", index_kind="lsh")
    write_images(tmp_path / "p", 3)
    engine.run_job(engine.submit("one", [IngestItem.path(tmp_path / "p")]))
    folder = engine._live_by_name("one").files.root
    assert (folder / "index.ivs").is_file() and any((folder / "originals").rglob("*"))
    engine.delete_collection("one")
    assert not folder.exists() and [c.name for c in engine.list_collections()] == ["two"]
    with pytest.raises(NotFound, match="Available: \\['two'\\]"):
        engine.search("one", text="x")


def test_a_collection_refuses_vectors_of_other_weights(tmp_path: Path, catalog_url: str) -> None:
    from factories import make_tiny_internvl_checkpoint

    from internvl_models import create_encoder

    checkpoint = make_tiny_internvl_checkpoint(tmp_path / "weights", seed=1)
    config = engine_config(tmp_path, catalog_url, encoder_checkpoint=str(checkpoint))
    with Engine(config, create_encoder).open() as engine:
        engine.create_collection("c")
    make_tiny_internvl_checkpoint(checkpoint, seed=2)  # the same path now holds other weights
    with Engine(config, create_encoder).open() as engine:
        with pytest.raises(Conflict, match="fingerprint"):
            engine.search("c", text="x")
        with pytest.raises(Conflict, match="fingerprint"):
            engine.submit("c", [IngestItem.upload(image_bytes())])


def test_refuses_an_out_of_date_schema(tmp_path: Path, catalog_url: str) -> None:
    config = engine_config(tmp_path, catalog_url)
    from indexer.catalog import migrate

    migrate.downgrade(catalog_url, "base")
    with pytest.raises(SchemaNotCurrent, match="run `internvl-search db upgrade`"):
        Engine(config).open()


def test_cancel_and_bad_items(engine: Engine, tmp_path: Path) -> None:
    engine.create_collection("c")
    job = engine.submit("c", [IngestItem.upload(image_bytes())], start=False)
    assert engine.cancel_job(job).state == "cancelled"
    assert engine.run_job(job).done == 0 and engine.get_collection("c").vectors == 0
    with pytest.raises(InvalidInput, match="nothing to ingest"):
        engine.submit("c", [])
    with pytest.raises(InvalidInput, match="metadata must be a JSON object"):
        engine.submit("c", [IngestItem.upload(b"x", metadata=["not", "an", "object"])])
    with pytest.raises(InvalidInput, match="not JSON-serialisable"):
        engine.submit("c", [IngestItem.path("/x", metadata={"when": object()})])
    # Only the engine names the files an upload reads; a caller cannot smuggle a server path in as one.
    with pytest.raises(InvalidInput, match="an upload needs its bytes"):
        engine.submit("c", [IngestItem("upload", ref="/etc/passwd")])
    with pytest.raises(InvalidInput, match="takes a path or URL, not bytes"):
        engine.submit("c", [IngestItem("path", ref="/x", data=b"x")])
    assert json.dumps([j.state for j in engine.list_jobs("c")]) == '["cancelled"]'


def test_two_engines_share_a_data_directory(tmp_path: Path, catalog_url: str) -> None:
    # Two Engine objects lock the collection through separate file descriptors, exactly as two processes would
    # (a server and a CLI `index`): each sees the other's writes and never blocks a reader on the other's writer.
    write_images(tmp_path / "p", 6)
    config = engine_config(tmp_path, catalog_url, index_save_interval_s=3600.0)
    with Engine(config, cached_encoder_factory).open() as a, Engine(config, cached_encoder_factory).open() as b:
        a.create_collection("c")
        assert b.search("c", text="x") == []
        a.run_job(a.submit("c", [IngestItem.path(tmp_path / "p")], start=False))
        assert len(b.search("c", text="x", k=10)) == 6  # restored from a's embedding shards
        gone = b.search("c", text="x", k=1)[0].id
        b.delete_images("c", [gone])
        assert gone not in {h.id for h in a.search("c", text="x", k=10)}
        writer = a._live_by_name("c").lock
        with writer:  # a is "writing": b keeps answering from what it has
            assert len(b.search("c", text="x", k=10)) == 5
        _consistent(a, "c")
        _consistent(b, "c")


@pytest.mark.parametrize("reduce", [True, False])
def test_large_jpegs_are_decoded_for_the_encoder_input(tmp_path: Path, reduce: bool) -> None:
    """With `reduce_jpeg_decode` (the default) a large JPEG is embedded from a reduced decode, by ingestion and by an
    image query alike, while the catalog keeps its real size; turned off, from every pixel."""
    from factories import photo_jpeg
    from PIL import Image

    from indexer.pipeline.decode import decode_image

    data = photo_jpeg((1200, 900), seed=5, orientation=6)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with Engine(engine_config(tmp_path, url, reduce_jpeg_decode=reduce), cached_encoder_factory).open() as engine:
        engine.create_collection("photos")
        engine.run_job(engine.submit("photos", [IngestItem.upload(data, "big.jpg")]))
        encoder = engine.collection_encoder("photos")
        limits = {"max_pixels": 10**8, "max_frames": 1}
        reduced = decode_image(data, **limits, reduce_for=encoder.info.image_size).image
        assert max(reduced.size) < 1200 / 2  # the tiny encoder's 56 px input: decoded at 1/4
        expected, other = encoder.encode_images([reduced, decode_image(data, **limits).image])
        if not reduce:
            expected, other = other, expected
        assert float(expected @ other) < 1 - 1e-5  # the two decodes give vectors this test tells apart
        ((hit,),) = engine.search_vectors("photos", expected[None], [NearestQuery(k=1)])
        assert hit.score == pytest.approx(1.0, abs=1e-6) and (hit.width, hit.height) == (900, 1200)
        (by_image,) = engine.search("photos", image=data, k=1)  # the query decodes as ingestion did
        assert by_image.score == pytest.approx(1.0, abs=1e-6)
        assert Image.open(engine.image_path("photos", hit.id)).size == (1200, 900)  # the original, untouched


def test_a_search_by_an_indexed_image_uses_the_vector_its_index_holds(tmp_path: Path, catalog_url: str) -> None:
    """No stored original is needed (storage "none"), none is decoded and no encoder runs: the hits of a search by
    the image's own bytes, itself excluded."""
    photos = write_images(tmp_path / "photos", 8)
    with Engine(engine_config(tmp_path, catalog_url), cached_encoder_factory).open() as engine:
        engine.create_collection("bare", storage="none")
        engine.run_job(engine.submit("bare", [IngestItem.path(p) for p in photos]))
        by_bytes = engine.search("bare", image=photos[3].read_bytes(), k=8)
        top = by_bytes[0]
        assert top.source == str(photos[3].resolve())
        with pytest.raises(NotFound, match="not stored"):
            engine.image_path("bare", top.id)
        encoder_of = engine._collection_encoder
        engine._collection_encoder = lambda live: pytest.fail("a search by id needs no encoder")
        by_id = engine.search("bare", image_id=top.id, k=7)
        engine._collection_encoder = encoder_of
        assert [(h.id, pytest.approx(h.score, abs=1e-5)) for h in by_bytes[1:]] == [(h.id, h.score) for h in by_id]
        engine.delete_images("bare", [top.id])
        with pytest.raises(NotFound):
            engine.search("bare", image_id=top.id, k=3)
