"""Decode stage: every hostile file ends as a clear reason (or decodes, where the format is legitimate)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from hostile import animated_gif, exif_rotated_jpeg, hostile_corpus, image_bytes, png_declaring
from PIL import Image

from indexer.pipeline.decode import DecodeError, ItemPreparer, decode_image
from indexer.pipeline.flow import ItemSpec, Prepared, Settled, StageClock, ordered_map
from indexer.pipeline.paths import SourceError

LIMITS = {"max_pixels": 64_000_000, "max_frames": 5}


def test_hostile_files_fail_with_clear_reasons_and_legitimate_ones_decode(tmp_path: Path) -> None:
    expected = hostile_corpus(tmp_path)
    for name, reason in expected.items():
        data = (tmp_path / name).read_bytes()
        if reason is None:
            decoded = decode_image(data, **LIMITS)
            assert decoded.image.mode == "RGB" and decoded.image.size == (decoded.width, decoded.height), name
        else:
            with pytest.raises(DecodeError, match=reason):
                decode_image(data, **LIMITS)


def test_pixel_cap_is_checked_from_the_header_before_decoding() -> None:
    # 9000 x 9000 declared in a ~100-byte file: decoding it would allocate 243 MB; refusing must take no time.
    start = time.perf_counter()
    with pytest.raises(DecodeError, match="refused before decoding"):
        decode_image(png_declaring(9_000, 9_000), max_pixels=1_000_000, max_frames=5)
    assert time.perf_counter() - start < 0.5
    assert decode_image(image_bytes(size=(1000, 1000)), max_pixels=1_000_000, max_frames=5).width == 1000


def test_exif_orientation_modes_and_first_frame() -> None:
    rotated = decode_image(exif_rotated_jpeg(), **LIMITS)
    assert (rotated.width, rotated.height) == (20, 40)
    gif = decode_image(animated_gif(3), **LIMITS)
    assert gif.frames == 3 and gif.image.getpixel((0, 0)) == pytest.approx((0, 255, 0), abs=8)
    with pytest.raises(DecodeError, match="more than 5 frames"):
        decode_image(animated_gif(12), **LIMITS)
    for mode in ("L", "LA", "RGBA", "P", "I", "F", "1", "CMYK", "I;16"):
        out = io.BytesIO()
        Image.new(mode, (8, 6)).save(out, "TIFF")
        assert decode_image(out.getvalue(), **LIMITS).image.mode == "RGB", mode


def _preparer(fetch, find=lambda sha: None) -> ItemPreparer:  # noqa: ANN001
    return ItemPreparer(fetch, find, lambda im: __import__("torch").zeros(3, 4, 4), None, **LIMITS, clock=StageClock())


def test_preparer_turns_every_error_into_a_settled_item() -> None:
    good = image_bytes(seed=3)

    def fetch(spec: ItemSpec) -> bytes:
        if spec.ref == "missing":
            raise SourceError("no such file")
        if spec.ref == "boom":
            raise RuntimeError("a bug somewhere")
        return good if spec.ref == "good" else b"garbage"

    prepare = _preparer(fetch)
    assert isinstance(prepare(0, ItemSpec("path", "good")), Prepared)
    assert prepare(1, ItemSpec("path", "missing")) == Settled(1, "failed", "no such file")
    assert prepare(2, ItemSpec("path", "junk")).reason.startswith("not an image: the format is not recognised")
    assert prepare(3, ItemSpec("path", "boom")).reason == "unexpected error: RuntimeError: a bug somewhere"
    duplicate = _preparer(fetch, find=lambda sha: 42)(4, ItemSpec("path", "good"))
    assert duplicate == Settled(4, "skipped", "duplicate of image 42", 42)

    def catalog_down(sha: str) -> int | None:
        raise ConnectionError("catalog unreachable")

    # Not the item's fault: it must stay pending (the job fails and can be retried), not be marked failed.
    with pytest.raises(ConnectionError):
        _preparer(fetch, find=catalog_down)(5, ItemSpec("path", "good"))


def test_ordered_map_keeps_order_bounds_the_window_and_counts_waiting() -> None:
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow_square(x: int) -> int:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.01 if x % 3 else 0.03)
        with lock:
            in_flight[0] -= 1
        return x * x

    clock = StageClock()
    out = list(ordered_map(slow_square, ((i,) for i in range(30)), workers=3, window=4, clock=clock))
    assert out == [i * i for i in range(30)]
    assert peak[0] <= 4 and clock.wait_s > 0


def test_reduce_for_decodes_a_large_jpeg_reduced_and_keeps_the_original_size() -> None:
    from factories import photo_jpeg

    data = photo_jpeg((1600, 1000), orientation=6)  # upright 1000 x 1600
    full = decode_image(data, **LIMITS)
    reduced = decode_image(data, **LIMITS, reduce_for=100)
    assert (full.width, full.height) == (reduced.width, reduced.height) == (1000, 1600)
    assert full.image.size == (1000, 1600) and reduced.image.size == (250, 400)  # 1/4, upright
    png = image_bytes(size=(1600, 1000))
    assert decode_image(png, **LIMITS, reduce_for=100).image.size == (1600, 1000)
