"""Distributed ingestion on Ray Data (`internvl-search index --ray ADDRESS`): the local pipeline's job, ledger and
writer, with fetching/decoding on CPU tasks and encoding on an actor pool (one model per actor, one GPU each
when the cluster has GPUs) across a Ray cluster.

    job -> plan (driver) -> pending ledger items, a window at a time ->
      ray.data.from_items -> map_batches(decode: fetch, sha256, catalog dedup, decode, preprocess; CPU tasks)
                          -> map_batches(_EncodeActor: encode_pixels; actor pool, the encoder loaded once per actor)
      -> back on the driver in ledger order (preserve_order) -> BatchWriter: catalog rows, embedding shards, index

Everything that decides an item's outcome is the local pipeline's own code, run inside the Ray workers: `Fetcher`
(allowed roots, URL fetch rules), `ItemPreparer` (size caps, content-hash dedup, decode caps and reasons) and the
encoder's own preprocessing. The driver is the single writer: it holds the collection's writer lock, writes each
batch with `BatchWriter` in ledger order (so image ids are the ones the local pipeline gives), and `JobRuntime`
settles the job, rebuilds the index from the embedding shards when the collection's size calls for another kind
(IVF-PQ past its threshold, trained on a sample) and saves it. A re-run is idempotent (content-hash dedup) and an
interrupted job resumes from its pending ledger items, on Ray or locally (`index --resume`).

Workers must see the same files as the driver: server paths and staged uploads on a shared file system, and the
catalog for the dedup check (PostgreSQL; a SQLite file that is not there is skipped, the driver dedups anyway).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sqlalchemy import make_url

from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.config import EngineConfig
from indexer.errors import InvalidInput
from indexer.jobs import JobInfo, JobRuntime
from indexer.pipeline.decode import ItemPreparer
from indexer.pipeline.flow import ItemSpec, Prepared, Settled, StageClock
from indexer.pipeline.runner import LEDGER_PAGE, SETTLED_FLUSH, UncommittedOriginals
from indexer.pipeline.sources import Fetcher, IngestItem
from indexer.pipeline.urls import downloader_for
from indexer.pipeline.write import BatchWriter
from indexer.storage import reduced_copy
from internvl_models import Encoder, create_encoder
from internvl_models.transforms import to_rgb

if TYPE_CHECKING:
    from indexer.engine import Engine

log = logging.getLogger("internvl_search.ray")

RAY_MISSING = "distributed ingestion needs Ray: pip install 'internvl-search[scale]' (ray[data])"


@dataclass(frozen=True)
class RayOptions:
    """How a job runs on the cluster. None means: decided from the cluster's resources and the engine config."""

    window: int = 20_000  # ledger items per Ray dataset (each one starts its encoder actors anew)
    decode_batch: int = 16  # items per decode task
    decode_cpus: float = 1.0
    encode_actors: int | None = None  # default: one per GPU of the cluster, else 1
    gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs, else 0
    encode_batch: int | None = None  # default: EngineConfig.image_batch_size
    # Builds the encoder inside each actor; the registry's by default (must be importable on every node).
    encoder_factory: Callable[..., Encoder] = create_encoder


