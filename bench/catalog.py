"""The catalog reads of one search: the collection's state (is the loaded index current?) and its 10 hits' rows,
each in its own session as the engine runs them, read as mapped objects with the statement built per call
(`repo.get_collection`, `repo.get_images`: the before) and as plain column rows from statements built once
(`reads.collection_state`, `reads.image_hit_rows`: what the search path uses). Timed in interleaved turns in one
process, on SQLite and, with `--database-url`, on PostgreSQL.

    python -m bench.catalog
    python -m bench.catalog --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench   # an empty database
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from indexer.catalog import migrate, reads, repo
from indexer.catalog.db import make_engine, make_sessionmaker, session_scope


def measure(url: str, turns: int, calls: int) -> dict[str, object]:
    migrate.upgrade(url)
    db = make_engine(url)
    sessions = make_sessionmaker(db)
    collection_id = None
    try:
        with session_scope(sessions) as session:
            collection = repo.create_collection(session, name="bench-catalog", encoder="internvl-c", dim=768,
                                                fingerprint="0" * 64)  # fmt: skip
            rows = [repo.NewImage(sha256=f"{i:064x}", source=f"bench/{i}.jpg", width=640, height=480, format="JPEG",
                                  byte_size=1, meta={"i": i, "tag": "bench"}) for i in range(1000)]  # fmt: skip
            collection_id = collection.id
            ids = [ref.id for ref in repo.add_images(session, collection_id, rows)][::97][:10]

        def in_session(read: Callable) -> Callable[[], object]:  # noqa: ANN202
            def run() -> object:
                with session_scope(sessions) as session:
                    return read(session)

            return run

        variants = {
            "collection_mapped": in_session(lambda s: repo.get_collection(s, "bench-catalog")),
            "collection_columns": in_session(lambda s: reads.collection_state(s, "bench-catalog")),
            "hits_mapped": in_session(lambda s: repo.get_images(s, ids)),
            "hits_columns": in_session(lambda s: reads.image_hit_rows(s, ids)),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            fn()
        for _ in range(turns):
            for name, fn in variants.items():
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                times[name].append((time.perf_counter() - start) / calls * 1e3)
        ms = {name: round(statistics.median(t), 3) for name, t in times.items()}
        return {
            "backend": db.dialect.name,
            **{f"{name}_ms": value for name, value in ms.items()},
            "per_search_saved_ms": round(
                ms["collection_mapped"] + ms["hits_mapped"] - ms["collection_columns"] - ms["hits_columns"], 3
            ),
        }
    finally:
        if collection_id is not None:
            with session_scope(sessions) as session:
                repo.delete_collection(session, collection_id)
        db.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="also measure on this (empty, migratable) PostgreSQL database")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--calls", type=int, default=50, help="calls of each read per turn")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(f"sqlite:///{Path(tmp) / 'catalog.db'}", args.turns, args.calls)]
    if args.database_url:
        results.append(measure(args.database_url, args.turns, args.calls))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
