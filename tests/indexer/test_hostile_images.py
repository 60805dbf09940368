"""Hostile-image suite: each file of hostile/images.py decoded under the ingestion limits, refused with its own
reason or decoded upright to 8-bit RGB; and the decode time bound. The same corpus goes through a real ingestion
job in test_pipeline_hostile.py (failed ledger rows) and through HTTP in tests/app/test_routes_hostile.py (4xx)."""

from __future__ import annotations

import struct
import time

import pytest
from hostile.images import hostile_images

from indexer.pipeline.decode import IMAGE_FORMATS, DecodeError, decode_image

CORPUS = hostile_images()
LIMITS = {"max_pixels": 64_000_000, "max_frames": 5}


def test_the_corpus_is_large_and_mostly_hostile() -> None:
    refused = [name for name, (_, reason) in CORPUS.items() if reason is not None]
    assert len(CORPUS) >= 25 and len(refused) >= 25


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_each_file_is_refused_with_its_reason_or_decoded(name: str) -> None:
    data, reason = CORPUS[name]
    if reason is None:
        decoded = decode_image(data, **LIMITS)
        assert decoded.image.mode == "RGB" and decoded.format in IMAGE_FORMATS
        assert (decoded.width, decoded.height) == decoded.image.size
    else:
        with pytest.raises(DecodeError, match=reason):
            decode_image(data, **LIMITS)


def test_exif_rotation_is_applied() -> None:
    assert decode_image(CORPUS["rotated.jpg"][0], **LIMITS).image.size == (20, 40)


def _many_frame_gif(frames: int) -> bytes:
    """A GIF of `frames` 1x1 frames, written block by block (Pillow takes seconds to save this many)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    # Image descriptor at (0, 0), 1x1, then LZW data: minimum code size 2, one 2-byte block (clear, 0, end).
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame * frames + b";"


def test_a_decode_past_its_time_limit_is_stopped_and_refused() -> None:
    gif = _many_frame_gif(20_000)  # counting its frames walks every frame's blocks: Pillow reads as it goes
    start = time.monotonic()
    with pytest.raises(DecodeError, match="decoding took longer than the limit of 0.02 s"):
        decode_image(gif, max_pixels=10**6, max_frames=10**6, timeout_s=0.02)
    stopped_after = time.monotonic() - start
    start = time.monotonic()
    assert decode_image(gif, max_pixels=10**6, max_frames=10**6, timeout_s=60).frames == 20_000
    # Stopped part-way, not merely judged at the end (generous margin: the machine may be busy).
    assert stopped_after < max(0.5, (time.monotonic() - start) * 0.9)


def test_the_time_limit_also_judges_a_decode_that_finished_late() -> None:
    data = CORPUS["huge_exif.jpg"][0]
    with pytest.raises(DecodeError, match="decoding took longer"):
        decode_image(data, **LIMITS, timeout_s=1e-9)
