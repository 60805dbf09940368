"""Decode: bytes -> an upright RGB image -> the encoder's pixel tensor, in a pool of threads.

Every hostile input ends as a `DecodeError` whose message is the ledger reason, never as a crash: empty files,
formats outside `IMAGE_FORMATS` (recognised from the content, never from a file name or Content-Type), headers
declaring more than `max_pixels` (refused from the header, before any pixel is decoded), animations with more than
`max_frames` frames (only the first frame is used), truncated or corrupt data, modes `to_rgb` cannot convert, and
decodes running past `timeout_s`. Pillow and torch release the GIL while decoding and resizing, so threads scale.

A caller that only needs the image at a model's input size passes it as `reduce_for`: a large JPEG then decodes
at a fraction of its size (`internvl_models.transforms.reduce_jpeg_decode`); width and height stay the original's.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from indexer.pipeline.flow import Prepared, Settled, StageClock
from indexer.pipeline.paths import SourceError
from internvl_models.errors import InputError
from internvl_models.transforms import reduce_jpeg_decode, to_rgb

log = logging.getLogger("internvl_search.pipeline")

# The formats Pillow may parse here, recognised by their content. Pillow knows ~40 more (PSD, FITS, EPS, ...), each
# one more parser exposed to untrusted bytes; JPEG covers camera MPO files, PPM covers PBM/PGM/PPM.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "TGA", "AVIF")
DECODE_TIMEOUT_S = 30.0


class DecodeError(Exception):
    """Bytes that are not a usable image; the message is the ledger reason."""


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # 8-bit RGB, EXIF orientation applied; possibly reduced (`reduce_for`)
    width: int  # of the original, upright
    height: int
    format: str | None
    frames: int


class _DecodeTimeout(Exception):
    """Raised from inside Pillow's read loop once the decode deadline has passed."""


