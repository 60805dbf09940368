"""Caps on image metadata, the one free-form JSON a caller stores in the catalog.

Metadata reaches the catalog from index requests, manifests (JSONL objects, CSV cells) and metadata updates. Each
path runs `check_metadata` before anything is written, so every refusal is a clear `InvalidInput` (a 422, or a
failed ledger row for a manifest line) and never a database error later:

- an object with string keys, at most `MAX_METADATA_BYTES` as compact JSON and `MAX_METADATA_DEPTH` levels deep:
  metadata is copied into every image row, returned with every hit and read by filters, so its size multiplies;
  SQLite's JSON functions also refuse documents nested more than 1000 levels, which would fail filtered searches;
- finite numbers only (JSON has no NaN or Infinity; PostgreSQL's jsonb refuses them);
- no NUL character in any key or string (PostgreSQL text and jsonb cannot hold one).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from indexer.errors import InvalidInput

MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 8


def check_metadata(meta: Mapping[str, Any] | None, what: str = "metadata") -> dict[str, Any]:
    """`meta` as a plain dict when it is acceptable; `InvalidInput` naming the first problem otherwise."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise InvalidInput(f"{what} must be a JSON object, got {type(meta).__name__}")
    _check_tree(meta, what)
    try:
        size = len(json.dumps(meta, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidInput(f"{what} is {size:,} bytes as JSON; the limit is {MAX_METADATA_BYTES:,}")
    return dict(meta)


def _check_tree(root: Mapping[str, Any], what: str) -> None:
    # Iterative, so a document nested thousands of levels deep is refused instead of exhausting the stack.
    pending: list[tuple[Any, int]] = [(root, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, Mapping | list | tuple):
            if depth > MAX_METADATA_DEPTH:
                raise InvalidInput(f"{what} is nested more than {MAX_METADATA_DEPTH} levels deep")
            if isinstance(value, Mapping):
                for key in value:
                    if not isinstance(key, str):
                        raise InvalidInput(f"{what} keys must be strings, got {type(key).__name__}")
                    _check_string(key, what)
                children = value.values()
            else:
                children = value
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(value, str):
            _check_string(value, what)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"{what} holds {value}, which JSON cannot represent; use a finite number or a string")


def _check_string(text: str, what: str) -> None:
    if "\x00" in text:
        raise InvalidInput(f"{what} may not contain the NUL character (\\u0000)")