def import_ray() -> Any:
    """The `ray` module with Ray Data, or InvalidInput saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra, not just the core
    except ImportError:
        raise InvalidInput(RAY_MISSING) from None
    return ray


def connect(address: str | None) -> None:
    """Join the cluster at `address` unless this process already did: "local" (or None) starts a local instance,
    "auto" joins the one on this node, "ray://host:10001" a remote one through Ray Client."""
    ray = import_ray()
    if ray.is_initialized():
        return
    if address in (None, "", "local"):
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)


def ingest(
    engine: Engine,
    collection: str,
    items: Sequence[IngestItem],
    *,
    metadata: dict[str, Any] | None = None,
    extra_roots: Sequence[Path] = (),
    address: str | None = None,
    options: RayOptions | None = None,
    progress: Callable[[JobInfo], None] | None = None,
) -> JobInfo:
    """Create an ingestion job as `Engine.submit` does and run it on Ray (see `run_job`)."""
    job_id = engine.submit(collection, items, metadata=metadata, extra_roots=extra_roots, start=False)
    return run_job(engine, job_id, address=address, options=options, progress=progress)


def run_job(
    engine: Engine,
    job_id: int,
    *,
    address: str | None = None,
    options: RayOptions | None = None,
    progress: Callable[[JobInfo], None] | None = None,
    stop: threading.Event | None = None,
) -> JobInfo:
    """Run (or resume, or retry) an ingestion job on Ray in the calling thread; its final state. The cluster is the
    one this process joined, else the one at `address` (`connect`). A set `stop` ends the run at the next batch,
    leaving the job queued with its remaining items pending."""
    connect(address)
    with session_scope(engine.sessions) as session:
        job = repo.get_job(session, job_id)
        if job.kind != "ingest":
            raise InvalidInput(f"job {job_id} is a {job.kind} job; only ingestion jobs run on Ray")
        if job.state == "failed":
            repo.set_job_state(session, job_id, "queued")  # its pending items are all that is left to do
    RayJobRuntime(engine, options or RayOptions()).execute(job_id, stop or threading.Event(), progress)
    return engine.get_job(job_id)


class RayJobRuntime(JobRuntime):
    """`JobRuntime` (writer lock, reconciliation, job states, index maintenance) with the Ray pipeline."""

    def __init__(self, engine: Engine, options: RayOptions) -> None:
        super().__init__(engine)
        self.options = options

    def _run(self, job_id: int, live: Any, stop: threading.Event, progress: Callable[[JobInfo], None] | None):
        engine, config, sessions = self.engine, self.engine.config, self.engine.sessions
        encoder, roots, should_stop, on_batch = self._start(job_id, live, stop, progress)

        decode = _DecodeSpec(
            roots=tuple(roots),
            config=config,
            resolver=engine.resolver,
            transform=pixel_transform(encoder),
            reduce_for=config.jpeg_reduce_for(encoder),
            keep=live.storage,
            database_url=config.resolved_database_url,
            collection_id=live.id,
        )
        space = live.space
        encode = _EncodeSpec(
            factory=self.options.encoder_factory,
            name=space.encoder,
            checkpoint=space.checkpoint,
            fingerprint=space.fingerprint,
            device=config.device,
            dtype=config.dtype,
            batch_size=self.options.encode_batch or config.image_batch_size,
            compile_images=config.compile_images,
        )
        return _run_ray_pipeline(job_id, config, sessions, live, decode, encode, self.options, should_stop, on_batch)


# --- what the workers run -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DecodeSpec:
    roots: tuple[Path, ...]
    config: EngineConfig
    resolver: Callable[[str, int], Sequence[str]] | None
    transform: Callable[[Any], torch.Tensor] | None  # None: ship the decoded RGB, the encoder actor preprocesses
    reduce_for: int | None  # decode_image's: the encoder's input size, or None (every pixel)
    keep: str  # the collection's storage policy: originals | thumbnails | none
    database_url: str
    collection_id: int


@dataclass(frozen=True)
class _EncodeSpec:
    factory: Callable[..., Encoder]
    name: str
    checkpoint: str | None
    fingerprint: str
    device: str
    dtype: str | None
    batch_size: int
    compile_images: bool = False


class _OpenCLIPTransform:
    """open_clip's preprocessing as `OpenCLIPEncoder.preprocess_image` does it, without the model."""

    def __init__(self, preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.preprocess = preprocess

    def __call__(self, image: Any) -> torch.Tensor:
        return self.preprocess(to_rgb(image)).float()


def pixel_transform(encoder: Encoder) -> Callable[[Any], torch.Tensor] | None:
    """The encoder's retrieval preprocessing as a small picklable callable for the decode tasks (the same objects
    its `preprocess_image` uses), or None when the encoder keeps it to itself: then the actors preprocess."""
    transforms = getattr(encoder, "_transforms", None)
    if isinstance(transforms, dict) and "retrieval" in transforms:
        return transforms["retrieval"]
    preprocess = getattr(encoder, "_preprocess", None)
    if preprocess is not None and type(encoder).__name__ == "OpenCLIPEncoder":
        return _OpenCLIPTransform(preprocess)
    return None


@functools.lru_cache(maxsize=4)
def _catalog_sessions(url: str):  # noqa: ANN202 - sessionmaker | None; one per worker process
    from indexer.catalog.db import make_engine, make_sessionmaker

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and os.path.isfile(parsed.database)):
        return None  # another node: connecting would create an empty file; the driver's writer dedups instead
    return make_sessionmaker(make_engine(url))


