"""The hostile-image corpus: files built here from real encoders (Pillow, zlib, gzip) or written byte by byte,
each with the reason its refusal must give, or None for oddities that must be indexed.

Limits the expectations assume: max_frames=5 (so a 12-frame animation is refused) and the default pixel cap
(64,000,000), under Pillow's own bomb threshold (2 x 89,478,485 pixels), which the larger declarations exceed.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np
from PIL import Image

NOT_ACCEPTED = "not an image"  # the start of every refusal of content that is no accepted image format


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (the data is a few bytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _gif_declaring(width: int, height: int) -> bytes:
    # Logical screen and one image descriptor of width x height, a 2-colour table and a one-byte LZW stream.
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return screen + descriptor + b"\x02\x02\x44\x01\x00;"


def _bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 14 + 40) + info + b"\0" * 16


def _tiff_declaring(width: int, height: int) -> bytes:
    # Little-endian TIFF, one IFD: width, height, 8 bits, no compression, greyscale, one strip of 1 byte.
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 8 + 4), (278, 4, 1, height), (279, 4, 1, 1)]  # fmt: skip
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0"


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose SOF0 frame header is rewritten to claim width x height."""
    data = bytearray(_save(Image.new("RGB", (8, 8), "red"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _animation(fmt: str, frames: int, size: int = 24) -> bytes:
    images = [Image.new("RGB", (size, size), (i * 20 % 256, 255 - i * 20 % 256, i * 77 % 256)) for i in range(frames)]
    return _save(images[0], fmt, save_all=True, append_images=images[1:], duration=50, loop=0)


def _exif_jpeg(orientation: int, exif_padding: int = 0) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    if exif_padding:
        exif[0x010E] = "x" * exif_padding  # ImageDescription
    return _save(Image.new("RGB", (40, 20), "blue"), "JPEG", exif=exif)


def _with_corrupt_data(png: bytes) -> bytes:
    """The PNG with the middle of its compressed pixel data overwritten, its chunk checksum made to match: only the
    decoder can notice."""
    start = png.index(b"IDAT")
    length = struct.unpack(">I", png[start - 4 : start])[0]
    idat = bytearray(png[start + 4 : start + 4 + length])
    idat[len(idat) // 3 : len(idat) // 3 + 64] = b"\xa5" * 64
    return png[: start - 4] + _png_chunk(b"IDAT", bytes(idat)) + png[start + 8 + length :]


def _wide_modes() -> dict[str, bytes]:
    sixteen = Image.fromarray(np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 80)
    floats = Image.fromarray(np.linspace(0, 1, 32 * 24, dtype=np.float32).reshape(24, 32), mode="F")
    palette = Image.new("P", (20, 20), 3)
    palette.info["transparency"] = 3
    return {
        "sixteen_bit.png": _save(sixteen, "PNG"),
        "float.tif": _save(floats, "TIFF"),
        "palette_transparent.png": _save(palette, "PNG", transparency=3),
        "grey_alpha.png": _save(Image.new("LA", (20, 20), (120, 60)), "PNG"),
        "one_bit.bmp": _save(Image.new("1", (33, 17), 1), "BMP"),
        "cmyk.jpg": _save(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"),
    }


def hostile_images() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, reason fragment of the expected refusal, or None when the file must be indexed)."""
    jpeg = _save(_noise((64, 64), 1), "JPEG")
    png = _save(_noise((48, 32), 2), "PNG")
    refused = {
        "empty.jpg": (b"", "empty file"),
        "only_soi.jpg": (b"\xff\xd8", NOT_ACCEPTED),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "corrupt_zlib.png": (_with_corrupt_data(png), "truncated or corrupt"),
        "zero_width.png": (png_declaring(0, 10), NOT_ACCEPTED),
        "bomb.png": (png_declaring(100_000, 100_000), "decompression bomb"),
        "big_header.png": (png_declaring(9_000, 9_000), "refused before decoding"),
        "bomb.gif": (_gif_declaring(65_535, 65_535), "decompression bomb"),
        "big_header.gif": (_gif_declaring(9_000, 9_000), "refused before decoding"),
        "bomb.bmp": (_bmp_declaring(50_000, 50_000), "decompression bomb"),
        "bomb.tif": (_tiff_declaring(100_000, 100_000), "decompression bomb"),
        "bomb.jpg": (_jpeg_declaring(60_000, 60_000), "decompression bomb"),
        "too_many_frames.gif": (_animation("GIF", 12), "frames"),
        "too_many_frames.png": (_animation("PNG", 12), "frames"),
        "text.jpg": (b"this is not an image, just text\n" * 10, NOT_ACCEPTED),
        "page.png": (b"<!doctype html><html><body><img src=x></body></html>", NOT_ACCEPTED),
        "svg.png": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9999999"/>', NOT_ACCEPTED),
        "pdf.jpg": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n", NOT_ACCEPTED),
        "gzip_bomb.png": (gzip.compress(b"\0" * 5_000_000), NOT_ACCEPTED),  # a zip bomb is not an image either
        "random.jpg": (np.random.default_rng(9).integers(0, 256, 4096, dtype=np.uint8).tobytes(), NOT_ACCEPTED),
        "riff_junk.webp": (b"RIFF\x20\0\0\0WEBPVP8 " + b"\x13" * 24, "unreadable image header"),
        # Formats Pillow reads but this service does not (each one more parser facing untrusted bytes), and other
        # content, each under an image file name: the content decides, never the name.
        "pcx.png": (_save(Image.new("RGB", (16, 16), "red"), "PCX"), NOT_ACCEPTED),
        "ico.png": (_save(Image.new("RGB", (16, 16), "red"), "ICO"), NOT_ACCEPTED),
        "xbm.gif": (_save(Image.new("1", (16, 16), 1), "XBM"), NOT_ACCEPTED),
        "sgi.bmp": (_save(Image.new("RGB", (16, 16), "red"), "SGI"), NOT_ACCEPTED),
    }
    accepted = {
        **_wide_modes(),
        "animated.gif": _animation("GIF", 3),
        "animated.webp": _animation("WEBP", 3),
        "rotated.jpg": _exif_jpeg(6),
        "nonsense_orientation.jpg": _exif_jpeg(99),
        "huge_exif.jpg": _exif_jpeg(1, exif_padding=60_000),
        "jpeg_then_zip.jpg": _save(_noise((32, 32), 4), "JPEG") + gzip.compress(b"PK trailing archive"),
        "tiny.png": _save(Image.new("RGB", (1, 1), "white"), "PNG"),
        "extreme_aspect.png": _save(_noise((4000, 1), 5), "PNG"),
    }
    return {**refused, **{name: (data, None) for name, data in accepted.items()}}
