"""Ingestion throughput: end-to-end images/s of a real job against model-only images/s of the same encoder.

    python -m bench.ingest                                   # 256 photo-sized JPEGs, open_clip ViT-B-32 (random)
    python -m bench.ingest --encoder internvl-c --checkpoint /path/to/InternVL-14B-224px --images 1024
    python -m bench.ingest --random-internvl 14b --device cuda --images 1024   # InternVL-C, random bf16 weights

* model-only: `encode_pixels` on already preprocessed batches, nothing else: the ceiling.
* end-to-end: `Engine.run_job` over a folder of JPEGs (SQLite catalog, originals stored): read, hash, dedup check,
  decode, EXIF/mode handling, preprocess (thread pool), encode, write (rows, fsync'd embedding shard, index).
* efficiency = end-to-end / model-only; `encoder_wait` = share of the job's wall time the encoder spent waiting
  for decoded input (0 means decoding keeps up); `encoder_busy` = share of it spent in the forward pass (the
  same-run view of efficiency, which a shared machine's drifting load cannot skew). On a CPU, decoding and the
  model share the same cores, so efficiency is bounded by that contention, not only by the pipeline.
* `decode_preprocess_images_per_s_one_thread`: what one decode worker supplies (read, decode, preprocess), with
  large JPEGs decoded reduced for the encoder's input as the pipeline does, against decoding every pixel (the
  `reduce_jpeg_decode` option off, what `--full-decode` gives the job too); `--size 4032x3024` is a 12 MP photo.
* `--random-internvl mid|14b`: an InternVL-C checkpoint with random weights (bench/encode.py's configs) is written
  to a temporary directory in the official layout and loaded by the real loader; on CUDA the loader's peak memory
  is reported against the weights' size (goal: at most 1.1x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexer import Engine, EngineConfig, IngestItem
from indexer.catalog import migrate
from indexer.pipeline.decode import decode_image
from internvl_models import create_encoder


def make_photos(directory: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """n distinct photo-sized JPEGs (smooth gradients plus noise, so they compress and decode like photos)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    ramp = (
        np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * np.linspace(0.3, 1, h, dtype=np.float32)[:, None, None]
    )
    paths = []
    for i in range(n):
        colour = rng.uniform(40, 255, 3).astype(np.float32)
        noise = rng.normal(0, 12, (h, w, 3)).astype(np.float32)
        pixels = np.clip(ramp * colour + noise, 0, 255).astype(np.uint8)
        path = directory / f"photo_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def model_only(encoder, paths: list[Path], batch: int, seconds: float) -> float:  # noqa: ANN001 - Encoder
    """images/s of encode_pixels alone, on preprocessed pixels of the same images (median over batches, so a
    burst of load from elsewhere on a shared machine moves it less)."""
    pixels = torch.stack([encoder.preprocess_image(Image.open(p)) for p in paths[:batch]])
    encoder.encode_pixels(pixels)  # warm-up
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        tick = time.perf_counter()
        encoder.encode_pixels(pixels)
        times.append(time.perf_counter() - tick)
    return batch / float(np.median(times))


def preprocess_only(encoder, paths: list[Path], reduce_for: int | None) -> float:  # noqa: ANN001 - Encoder
    """images/s of read + decode + preprocess on one thread (what one decode worker can supply), as the pipeline
    does it (`reduce_for`: decode_image's)."""
    start = time.perf_counter()
    for path in paths[:64]:
        decoded = decode_image(path.read_bytes(), max_pixels=2**31, max_frames=1, reduce_for=reduce_for)
        encoder.preprocess_image(decoded.image)
    return min(64, len(paths)) / (time.perf_counter() - start)


def random_internvl_checkpoint(config: str, device: str, directory: Path) -> str:
    """Save a random InternVL of `config` ("mid" / "14b") in the official layout (+ a small test tokenizer)."""
    import sys

    from bench.encode import build
    from internvl_models.checkpoint import save_internvl

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from factories import train_tiny_tokenizer

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build(argparse.Namespace(config=config), torch.device(device), dtype)
    model.qllama.lm_head.weight.data.copy_(model.qllama.model.embed_tokens.weight.data)  # tied, as released
    save_internvl(model, model.config, directory)
    train_tiny_tokenizer(directory)  # 400 pieces: ids fit the real 49954-entry embedding
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return str(directory)