def _find_indexed(spec: _DecodeSpec) -> Callable[[str], int | None]:
    sessions = _catalog_sessions(spec.database_url)

    def find(sha: str) -> int | None:
        if sessions is None:
            return None
        with session_scope(sessions) as session:
            return repo.indexed_image_with_sha(session, spec.collection_id, sha)

    return find


def decode_batch(batch: dict[str, np.ndarray], spec: _DecodeSpec) -> dict[str, np.ndarray]:
    """Ledger items (position, source) -> one row per item: its outcome, or its preprocessed pixels (as bytes)."""
    config, clock = spec.config, StageClock()
    kept: dict[str, bytes] = {}

    def keep(sha: str, data: bytes) -> None:
        kept[sha] = data if spec.keep == "originals" else reduced_copy(data)

    downloader = downloader_for(config, spec.resolver)
    preparer = ItemPreparer(
        Fetcher(list(spec.roots), config.max_source_bytes, downloader).fetch,
        _find_indexed(spec),
        spec.transform or _rgb_array,
        None if spec.keep == "none" else keep,
        max_pixels=config.max_image_pixels,
        max_frames=config.max_frames,
        clock=clock,
        timeout_s=config.decode_timeout_s,
        reduce_for=spec.reduce_for,
    )
    rows: list[dict[str, Any]] = []
    try:
        for position, source in zip(batch["position"].tolist(), batch["source"].tolist()):
            rows.append(_row(preparer(int(position), ItemSpec.from_source(source)), kept))
    finally:
        downloader.close()
    columns = {name: [row[name] for row in rows] for name in _ROW_DEFAULTS}
    out = {name: _column(values) for name, values in columns.items()}
    out["fetch_s"] = np.zeros(len(rows), np.float64)
    out["decode_s"] = np.zeros(len(rows), np.float64)
    if rows:
        out["fetch_s"][0], out["decode_s"][0] = clock.fetch_s, clock.decode_s
    return out


