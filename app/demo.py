"""The embedded demo behind `make run`: a shapes-world corpus indexed with the default encoder, then searched.

Everything here runs on the embedded defaults (no downloads): the shipped shapes-world InternVL-C checkpoint, a
SQLite catalog and FAISS files in the data dir. A second run finds the collection filled and only searches.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from indexer import Engine, IngestItem, NotFound
from internvl_models import CheckpointError
from internvl_models.shapes_world import Mention, query_for, write_demo_corpus

DEMO_COLLECTION = "demo"
# One query per language; the phrases come from the shapes world's own grammar tables, so they are well formed.
EXAMPLE_QUERIES = [
    (Mention("red", "circle"), "en"),
    (Mention("blue", "square"), "de"),
    (Mention("green", "star"), "fr"),
    (Mention("yellow", "triangle"), "es"),
    (Mention("purple", "hexagon"), "zh"),
    (Mention("orange", "star"), "ja"),
]


def prepare_demo(engine: Engine, data_dir: Path, scenes: int, photos: Path | None, echo: Callable[[str], None]) -> bool:
    """Create and fill the demo collection unless it already holds images; False when the default encoder's
    weights cannot be had (then the service runs without the demo collection)."""
    try:
        info = engine.get_collection(DEMO_COLLECTION)
        if info.images.get("indexed", 0) > 0:
            echo(f"collection {DEMO_COLLECTION!r} already holds {info.images['indexed']} images")
            return True
    except NotFound:
        try:
            engine.create_collection(DEMO_COLLECTION)
        except CheckpointError as exc:
            echo(
                f"no demo collection: the default encoder's weights are not available here ({exc}). "
                "Set INTERNVL_SEARCH_ENCODER_CHECKPOINT to a local checkpoint directory."
            )
            return False
    corpus = data_dir / "demo-corpus"
    echo(f"writing {scenes} shapes-world scenes to {corpus} ...")
    manifest = write_demo_corpus(corpus, scenes)
    # Absolute: a server-side path must be, and the data dir is relative by default ("./data", as `make run` has it).
    items, roots = [IngestItem.manifest(manifest.resolve())], [corpus.resolve()]
    if photos is not None and photos.is_dir():
        items.append(IngestItem.path(photos.resolve()))
        roots.append(photos.resolve())
    job_id = engine.submit(DEMO_COLLECTION, items, extra_roots=roots, start=False)
    info = engine.run_job(job_id)
    echo(f"indexed: added {info.done}, duplicates {info.skipped}, failed {info.failed} (job {info.id})")
    return True


def example_searches(engine: Engine, echo: Callable[[str], None], k: int = 3) -> None:
    """Print the top hits of one query per language, each with the English caption of the scene it found."""
    for mention, language in EXAMPLE_QUERIES:
        query = query_for(mention, language).text
        echo(f"\n  [{language}] {query}")
        for rank, hit in enumerate(engine.search(DEMO_COLLECTION, text=query, k=k), 1):
            echo(f"     {rank}. {hit.score:.3f}  {_describe(hit.metadata) or hit.source}")


def _describe(metadata: dict) -> str:
    caption = (metadata.get("captions") or {}).get("en") or {}
    return caption.get("text", "") if isinstance(caption, dict) else str(caption)
