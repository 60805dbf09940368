"""Test kit for the engine tests: real images (ordinary and hostile), a real local HTTP server, a cached tiny
encoder and engine configurations. Nothing here replaces a part of the system; it only builds inputs for it.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from internvl_models import Encoder, create_encoder

COLOURS = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black", "orange", "purple", "brown", "pink"]

_ENCODERS: dict[tuple[str, str | None], Encoder] = {}


def cached_encoder_factory(name: str, checkpoint: str | None = None, **options: object) -> Encoder:
    """`create_encoder`, built once per (name, checkpoint) for the whole test session (loading costs ~1 s)."""
    key = (name, None if checkpoint is None else str(checkpoint))
    if key not in _ENCODERS:
        _ENCODERS[key] = create_encoder(name, checkpoint, **options)
    return _ENCODERS[key]


def image_bytes(
    colour: str = "red", size: tuple[int, int] = (40, 30), fmt: str = "PNG", seed: int | None = None
) -> bytes:
    """A small real image; with `seed`, noise on top of the colour so that every seed gives distinct content."""
    image = Image.new("RGB", size, colour)
    if seed is not None:
        rng = np.random.default_rng(seed)
        noise = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def write_images(directory: Path, n: int, *, start: int = 0) -> list[Path]:
    """n distinct PNG files `img_XXX.png` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = directory / f"img_{i:03d}.png"
        path.write_bytes(image_bytes(COLOURS[i % len(COLOURS)], (32 + i % 7, 24 + i % 5), seed=i))
        paths.append(path)
    return paths


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (the data is a few bytes): a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def animated_gif(frames: int) -> bytes:
    images = [Image.new("RGB", (24, 24), (i * 20 % 256, 255 - i * 20 % 256, (i * 77) % 256)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=50, loop=0)
    return out.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF says "rotate 90°": upright it is 20x40."""
    image = Image.new("RGB", (40, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    return out.getvalue()


def hostile_corpus(directory: Path) -> dict[str, str | None]:
    """Write the hostile-image corpus (hostile/images.py); returns name -> expected failure reason fragment (None:
    must be indexed). Expects max_frames=5."""
    from .images import hostile_images

    directory.mkdir(parents=True, exist_ok=True)
    corpus = hostile_images()
    for name, (data, _) in corpus.items():
        (directory / name).write_bytes(data)
    return {name: reason for name, (_, reason) in corpus.items()}


@contextmanager
def http_server(routes: dict[str, Callable[[BaseHTTPRequestHandler], None]]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 in a thread; yields its base URL. Routes map a path to a handler."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404, "Not Found")
            else:
                route(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def send_bytes(data: bytes, content_type: str = "image/png") -> Callable[[BaseHTTPRequestHandler], None]:
    def handle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return handle


def redirect_to(location: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def handle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return handle


_CHECKPOINT: list[Path] = []


def tiny_checkpoint() -> Path:
    """One tiny InternVL checkpoint per test process (so the encoder cache above is shared across modules)."""
    if not _CHECKPOINT:
        import atexit
        import shutil
        import tempfile

        from factories import make_tiny_internvl_checkpoint

        root = Path(tempfile.mkdtemp(prefix="tiny-internvl-"))
        atexit.register(shutil.rmtree, root, True)
        _CHECKPOINT.append(make_tiny_internvl_checkpoint(root / "ckpt"))
    return _CHECKPOINT[0]


def engine_config(tmp_path: Path, database_url: str, **overrides: object):  # noqa: ANN201 - EngineConfig
    """An EngineConfig on the tiny encoder, migrating `database_url` first; `tmp_path` is the allowed root."""
    from indexer import EngineConfig
    from indexer.catalog import migrate

    migrate.upgrade(database_url)
    options = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "encoder": "internvl-c",
        "encoder_checkpoint": str(tiny_checkpoint()),
        "device": "cpu",
        "allowed_roots": (tmp_path.resolve(),),
        "image_batch_size": 4,
        "decode_workers": 2,
        "job_workers": 1,
        "index_save_interval_s": 0.0,
        **overrides,
    }
    return EngineConfig(**options)