class _DeadlineReader(io.BytesIO):
    """The image bytes, refusing further reads past a deadline.

    Pillow decodes chunk by chunk, reading its input as it goes (and counting frames reads every frame's blocks),
    so checking the clock on each read stops a slow decode within one chunk of work instead of letting it run to
    the end. Work done inside a single read is bounded by the pixel cap."""

    def __init__(self, data: bytes, deadline: float) -> None:
        super().__init__(data)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        if time.monotonic() > self.deadline:
            raise _DecodeTimeout
        return super().read(size)


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    max_frames: int,
    timeout_s: float = DECODE_TIMEOUT_S,
    reduce_for: int | None = None,
) -> DecodedImage:
    """Decode the first frame of `data`; `DecodeError` with a clear reason for anything unusable. `reduce_for`: the
    size of the model input the image is for, which lets a JPEG decode reduced (see above); None: every pixel."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    start = time.monotonic()
    source = _DeadlineReader(data, start + timeout_s)
    try:
        decoded = _decode(source, max_pixels=max_pixels, max_frames=max_frames, reduce_for=reduce_for)
    except _DecodeTimeout:
        decoded = None
    if decoded is None or time.monotonic() - start > timeout_s:
        raise DecodeError(f"decoding took longer than the limit of {timeout_s:g} s")
    return decoded


def _decode(source: io.BytesIO, *, max_pixels: int, max_frames: int, reduce_for: int | None) -> DecodedImage:
    try:
        image = Image.open(source, formats=IMAGE_FORMATS)
    except _DecodeTimeout:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError(
            f"not an image: the format is not recognised (accepted: {', '.join(IMAGE_FORMATS)})"
        ) from None
    except Exception as exc:  # Pillow's plugins raise many types for a mangled header
        raise DecodeError(f"unreadable image header: {type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise DecodeError(
            f"image declares {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,} "
            "(refused before decoding)"
        )
    try:
        frames = _count_frames(image, max_frames)
    except _DecodeTimeout:
        raise
    except Exception as exc:
        raise DecodeError(f"corrupt animation: {type(exc).__name__}: {exc}") from None
    if frames > max_frames:
        raise DecodeError(f"animation has more than {max_frames:,} frames, the limit")
    original_size = reduce_jpeg_decode(image, reduce_for) if reduce_for is not None else None
    try:
        rgb = to_rgb(image)
    except _DecodeTimeout:
        raise
    except InputError as exc:
        raise DecodeError(f"truncated or corrupt image data: {exc}".replace("cannot decode image: ", "")) from None
    except Exception as exc:
        raise DecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    width, height = original_size or rgb.size
    return DecodedImage(rgb, width, height, image.format, frames)


def _count_frames(image: Image.Image, max_frames: int) -> int:
    """The number of frames, or max_frames + 1 when there are more: an animation is only walked up to one frame
    past the limit (Pillow's `n_frames` would walk all of them, millions in a 50 MB GIF)."""
    if not getattr(image, "is_animated", False):
        return 1
    try:
        image.seek(max_frames)  # frame index max_frames exists: there are more than max_frames
    except EOFError:
        image.seek(0)
        return int(image.n_frames)
    image.seek(0)
    return max_frames + 1


class ItemPreparer:
    """fetch -> sha256 -> catalog dedup -> decode -> preprocess -> keep the original; runs in the decode threads."""

    def __init__(
        self,
        fetch: Callable[[Any], bytes],
        find_indexed: Callable[[str], int | None],
        preprocess: Callable[[Image.Image], torch.Tensor],
        keep_original: Callable[[str, bytes], object] | None,
        *,
        max_pixels: int,
        max_frames: int,
        clock: StageClock,
        timeout_s: float = DECODE_TIMEOUT_S,
        reduce_for: int | None = None,
    ) -> None:
        self.fetch, self.find_indexed, self.preprocess = fetch, find_indexed, preprocess
        self.keep_original, self.max_pixels, self.max_frames, self.clock = keep_original, max_pixels, max_frames, clock
        self.timeout_s, self.reduce_for = timeout_s, reduce_for

    def __call__(self, position: int, spec: Any) -> Prepared | Settled:
        """The item ready to embed, or its settled outcome. Errors of the item itself (unreadable, not an image)
        settle it as failed; errors of the engine's own storage (catalog, disk) propagate and fail the job, so
        that its items stay pending for a retry instead of being marked failed for a reason not theirs."""
        start = time.perf_counter()
        try:
            data = self.fetch(spec)
        except SourceError as exc:
            return Settled(position, "failed", str(exc))
        except Exception as exc:
            return _unexpected(position, exc)
        sha = hashlib.sha256(data).hexdigest()
        self.clock.add("fetch_s", time.perf_counter() - start)
        existing = self.find_indexed(sha)
        if existing is not None:
            # Checked before decoding, so re-running a folder costs one hash per known image, not a decode.
            return Settled(position, "skipped", f"duplicate of image {existing}", existing)
        start = time.perf_counter()
        try:
            decoded = decode_image(
                data, max_pixels=self.max_pixels, max_frames=self.max_frames, timeout_s=self.timeout_s,
                reduce_for=self.reduce_for,
            )  # fmt: skip
            pixels = self.preprocess(decoded.image)
        except DecodeError as exc:
            return Settled(position, "failed", str(exc))
        except Exception as exc:
            return _unexpected(position, exc)
        if self.keep_original is not None:
            self.keep_original(sha, data)
        self.clock.add("decode_s", time.perf_counter() - start)
        return Prepared(
            position, sha, spec.display, len(data), decoded.width, decoded.height, decoded.format, spec.meta, pixels
        )


def _unexpected(position: int, exc: Exception) -> Settled:
    # The last line of defence: one bad input must never stop the job.
    log.exception("unexpected error preparing item", extra={"position": position})
    return Settled(position, "failed", f"unexpected error: {type(exc).__name__}: {exc}")
