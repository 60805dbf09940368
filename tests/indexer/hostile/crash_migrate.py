"""Run (or resume) a migration of collection NAME to the shapes-world encoder and SIGKILL this very process at a
chosen point; used by test_model_switch_resume.

    python crash_migrate.py DATA_DIR DB_URL TINY_CKPT SHAPES_CKPT IMAGES NAME --kill-at embeddings:2|swapped|committed|never

The first run creates NAME on the tiny encoder and indexes IMAGES. `embeddings:N` dies right after the N-th shard of
the shadow space is durable (before the job's counters move); `swapped` inside the switch's transaction, before it
commits (and before the new index is saved); `committed` after the commit, before the in-memory swap. The kill is a
real SIGKILL: no finally blocks, no atexit, no flush. Everything is passed as arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from indexer import Engine, EngineConfig, IngestItem, NotFound
from indexer.catalog import spaces
from indexer.live import LiveCollection
from indexer.vector_store import EmbeddingStore


def die(*_: object, **__: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(where: str, limit: int) -> None:
    if where == "embeddings":
        append, calls = EmbeddingStore.append, [0]

        def append_then_die(self, ids, vectors) -> None:  # noqa: ANN001
            append(self, ids, vectors)
            if "spaces" in self.directory.parts:
                calls[0] += 1
                if calls[0] == limit:
                    die()

        EmbeddingStore.append = append_then_die
    elif where == "swapped":
        swap = spaces.swap_serving

        def swap_then_die(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            swap(*args, **kwargs)
            die()

        spaces.swap_serving = swap_then_die
    elif where == "committed":
        LiveCollection.switch = die


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("data_dir", "db_url", "tiny", "shapes", "images", "name"):
        parser.add_argument(name)
    parser.add_argument("--kill-at", default="never")
    args = parser.parse_args()
    config = EngineConfig(
        data_dir=Path(args.data_dir),
        database_url=args.db_url,
        encoder="internvl-c",
        encoder_checkpoint=args.tiny,
        device="cpu",
        allowed_roots=(Path(args.images).resolve(),),
        image_batch_size=4,
        decode_workers=2,
        index_save_interval_s=3600.0,
    )
    engine = Engine(config).open(resume_jobs=False)
    try:
        engine.get_collection(args.name)
    except NotFound:
        engine.create_collection(args.name)
        engine.run_job(engine.submit(args.name, [IngestItem.path(args.images)], start=False))
    pending = [job for job in engine.list_jobs(args.name, states=["queued", "running"]) if job.kind == "migrate"]
    job_id = pending[0].id if pending else engine.migrate(args.name, "internvl-c", args.shapes, start=False)
    print(f"job {job_id}", flush=True)
    where, _, count = args.kill_at.partition(":")
    arm(where, int(count or 0))
    info = engine.run_job(job_id)
    print(f"finished {info.state}", flush=True)
    engine.close()


if __name__ == "__main__":
    main()