def _rgb_array(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


# One row per ledger item; strings and bytes are never None, so every block has the same Arrow types.
_ROW_DEFAULTS: dict[str, Any] = {
    "position": 0, "state": "", "reason": "", "image_id": -1, "sha256": "", "display": "", "byte_size": 0,
    "width": 0, "height": 0, "format": "", "meta": "{}", "pixels": b"", "pixels_shape": "", "pixels_dtype": "",
    "kept": b"",
}  # fmt: skip


def _row(result: Prepared | Settled, kept: dict[str, bytes]) -> dict[str, Any]:
    if isinstance(result, Settled):
        image_id = -1 if result.image_id is None else int(result.image_id)
        return {**_ROW_DEFAULTS, "position": result.position, "state": result.state, "reason": result.reason,
                "image_id": image_id}  # fmt: skip
    pixels = np.ascontiguousarray(
        result.pixels.numpy() if isinstance(result.pixels, torch.Tensor) else result.pixels
    )  # fmt: skip
    return {
        **_ROW_DEFAULTS,
        "position": result.position, "state": "prepared", "sha256": result.sha256, "display": result.source,
        "byte_size": result.byte_size, "width": result.width, "height": result.height, "format": result.format or "",
        "meta": json.dumps(result.meta or {}, ensure_ascii=False), "pixels": pixels.tobytes(),
        "pixels_shape": ",".join(map(str, pixels.shape)), "pixels_dtype": str(pixels.dtype),
        "kept": kept.get(result.sha256, b""),
    }  # fmt: skip


def _column(values: list[Any]) -> np.ndarray:
    if values and isinstance(values[0], int):
        return np.asarray(values, dtype=np.int64)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


class _EncodeActor:
    """Holds one encoder for its whole life (one per GPU); turns the decoded rows' pixels into vectors."""

    def __init__(self, spec: _EncodeSpec, dim: int) -> None:
        self.spec, self.dim = spec, dim
        self._encoder: Encoder | None = None

    @property
    def encoder(self) -> Encoder:
        """Loaded at the first image to encode: a re-run of known images (all duplicates) never loads it."""
        if self._encoder is None:
            import ray

            spec = self.spec
            device = "cuda" if ray.get_gpu_ids() else spec.device
            encoder = spec.factory(
                spec.name, spec.checkpoint, device=device, dtype=spec.dtype, image_batch_size=spec.batch_size,
                compile_images=spec.compile_images,
            )  # fmt: skip
            if encoder.fingerprint != spec.fingerprint:
                raise RuntimeError(
                    f"the encoder {spec.name} on this worker has fingerprint {encoder.fingerprint[:12]}…, the "
                    f"collection {spec.fingerprint[:12]}…: every node needs the same weights"
                )
            self._encoder = encoder
        return self._encoder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        rows = [i for i, state in enumerate(batch["state"].tolist()) if state == "prepared"]
        vectors = np.zeros((len(batch["state"]), self.dim), dtype=np.float32)
        if rows:
            pixels = torch.stack([self._pixels(batch, i) for i in rows])
            vectors[rows] = self.encoder.encode_pixels(pixels)
        out = {k: v for k, v in batch.items() if k not in ("pixels", "pixels_shape", "pixels_dtype")}
        out["vector"] = vectors
        out["encode_s"] = np.zeros(len(vectors), np.float64)
        if len(vectors):
            out["encode_s"][0] = time.perf_counter() - start
        return out

    def _pixels(self, batch: dict[str, np.ndarray], i: int) -> torch.Tensor:
        shape = tuple(int(n) for n in str(batch["pixels_shape"][i]).split(","))
        array = np.frombuffer(batch["pixels"][i], dtype=np.dtype(str(batch["pixels_dtype"][i]))).reshape(shape)
        if array.dtype == np.uint8:  # decoded RGB: the encoder's own preprocessing, here
            from PIL import Image

            return self.encoder.preprocess_image(Image.fromarray(array))
        return torch.from_numpy(array.copy())


# --- the driver -----------------------------------------------------------------------------------------------------


def _run_ray_pipeline(
    job_id: int,
    config: EngineConfig,
    sessions: Any,
    live: Any,
    decode: _DecodeSpec,
    encode: _EncodeSpec,
    options: RayOptions,
    should_stop: Callable[[], bool],
    progress: Callable[[Any], None],
) -> tuple[StageClock, bool]:
    """Process the job's pending items on the cluster, writing on the driver in ledger order; returns the stage
    times and whether every item was reached."""
    clock = StageClock()
    kept = None if live.storage == "none" else UncommittedOriginals(live.files.originals)
    writer = BatchWriter(sessions, live, live.embeddings(), job_id, clock)
    after = -1
    try:
        while True:
            window = _pending_window(sessions, job_id, after, options.window)
            if not window:
                return clock, True
            after = window[-1][0]
            results = _results(window, decode, encode, live.dim, options, clock)
            try:
                for prepared, vectors, settled in _batches(results, config.image_batch_size):
                    if should_stop():
                        return clock, False  # the rest of the window stays pending
                    if kept is not None:
                        for item, data in prepared:
                            if data:
                                kept.put(item.sha256, data)
                    progress(writer.write([item for item, _ in prepared], vectors, settled))
                    if kept is not None:
                        kept.committed(item.sha256 for item, _ in prepared)
                    live.save_if_due(config.index_save_interval_s)
            finally:
                results.close()  # stops the dataset's execution when the run ends early
    finally:
        if kept is not None:
            kept.sweep(sessions, live.id)


def _pending_window(sessions: Any, job_id: int, after: int, size: int) -> list[tuple[int, str]]:
    window: list[tuple[int, str]] = []
    while len(window) < size:
        with session_scope(sessions) as session:
            page = repo.pending_items_after(session, job_id, after, min(LEDGER_PAGE, size - len(window)))
        if not page:
            break
        window.extend(page)
        after = page[-1][0]
    return window


def _results(
    window: list[tuple[int, str]],
    decode: _DecodeSpec,
    encode: _EncodeSpec,
    dim: int,
    options: RayOptions,
    clock: StageClock,
) -> Iterator[dict[str, Any]]:
    """The window's rows through decode and encode on the cluster, in ledger order, one dict per item."""
    ray = import_ray()
    gpus = float(ray.cluster_resources().get("GPU", 0))
    per_actor = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    actors = options.encode_actors or (max(1, int(gpus // per_actor)) if per_actor else 1)
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True  # the writer must see the ledger's order: same ids as locally
    context.enable_progress_bars = False
    try:
        items = [{"position": position, "source": source} for position, source in window]
        dataset = (
            ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // options.decode_batch)))
            .map_batches(
                decode_batch, batch_size=options.decode_batch, batch_format="numpy", fn_kwargs={"spec": decode},
                num_cpus=options.decode_cpus,
            )
            .map_batches(
                _EncodeActor, batch_size=encode.batch_size, batch_format="numpy",
                fn_constructor_kwargs={"spec": encode, "dim": dim}, compute=ray.data.ActorPoolStrategy(size=actors),
                num_gpus=per_actor, num_cpus=0 if per_actor else 1,
            )
        )  # fmt: skip
        batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
    return _rows(batches, clock)


def _rows(batches: Iterator[dict[str, np.ndarray]], clock: StageClock) -> Iterator[dict[str, Any]]:
    try:
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            clock.add("wait_s", time.perf_counter() - start)
            if batch is None:
                return
            for name in ("fetch_s", "decode_s", "encode_s"):
                clock.add(name, float(np.sum(batch[name])))
            for i in range(len(batch["position"])):
                yield {name: column[i] for name, column in batch.items()}
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _batches(
    rows: Iterator[dict[str, Any]], size: int
) -> Iterator[tuple[list[tuple[Prepared, bytes]], np.ndarray, list[Settled]]]:
    """Writer batches as the local runner forms them: `size` prepared items, or `SETTLED_FLUSH` settled ones."""
    prepared: list[tuple[Prepared, bytes]] = []
    vectors: list[np.ndarray] = []
    settled: list[Settled] = []
    for row in rows:
        if row["state"] == "prepared":
            prepared.append((_prepared(row), bytes(row["kept"])))
            vectors.append(np.asarray(row["vector"], dtype=np.float32))
        else:
            image_id = int(row["image_id"])
            settled.append(Settled(int(row["position"]), str(row["state"]), str(row["reason"]),
                                   None if image_id < 0 else image_id))  # fmt: skip
        if len(prepared) >= size or len(settled) >= SETTLED_FLUSH:
            yield prepared, _stack(vectors), settled
            prepared, vectors, settled = [], [], []
    if prepared or settled:
        yield prepared, _stack(vectors), settled


def _stack(vectors: list[np.ndarray]) -> np.ndarray:
    return np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)


def _prepared(row: dict[str, Any]) -> Prepared:
    return Prepared(
        position=int(row["position"]),
        sha256=str(row["sha256"]),
        source=str(row["display"]),
        byte_size=int(row["byte_size"]),
        width=int(row["width"]),
        height=int(row["height"]),
        format=str(row["format"]) or None,
        meta=json.loads(str(row["meta"])),
        pixels=None,  # type: ignore[arg-type] - encoded already; the writer never reads them
    )
