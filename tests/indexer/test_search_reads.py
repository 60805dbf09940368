"""The search path's catalog reads, on SQLite and PostgreSQL with the tiny real encoder: a filtered search reads
the collection's row on one connection, then its filter ids and its hits' rows on a second (each checkout of a
PostgreSQL connection costs a liveness ping, and each transaction a BEGIN and a COMMIT round trip)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import cached_encoder_factory, engine_config, image_bytes
from sqlalchemy import event

from indexer import Engine, IngestItem


@pytest.fixture
def engine(tmp_path: Path, catalog_url: str) -> Iterator[Engine]:
    with Engine(engine_config(tmp_path, catalog_url), cached_encoder_factory).open() as engine:
        engine.create_collection("pics")
        for colour in ("red", "blue"):
            items = [IngestItem.upload(image_bytes(colour, seed=i), f"{colour}{i}.png") for i in range(4)]
            engine.run_job(engine.submit("pics", items, metadata={"kind": colour}, start=False))
        engine.search("pics", text="warm-up", k=1)  # loads the collection: what follows is the steady state
        yield engine


def test_a_filtered_search_reads_on_two_connections(engine: Engine) -> None:
    db = engine.sessions.kw["bind"]
    checkouts: list[object] = []
    statements: list[str] = []

    def on_checkout(dbapi_connection: object, _record: object, _proxy: object) -> None:
        checkouts.append(dbapi_connection)

    def before_execute(_conn, _cursor, statement: str, *_args: object) -> None:  # noqa: ANN001 - Connection
        statements.append(statement.split()[0].upper())

    event.listen(db, "checkout", on_checkout)
    event.listen(db, "before_cursor_execute", before_execute)
    try:
        hits = engine.search("pics", text="a red square", k=3, filter={"kind": "red"})
    finally:
        event.remove(db, "checkout", on_checkout)
        event.remove(db, "before_cursor_execute", before_execute)
    assert len(hits) == 3 and {hit.metadata["kind"] for hit in hits} == {"red"}
    assert len(checkouts) == 2, statements
    assert set(statements) == {"SELECT"}, statements