def load_encoder(args: argparse.Namespace) -> tuple[object, dict[str, float]]:
    """The encoder, and on CUDA the loader's peak memory against the weights it holds."""
    if not args.device.startswith("cuda"):
        return create_encoder(args.encoder, args.checkpoint, device=args.device, image_batch_size=args.batch), {}
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    encoder = create_encoder(args.encoder, args.checkpoint, device=args.device, image_batch_size=args.batch)
    seconds = time.perf_counter() - start
    weights = torch.cuda.memory_allocated() - before
    peak = torch.cuda.max_memory_allocated() - before
    return encoder, {"load_s": round(seconds, 1), "weights_gib": round(weights / 2**30, 2),
                     "load_peak_vs_weights": round(peak / max(weights, 1), 3)}  # fmt: skip


def end_to_end(args: argparse.Namespace, encoder, root: Path, photos: Path) -> dict[str, float]:  # noqa: ANN001
    data = root / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'catalog.db'}"
    migrate.upgrade(url)
    config = EngineConfig(
        data_dir=data,
        database_url=url,
        encoder=args.encoder,
        encoder_checkpoint=args.checkpoint,
        device=args.device,
        image_batch_size=args.batch,
        decode_workers=args.workers,
        allowed_roots=(photos.resolve(),),
        reduce_jpeg_decode=not args.full_decode,
    )
    # The same encoder object as the model-only figure, so both numbers describe the same model and threads.
    with Engine(config, lambda *a, **k: encoder).open(resume_jobs=False) as engine:
        engine.create_collection("bench")
        engine.encoder().encode_texts(["warm-up"])
        job = engine.submit("bench", [IngestItem.path(photos)], start=False)
        start = time.perf_counter()
        info = engine.run_job(job)
        wall = time.perf_counter() - start
    assert info.done == args.images, info
    return {"images_per_s": args.images / wall, "wall_s": wall, **info.timings}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="openclip:ViT-B-32")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", default="640x480", help="photo size WxH")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=max(2, (os.cpu_count() or 2)))
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timing window for model-only")
    parser.add_argument("--random-internvl", choices=["mid", "14b"], default=None, help="random InternVL-C weights")
    parser.add_argument("--full-decode", action="store_true", help="the job decodes every pixel (no reduced JPEGs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        if args.random_internvl:
            args.encoder = "internvl-c"
            args.checkpoint = random_internvl_checkpoint(args.random_internvl, args.device, root / "checkpoint")
        paths = make_photos(root / "photos", args.images, size)  # type: ignore[arg-type]
        encoder, loading = load_encoder(args)
        before = model_only(encoder, paths, args.batch, args.seconds)
        # Interleaved, so that drifting load from elsewhere reaches both alike.
        supply, supply_full = [], []
        for _ in range(2):
            supply.append(preprocess_only(encoder, paths, encoder.info.image_size))
            supply_full.append(preprocess_only(encoder, paths, None))
        e2e = end_to_end(args, encoder, root, root / "photos")
        # Measured on both sides of the job and averaged: the machine's other load drifts during a run.
        ceiling = (before + model_only(encoder, paths, args.batch, args.seconds)) / 2
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "encoder": args.encoder,
        "device": args.device,
        "images": args.images,
        "photo_size": args.size,
        "batch": args.batch,
        "decode_workers": args.workers,
        "model_only_images_per_s": round(ceiling, 2),
        "decode_preprocess_images_per_s_one_thread": round(float(np.mean(supply)), 2),
        "same_full_decode": round(float(np.mean(supply_full)), 2),
        "reduced_vs_full_decode": round(float(np.sum(supply) / np.sum(supply_full)), 2),
        "job_decode": "full" if args.full_decode else "reduced JPEGs",
        "end_to_end_images_per_s": round(e2e["images_per_s"], 2),
        "encoder_in_pipeline_images_per_s": round(args.images / e2e["encode_s"], 2),
        "pipeline_efficiency": round(e2e["images_per_s"] / ceiling, 3),
        "encoder_wait_fraction": round(e2e["wait_s"] / e2e["wall_s"], 3),
        # Robust to the machine's drifting load: both figures come from the same run.
        "encoder_busy_fraction": round(e2e["encode_s"] / e2e["wall_s"], 3),
        "stage_seconds": {k: round(v, 3) for k, v in e2e.items() if k.endswith("_s") and k != "images_per_s"},
        **loading,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for key, value in results.items():
        print(f"{key:<44} {value}")


if __name__ == "__main__":
    main()
