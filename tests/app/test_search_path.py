"""The search path against a real engine (tiny encoder, SQLite, FAISS): a search looks the collection up in the
catalog once, no more searches run at once than `search_threads`, and a batched text query encoded with an encoder
the collection no longer uses is encoded again, not answered from the wrong space."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "indexer"))
from hostile import cached_encoder_factory, engine_config, image_bytes  # noqa: E402

from app.deps import Searcher  # noqa: E402
from app.schemas import SearchRequest  # noqa: E402
from app.settings import load_settings  # noqa: E402
from indexer import Engine, IngestItem  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("concurrency")
    with Engine(engine_config(root, f"sqlite:///{root / 'catalog.db'}"), cached_encoder_factory).open() as engine:
        engine.create_collection("pics")
        items = [IngestItem.upload(image_bytes("red", (40, 30), seed=i), f"{i}.png") for i in range(6)]
        engine.run_job(engine.submit("pics", items, start=False))
        yield engine


class Overlap:
    """Wraps a method of the engine: counts how many calls run at once (each made to last 50 ms)."""

    def __init__(self, engine: Engine, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.running = self.most = self.calls = 0
        self._lock = threading.Lock()
        real = getattr(engine, name)

        def counted(*args: object, **kwargs: object) -> object:
            with self._lock:
                self.running += 1
                self.calls += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(0.05)
                return real(*args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        monkeypatch.setattr(engine, name, counted)


def run_searches(searcher: Searcher, texts: list[str]) -> list:
    async def all_at_once() -> list:
        return await asyncio.gather(*(searcher.search(SearchRequest(collection="pics", text=t, k=3)) for t in texts))

    try:
        return asyncio.run(all_at_once())
    finally:
        searcher.close()


def collection_lookups(engine: Engine, search: object) -> int:
    """How many statements reading the collections table `search()` runs."""
    statements: list[str] = []

    def record(conn, cursor, statement: str, *args: object) -> None:  # noqa: ANN001 - SQLAlchemy's event signature
        statements.append(statement)

    bind = engine.sessions.kw["bind"]
    event.listen(bind, "before_cursor_execute", record)
    try:
        search()
    finally:
        event.remove(bind, "before_cursor_execute", record)
    return sum("FROM collections" in s for s in statements)


def test_a_search_looks_the_collection_up_once(engine: Engine) -> None:
    # The encoder lookup and the search each looked it up (two catalog queries per search before).
    assert collection_lookups(engine, lambda: engine.search("pics", text="a red square", k=3)) == 1
    searcher = Searcher(engine, load_settings(), batching=False)
    assert collection_lookups(engine, lambda: run_searches(searcher, ["a red square"])) == 1


def test_no_more_searches_run_at_once_than_search_threads(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    overlap = Overlap(engine, "_nearest_hits", monkeypatch)  # where each unbatched search ends, on a pool thread
    searcher = Searcher(engine, load_settings(search_threads=2), batching=False)
    answers = run_searches(searcher, [f"query {i}" for i in range(8)])
    assert [len(a.results) for a in answers] == [3] * 8
    assert overlap.calls == 8 and overlap.most == 2  # 8 waited for 2 threads (anyio's default pool has 40)


def test_batched_text_searches_are_searched_together(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries that wait for the batcher meanwhile are encoded in one pass and searched in one call of the engine
    (one catalog look, one store search, one read of the rows), on the batcher's thread; each gets the answer it
    gets alone, with its own k, offset and filter."""
    texts = [f"query {i}" for i in range(8)]
    asks = [dict(k=1 + i % 3, offset=i % 2) for i in range(8)]
    asks[5]["filter"] = {"no_such_key": {"exists": True}}  # matches no image: an empty answer, the others unharmed
    alone = [[h.id for h in engine.search("pics", text=t, **ask)] for t, ask in zip(texts, asks, strict=True)]
    overlap = Overlap(engine, "_nearest_hits", monkeypatch)
    searcher = Searcher(engine, load_settings(search_threads=2), batching=True)
    searcher._encoders["pics"] = engine.collection_encoder("pics")  # known: every query goes to the batcher at once

    async def all_at_once() -> list:
        requests = [SearchRequest(collection="pics", text=t, **ask) for t, ask in zip(texts, asks, strict=True)]
        return await asyncio.gather(*(searcher.search(r) for r in requests))

    try:
        answers = asyncio.run(all_at_once())
    finally:
        searcher.close()
    assert [[h.id for h in a.results] for a in answers] == alone
    assert alone[5] == [] and all(alone[i] for i in range(8) if i != 5)
    # The worker takes what is queued when it wakes (the first query, or more); the rest form the next batch.
    assert overlap.calls <= 2 and overlap.most == 1


