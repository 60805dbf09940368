"""Files under the data directory: one folder per collection (index, embeddings, originals), job staging, locks.

    <data_dir>/collections/<id>/index.ivs          the saved vector store (derived; rebuilt when absent or corrupt)
    <data_dir>/collections/<id>/embeddings/        durable float16 embedding shards (EmbeddingStore)
    <data_dir>/collections/<id>/spaces/<g>/        index.ivs + embeddings/ of generation g > 0 (an encoder switch)
    <data_dir>/collections/<id>/originals/ab/<sha>  each original image (or its reduced copy), by the original's sha256
    <data_dir>/collections/<id>/collection.json    legacy (before catalog revision 0002): the encoder checkpoint
    <data_dir>/collections/<id>/write.lock         flock: one writing process per collection (and host; across hosts
                                                   the PostgreSQL advisory lock of catalog/locks.py)
    <data_dir>/jobs/<job id>/                      uploads staged until their job ends

Collection ids are never reused (see catalog/tables.py), so a folder left behind by an interrupted delete can never
be mistaken for a new collection's; `remove_orphans` sweeps them at start-up.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from indexer.vector_store.base import fsync_dir
from indexer.vector_store.sharded import remove_store_files


class CollectionFiles:
    """Paths of one collection's files; `index_path` and `embeddings_dir` are those of the serving `generation`.

    Generation 0 lives in the collection folder itself (the layout before encoder switches existed); generation
    g > 0 in `spaces/<g>/`. Originals and the writer lock are shared by every generation.
    """

    def __init__(self, data_dir: Path, collection_id: int, generation: int = 0) -> None:
        self.root = Path(data_dir) / "collections" / str(int(collection_id))
        self.generation = int(generation)
        self.originals = OriginalStore(self.root / "originals")
        self.legacy_info_path = self.root / "collection.json"
        self.lock_path = self.root / "write.lock"

    @property
    def index_path(self) -> Path:
        return self.index_path_of(self.generation)

    @property
    def embeddings_dir(self) -> Path:
        return self.embeddings_dir_of(self.generation)

    def generation_dir(self, generation: int) -> Path:
        return self.root if int(generation) == 0 else self.root / "spaces" / str(int(generation))

    def index_path_of(self, generation: int) -> Path:
        return self.generation_dir(generation) / "index.ivs"

    def embeddings_dir_of(self, generation: int) -> Path:
        return self.generation_dir(generation) / "embeddings"

    def remove_generation(self, generation: int) -> None:
        """Delete one generation's index and embeddings (never the originals or another generation)."""
        if int(generation) == 0:
            remove_store_files(self.index_path_of(0))  # the index and an on-disk store's shard files
            _remove_tree(self.embeddings_dir_of(0))
        else:
            _remove_tree(self.generation_dir(generation))

    def remove_unused_generations(self, in_use: Iterable[int]) -> list[int]:
        """Delete the files of generations nothing refers to (left by a crash between a catalog commit and the
        file removal that followed it); returns the generations removed."""
        keep = {int(g) for g in in_use}
        found = [int(p.name) for p in (self.root / "spaces").glob("*") if p.name.isdigit()]
        if (self.index_path_of(0).exists() or self.embeddings_dir_of(0).exists()) and 0 not in keep:
            found.append(0)
        removed = [g for g in found if g not in keep]
        for generation in removed:
            self.remove_generation(generation)
        return removed

    def legacy_checkpoint(self) -> str | None:
        """The checkpoint recorded in collection.json by versions before the catalog had a column for it."""
        try:
            checkpoint = json.loads(self.legacy_info_path.read_text()).get("checkpoint")
        except (OSError, ValueError, AttributeError):
            return None
        return checkpoint if isinstance(checkpoint, str) and checkpoint else None

    def remove(self) -> None:
        """Delete every file of the collection: renamed aside first, so a crash never leaves half a folder in use."""
        if not self.root.exists():
            return
        trash = self.root.with_name(f".deleted-{self.root.name}")
        os.replace(self.root, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _remove_tree(path: Path) -> None:
    """Rename aside, then delete: a crash never leaves half a folder under its real name."""
    if not path.exists():
        return
    trash = path.with_name(f".deleted-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_orphans(data_dir: Path, live_ids: Iterable[int]) -> list[Path]:
    """Delete what interrupted collection deletes left behind; returns the folders removed.

    A folder whose id is above every committed collection's may belong to a collection being created right now
    by another process (its row is not committed yet), so only lower ids and renamed-aside trash are swept.
    """
    base = Path(data_dir) / "collections"
    if not base.is_dir():
        return []
    keep = {int(i) for i in live_ids}
    newest = max(keep, default=0)
    removed = []
    for path in base.iterdir():
        stale = path.name.isdigit() and int(path.name) not in keep and int(path.name) <= newest
        if path.is_dir() and (stale or path.name.startswith(".deleted-")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class OriginalStore:
    """Content-addressed original files; writing the same content twice is a no-op."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._unsynced: set[Path] = set()
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, sha256: str, data: bytes) -> Path:
        """Store `data` under its hash: the file content is durable on return, its directory entry after `sync`."""
        path = self.path(sha256)
        if path.is_file() and path.stat().st_size == len(data):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sha256[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._unsynced.add(path.parent)
        return path

    def sync(self) -> None:
        """Make the renames of every `put` since the last sync durable (one fsync per directory, not per file)."""
        with self._lock:
            pending, self._unsynced = self._unsynced, set()
        for directory in pending:
            fsync_dir(directory)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


class WriteLock:
    """One writer per collection: a re-entrant lock within the process, `flock` across processes of this host, and
    (where the catalog is PostgreSQL) the database's advisory lock across hosts (catalog/locks.py).

    A CLI `index` and a running server may share a data directory; without the file lock both would append
    embedding shards with the same sequence numbers. Replicas on several hosts share the directory over a network
    file system whose `flock` may not reach the other hosts; the database lock does.
    """

    # How often a blocking acquire retries the database lock (PostgreSQL has no waiting try-lock with a timeout).
    DB_POLL_S = 0.05

    def __init__(self, path: Path, db_lock: Any = None) -> None:
        self.path = path
        self.db_lock = db_lock  # an AdvisoryLock (try_acquire / release), or None
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        if not self._thread_lock.acquire(blocking=blocking):
            return False
        if self._depth == 0:
            try:
                if not self._acquire_outer(blocking):
                    self._thread_lock.release()
                    return False
            except BaseException:
                self._thread_lock.release()
                raise
        self._depth += 1
        return True

    def _acquire_outer(self, blocking: bool) -> bool:
        """The file lock, then the database lock (always in this order, so two waiters never deadlock)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            while self.db_lock is not None and not self.db_lock.try_acquire():
                if not blocking:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                    return False
                time.sleep(self.DB_POLL_S)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)  # closing the descriptor drops the flock
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            try:
                if self.db_lock is not None:
                    self.db_lock.release()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
        self._thread_lock.release()

    @property
    def held(self) -> bool:
        """True while some thread of this process holds the lock."""
        return self._depth > 0

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def staging_dir(data_dir: Path, job_id: int) -> Path:
    """Where a job's uploaded files wait for the pipeline; removed when the job ends."""
    return Path(data_dir) / "jobs" / str(int(job_id))


def remove_staging(data_dir: Path, job_id: int) -> None:
    shutil.rmtree(staging_dir(data_dir, job_id), ignore_errors=True)


# Longer side of the reduced copy a "thumbnails" collection keeps: above the input size of the encoders it serves
# (224 or 448 px), so re-embedding from it loses little, at a fraction of the original's bytes.
THUMBNAIL_SIDE = 512


def reduced_copy(data: bytes) -> bytes:
    """What a "thumbnails" collection stores for an image it has already decoded once: a JPEG at most
    THUMBNAIL_SIDE pixels on its longer side, upright; an image that is already small enough is kept as it is."""
    import io

    from PIL import Image, ImageOps

    from internvl_models.transforms import reduce_jpeg_decode

    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        if max(image.size) <= THUMBNAIL_SIDE:
            return data
        reduce_jpeg_decode(image, THUMBNAIL_SIDE)
        small = ImageOps.exif_transpose(image).convert("RGB")
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=90)
    return out.getvalue()
