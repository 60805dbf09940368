"""Run (or resume) one ingestion job and SIGKILL this very process at a chosen point; used by test_jobs_resume and
test_crash_safety.

    python crash_ingest.py DATA_DIR DB_URL CHECKPOINT IMAGES --kill-at KIND:N [--save-interval S]

KIND:N is one of
  encode:N       as the N-th encoder batch of this run starts;
  original:N     right after the N-th original image is stored (in a decode thread, ahead of its batch's commit);
  embeddings:N   right after the N-th embedding shard is durable, before its transaction commits;
  commit:N       inside the N-th batch transaction, everything written, just before COMMIT;
  committed:N    once N items of this run are settled and committed (before the throttled index save);
  save:N         half-way through writing the N-th index file save (the temporary file, before its rename);
  never          runs to the end.
The kill is a real SIGKILL: no finally blocks, no atexit, no flush. Everything is passed as arguments; nothing is
read from the environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from indexer import Engine, EngineConfig, IngestItem, NotFound
from indexer.catalog import repo
from indexer.storage import OriginalStore
from indexer.vector_store import EmbeddingStore


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _die_after(function, limit: int):  # noqa: ANN001, ANN202
    """`function`, killing the process right after its `limit`-th call returns (calls may come from any thread)."""
    calls = [0]
    lock = threading.Lock()

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = function(*args, **kwargs)
        with lock:
            calls[0] += 1
            if calls[0] == limit:
                die()
        return result

    return wrapper


def _die_mid_save(limit: int) -> None:
    """Kill during the `limit`-th index save, after half of the new file's bytes reached its temporary file."""
    from indexer.vector_store import base

    atomic_write, saves = base.atomic_write, [0]

    def half_then_die(path: Path, chunks) -> None:  # noqa: ANN001
        if path.suffix != ".ivs":
            return atomic_write(path, chunks)
        saves[0] += 1
        if saves[0] < limit:
            return atomic_write(path, chunks)
        data = b"".join(bytes(c) for c in chunks)
        fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.write(fd, data[: len(data) // 2])
        os.fsync(fd)
        die()

    base.atomic_write = half_then_die


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("data_dir", "db_url", "checkpoint", "images"):
        parser.add_argument(name)
    parser.add_argument("--kill-at", default="never")
    parser.add_argument("--save-interval", type=float, default=3600.0)
    args = parser.parse_args()
    where, _, count = args.kill_at.partition(":")
    limit = int(count or 0)
    config = EngineConfig(
        data_dir=Path(args.data_dir),
        database_url=args.db_url,
        encoder="internvl-c",
        encoder_checkpoint=args.checkpoint,
        device="cpu",
        allowed_roots=(Path(args.images).resolve(),),
        image_batch_size=4,
        decode_workers=2,
        index_save_interval_s=args.save_interval,  # 3600: the saved index lags the catalog, as after a real crash
    )
    engine = Engine(config).open(resume_jobs=False)
    try:
        engine.get_collection("c")
    except NotFound:
        engine.create_collection("c")
    pending = engine.list_jobs("c", states=["queued", "running"])
    job_id = pending[0].id if pending else engine.submit("c", [IngestItem.path(args.images)], start=False)
    print(f"job {job_id}", flush=True)
    calls = [0]
    if where == "encode":
        encoder = engine.encoder()
        original = encoder.encode_pixels

        def encode(pixels):  # noqa: ANN001, ANN202
            calls[0] += 1
            if calls[0] == limit:
                die()
            return original(pixels)

        encoder.encode_pixels = encode
    elif where == "embeddings":
        EmbeddingStore.append = _die_after(EmbeddingStore.append, limit)
    elif where == "original":
        OriginalStore.put = _die_after(OriginalStore.put, limit)
    elif where == "commit":
        repo.record_item_outcomes = _die_after(repo.record_item_outcomes, limit)
    elif where == "save":
        _die_mid_save(limit)
    before = engine.get_job(job_id).processed

    def progress(info) -> None:  # noqa: ANN001 - called after each committed batch
        if where == "committed" and info.processed - before >= limit:
            die()

    info = engine.run_job(job_id, progress=progress)
    print(f"finished {info.state} {info.done} {info.skipped} {info.failed}", flush=True)
    engine.close()


if __name__ == "__main__":
    sys.exit(main())