def test_a_batched_query_learns_the_encoder_once_and_encodes_again_after_a_switch(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from factories import make_tiny_internvl_checkpoint

    expected = [h.id for h in engine.search("pics", text="a red square", k=3)]
    lookups = Overlap(engine, "collection_encoder", monkeypatch)
    searcher = Searcher(engine, load_settings(), batching=True)
    first = run_searches(searcher, ["a red square"])
    again = run_searches(searcher, ["a red square"] * 3)
    assert lookups.calls == 1  # later batched queries use the encoder the collection was last searched with
    assert [[h.id for h in a.results] for a in (*first, *again)] == [expected] * 4
    # As if the collection had switched encoders since: the query encoded in the other space is refused by the
    # search (SpaceChanged) and encoded again with the collection's encoder, at the cost of one more lookup.
    other = cached_encoder_factory("internvl-c", make_tiny_internvl_checkpoint(tmp_path / "other", seed=7))
    assert other.fingerprint != engine.collection_encoder("pics").fingerprint
    searcher._encoders["pics"] = other
    switched = run_searches(searcher, ["a red square"])
    assert [h.id for h in switched[0].results] == expected
    assert searcher._encoders["pics"].fingerprint == engine.collection_encoder("pics").fingerprint


def test_concurrent_image_queries_share_a_pass_and_get_their_own_answers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image searches, batched: each image is fetched and decoded on its own, the pixels of those waiting are
    encoded in one pass, and every answer is what the same search gets alone."""
    import base64

    images = [base64.b64encode(image_bytes(colour, (40, 30), seed=i)).decode() for i, colour in
              enumerate(["red", "blue", "green", "red", "white", "black", "red", "blue"])]  # fmt: skip
    alone = [[h.id for h in engine.search("pics", image=base64.b64decode(b), k=3)] for b in images]
    encoder = engine.collection_encoder("pics")
    passes: list[tuple[int, str]] = []
    real = encoder.encode_pixels

    def counted(pixels):  # noqa: ANN001, ANN202 - a (B, 3, S, S) tensor
        passes.append((len(pixels), threading.current_thread().name))
        time.sleep(0.05)  # a pass takes time, so the other queries wait and join the next one
        return real(pixels)

    monkeypatch.setattr(encoder, "encode_pixels", counted)
    searcher = Searcher(engine, load_settings(), batching=True)

    async def search(batch: list[str]) -> list:
        requests = [SearchRequest(collection="pics", image_base64=b, k=3) for b in batch]
        return await asyncio.gather(*(searcher.search(r) for r in requests))

    try:
        lone = asyncio.run(search(images[:1]))
        assert len(passes) == 1 and not passes[0][1].startswith("batcher-")  # encoded on its own pool thread
        passes.clear()
        answers = asyncio.run(search(images))
    finally:
        searcher.close()
    assert [[h.id for h in a.results] for a in (*lone, *answers)] == [alone[0], *alone]
    sizes = [size for size, _ in passes]
    assert sum(sizes) == len(images) and len(sizes) < len(images), passes


def test_a_batch_over_two_collections_fails_only_the_searches_of_a_missing_one(engine: Engine) -> None:
    from app.deps import BatchedSearch
    from indexer import NotFound
    from indexer.search import NearestQuery

    searcher = Searcher(engine, load_settings(), batching=True)
    encoder = engine.collection_encoder("pics")
    want = NearestQuery(k=2)
    searches = [BatchedSearch("pics", "a red square", want), BatchedSearch("gone", "a red square", want),
                BatchedSearch("pics", "a blue square", NearestQuery(k=1, offset=1))]  # fmt: skip
    try:
        found = searcher._encode_and_search(encoder, "text", searches)
    finally:
        searcher.close()
    assert [h.id for h in found[0]] == [h.id for h in engine.search("pics", text="a red square", k=2)]
    assert isinstance(found[1], NotFound) and "gone" in str(found[1])
    assert [h.id for h in found[2]] == [h.id for h in engine.search("pics", text="a blue square", k=1, offset=1)]
