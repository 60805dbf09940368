"""Run (or resume) one ingestion job and SIGKILL this very process at a chosen point; used by test_jobs_resume.

    python crash_ingest.py DATA_DIR DB_URL CHECKPOINT IMAGES --kill-at encode:2|embeddings:2|committed:8|never

`encode:N` dies as the N-th encoder batch of this run starts; `embeddings:N` right after the N-th embedding shard
is durable but before its transaction commits; `committed:N` once N items of this run are settled and committed
(before the throttled index save). The kill is a real SIGKILL: no finally blocks, no atexit, no flush.
Everything is passed as arguments; nothing is read from the environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from indexer import Engine, EngineConfig, IngestItem, NotFound
from indexer.vector_store import EmbeddingStore


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("data_dir", "db_url", "checkpoint", "images"):
        parser.add_argument(name)
    parser.add_argument("--kill-at", default="never")
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
        index_save_interval_s=3600.0,  # the saved index lags the catalog, as after a real crash
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
        append = EmbeddingStore.append

        def append_then_die(self, ids, vectors) -> None:  # noqa: ANN001
            append(self, ids, vectors)
            calls[0] += 1
            if calls[0] == limit:
                die()

        EmbeddingStore.append = append_then_die
    before = engine.get_job(job_id).processed

    def progress(info) -> None:  # noqa: ANN001 - called after each committed batch
        if where == "committed" and info.processed - before >= limit:
            die()

    info = engine.run_job(job_id, progress=progress)
    print(f"finished {info.state} {info.done} {info.skipped} {info.failed}", flush=True)
    engine.close()


if __name__ == "__main__":
    sys.exit(main())
