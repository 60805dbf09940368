"""indexer: the engine (collections, ingestion jobs, search) over a SQL catalog and FAISS vector stores.

Names are re-exported lazily, so `from indexer import errors` (the HTTP layer's error mapping) does not import
torch, FAISS and the pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EngineConfig": "indexer.config",
    "CollectionInfo": "indexer.info",
    "Engine": "indexer.engine",
    "ImageInfo": "indexer.info",
    "Busy": "indexer.errors",
    "Conflict": "indexer.errors",
    "CorruptData": "indexer.errors",
    "IndexerError": "indexer.errors",
    "InvalidInput": "indexer.errors",
    "NotFound": "indexer.errors",
    "SchemaNotCurrent": "indexer.errors",
    "SpaceChanged": "indexer.errors",
    "StorageFull": "indexer.errors",
    "ItemFailure": "indexer.jobs",
    "JobInfo": "indexer.jobs",
    "ReconcileReport": "indexer.live",
    "IngestItem": "indexer.pipeline.sources",
    "Hit": "indexer.search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
