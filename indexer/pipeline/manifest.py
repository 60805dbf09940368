"""Manifests: JSONL (one object per line) or CSV, one image per row, a location column plus metadata columns.

The location is the first of `LOCATION_KEYS` present: an http(s) URL, an absolute server path, or a path relative
to the manifest's own folder. Every other column is metadata (a JSONL `metadata` object is merged in). CSV cells
that parse as numbers become numbers, so range filters work on them. A bad row becomes one failed item with the
line number in its reason; the rest of the manifest still runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from indexer.errors import InvalidInput
from indexer.metadata import check_metadata
from indexer.pipeline.flow import ItemSpec
from indexer.pipeline.paths import SourceError, is_directory, read_file

LOCATION_KEYS = ("path", "url", "source", "src", "image")
MAX_MANIFEST_BYTES = 2**30


def manifest_items(spec: ItemSpec, roots: Sequence[Path], plan: Callable) -> Iterator[ItemSpec]:
    """One spec per manifest row (directories named in it expanded by `plan`); bad rows become invalid items."""
    try:
        data = Path(spec.ref).read_bytes() if spec.name == "upload" else read_file(spec.ref, roots, MAX_MANIFEST_BYTES)
        text = data.decode("utf-8-sig")
    except (SourceError, OSError, UnicodeDecodeError) as exc:
        yield ItemSpec("invalid", spec.ref, reason=f"cannot read manifest: {exc}")
        return
    base = None if spec.name == "upload" else Path(spec.ref).parent
    for line_no, row in _manifest_rows(text):
        item = _row_toItemSpec(row, base, line_no, spec.meta)
        if item.kind == "path" and is_directory(item.ref, roots) is not None:
            yield from plan([item], roots)
        else:
            yield item


def check_manifest_bytes(data: bytes) -> None:
    """Refuse (InvalidInput) uploaded bytes that cannot be a manifest: too large, empty, not UTF-8 text, a CSV
    without a location column or without rows. Bad rows are not refused here: each becomes one failed item."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidInput(f"the manifest has {len(data):,} bytes; the limit is {MAX_MANIFEST_BYTES:,}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise InvalidInput("the manifest is not UTF-8 text: send JSONL (one JSON object a line) or CSV")
    if not text.strip():
        raise InvalidInput("the manifest is empty")
    if text.lstrip().startswith(("{", "[")):
        return
    try:
        reader = csv.reader(io.StringIO(text))
        header, has_rows = next(reader, []), any(any(cell.strip() for cell in row) for row in reader)
    except csv.Error as exc:
        raise InvalidInput(f"the manifest is not valid CSV: {exc}") from None
    if not set(header) & set(LOCATION_KEYS):
        raise InvalidInput(
            f"the manifest is neither JSONL nor CSV whose header names a location column (one of {list(LOCATION_KEYS)});"
            f" its first line is {text.lstrip().splitlines()[0][:80]!r}"
        )
    if not has_rows:
        raise InvalidInput("the CSV manifest has a header but no rows")


def _manifest_rows(text: str) -> Iterator[tuple[int, Any]]:
    if text.lstrip().startswith(("{", "[")):
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield line_no, json.loads(line)
                except ValueError as exc:
                    yield line_no, f"invalid JSON: {exc}"
        return
    for line_no, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
        yield line_no, {k: _csv_value(v) for k, v in row.items() if k and v not in (None, "")}


def _csv_value(cell: str) -> Any:
    # CSV has no types; numbers become numbers so that range filters ({"year": {"gte": 2000}}) work on them.
    # "nan" and "inf" stay text: JSON (and so the catalog) has no such numbers.
    for convert in (int, float):
        try:
            value = convert(cell)
        except ValueError:
            continue
        return cell if isinstance(value, float) and not math.isfinite(value) else value
    return cell


def _row_toItemSpec(row: Any, base: Path | None, line_no: int, inherited: dict[str, Any]) -> ItemSpec:
    where = f"manifest line {line_no}"
    if not isinstance(row, dict):
        return ItemSpec("invalid", where, reason=row if isinstance(row, str) else "a row must be a JSON object")
    key = next((k for k in LOCATION_KEYS if isinstance(row.get(k), str) and row[k]), None)
    if key is None:
        return ItemSpec("invalid", where, reason=f"no location column (one of {list(LOCATION_KEYS)})")
    location = row[key]
    nested = row.get("metadata")
    meta = {**inherited, **{k: v for k, v in row.items() if k not in (*LOCATION_KEYS, "metadata")}}
    if isinstance(nested, dict):
        meta.update(nested)
    try:
        meta = check_metadata(meta, f"{where} metadata")
    except InvalidInput as exc:
        return ItemSpec("invalid", where, reason=str(exc))
    if len(location) > 4096 or "\x00" in location:
        return ItemSpec("invalid", where, reason="a path or URL must be at most 4,096 characters without NUL")
    if location.startswith(("http://", "https://")) or "://" in location:
        return ItemSpec("url", location, meta=meta)
    path = Path(location)
    if not path.is_absolute():
        if base is None:
            return ItemSpec("invalid", location, reason="relative paths need a manifest stored on the server")
        path = base / path
    return ItemSpec("path", str(path), meta=meta)
