"""to_rgb over every Pillow mode, EXIF orientation, and the two InternVL preprocessing pipelines."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from torchvision import transforms as T

from internvl_models.errors import InputError
from internvl_models.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    classification_transform,
    retrieval_transform,
    to_rgb,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PHOTOS = sorted((SHARED / "images").glob("*.jpg"))


def _rgb(image: Image.Image) -> np.ndarray:
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out).astype(int)


def _photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    # Smooth structure plus noise, so resampling differences would show up.
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


# --- to_rgb: one case per mode family ---------------------------------------------------------------------------


def test_rgb_is_returned_unchanged() -> None:
    image = _photo_like(8, 6)
    assert to_rgb(image) is image


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("1", 1, (255, 255, 255)),
        ("L", 77, (77, 77, 77)),
        ("CMYK", (255, 0, 0, 0), (0, 255, 255)),  # full cyan ink
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),  # no ink is paper white
        ("YCbCr", (255, 128, 128), (255, 255, 255)),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("RGBX", (10, 20, 30, 0), (10, 20, 30)),
    ],
)
def test_opaque_modes(mode: str, value: object, expected: tuple[int, int, int]) -> None:
    assert (_rgb(Image.new(mode, (3, 2), value)) == expected).all()


def test_lab_is_converted_colorimetrically() -> None:
    # L=255, a=b=128 is neutral white; a plain channel copy would give pink (255, 128, 128).
    assert (np.abs(_rgb(Image.new("LAB", (2, 2), (255, 128, 128))) - 255) <= 2).all()


def test_palette_with_and_without_transparency() -> None:
    palette = [255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6)  # index 0 red, index 1 blue
    image = Image.new("P", (2, 1))
    image.putpalette(palette)
    image.putpixel((1, 0), 1)
    assert _rgb(image).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    image.info["transparency"] = 1  # blue becomes transparent: white, not blue and not black
    assert _rgb(image).tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_palette_with_alpha_entries() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 255, 0, 0, 0, 0], rawmode="RGBA")  # index 0 opaque red, index 1 transparent
    image.putpixel((1, 0), 1)
    assert _rgb(image).tolist() == [[[255, 0, 0], [255, 255, 255]]]


@pytest.mark.parametrize("mode", ["RGBA", "RGBa"])
def test_rgba_is_composited_on_white(mode: str) -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    image.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    out = _rgb(image.convert(mode))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]
    assert np.all(np.abs(out[0, 2] - 127) <= 2)


def test_palette_plus_alpha_is_composited_on_white() -> None:
    # Built directly: Pillow's LA -> PA conversion drops the alpha band.
    image = Image.new("PA", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.putpixel((0, 0), (0, 0))  # red, fully transparent
    image.putpixel((1, 0), (1, 255))  # blue, opaque
    assert _rgb(image).tolist() == [[[255, 255, 255], [0, 0, 255]]]


@pytest.mark.parametrize("mode", ["LA", "La"])
def test_grey_alpha_is_composited_on_white(mode: str) -> None:
    image = Image.new("LA", (3, 1))
    image.putpixel((0, 0), (0, 0))
    image.putpixel((1, 0), (50, 255))
    image.putpixel((2, 0), (0, 128))
    out = _rgb(image.convert(mode))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert np.all(np.abs(out[0, 1] - 50) <= 1)
    assert np.all(np.abs(out[0, 2] - 127) <= 2)


def test_rgb_with_a_transparent_colour_key() -> None:
    image = Image.new("RGB", (2, 1), (0, 255, 0))
    image.putpixel((1, 0), (1, 2, 3))
    image.info["transparency"] = (1, 2, 3)
    assert _rgb(image).tolist() == [[[0, 255, 0], [255, 255, 255]]]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_gradient_keeps_order_and_spans_0_to_255(mode: str) -> None:
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)
    image = Image.fromarray(ramp)  # "I;16"
    image = image.convert(mode) if mode == "I" else _as_mode(image, mode)
    out = _rgb(image)[..., 0].ravel()
    assert out.min() == 0 and out.max() == 255
    assert (np.diff(out) >= 0).all() and len(np.unique(out)) > 200  # not clipped to a few grey levels
    assert (_rgb(image) == out.reshape(16, 16, 1)).all()  # grey: three equal channels


def _as_mode(image: Image.Image, mode: str) -> Image.Image:
    # A big-endian file decodes to "I;16B"; build one through raw bytes as a decoder would.
    if mode == "I;16":
        return image
    data = np.asarray(image).astype(">u2").tobytes()
    return Image.frombytes(mode, image.size, data)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0.0, 0.5, 1.0]]), [0, 128, 255]),  # float in 0..1
        (np.array([[0.0, 100.0, 255.0]]), [0, 100, 255]),  # float already in 8-bit range
        (np.array([[-1.0, 0.0, 1.0]]), [0, 128, 255]),  # any other range is stretched
        (np.array([[np.nan, 0.25, 1.0]]), [64, 64, 255]),  # NaN takes the darkest finite value
        (np.array([[3.0, 3.0, 3.0]]), [3, 3, 3]),  # constant image stays as it is
    ],
)
def test_float_images(values: np.ndarray, expected: list[int]) -> None:
    out = _rgb(_float_image(values))
    assert out[..., 0].ravel().tolist() == expected


def _float_image(values: np.ndarray) -> Image.Image:
    image = Image.fromarray(values.astype(np.float32))
    assert image.mode == "F"
    return image


def test_32_bit_integers_outside_16_bit_are_stretched() -> None:
    image = Image.fromarray(np.array([[-100000, 0, 100000]], dtype=np.int32))
    assert image.mode == "I"
    assert _rgb(image)[..., 0].ravel().tolist() == [0, 128, 255]


# --- EXIF orientation -----------------------------------------------------------------------------------------


def _jpeg_with_orientation(orientation: int) -> Image.Image:
    # Left half red, right half blue, 64 wide and 32 high; JPEG noise is small on flat blocks.
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    buffer.seek(0)
    return Image.open(buffer)


def test_exif_orientation_6_rotates_clockwise() -> None:
    image = _jpeg_with_orientation(6)
    assert image.size == (64, 32) and image.getexif()[ExifTags.Base.Orientation] == 6
    out = to_rgb(image)
    assert out.size == (32, 64)  # portrait now
    top, bottom = np.asarray(out)[8, 16].astype(int), np.asarray(out)[56, 16].astype(int)
    assert top[0] > 200 and top[2] < 60  # the left (red) side is on top after a 90° clockwise turn
    assert bottom[2] > 200 and bottom[0] < 60


def test_exif_orientation_1_changes_nothing() -> None:
    out = np.asarray(to_rgb(_jpeg_with_orientation(1))).astype(int)
    assert out.shape == (32, 64, 3) and out[16, 8, 0] > 200 and out[16, 56, 2] > 200


# --- the pipelines ---------------------------------------------------------------------------------------------


def _torchvision(size: int, crop: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    bicubic = T.InterpolationMode.BICUBIC
    resize = [T.Resize(size, interpolation=bicubic), T.CenterCrop(size)] if crop else [T.Resize((size, size), bicubic)]
    return T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])


@pytest.mark.parametrize(
    ("width", "height"), [(97, 61), (61, 97), (224, 224), (20, 30), (57, 56), (225, 224), (5, 300), (301, 7), (56, 89)]
)
def test_pipelines_equal_torchvision_exactly(width: int, height: int) -> None:
    image = _photo_like(width, height)
    for size in (32, 56, 224):
        squashed = retrieval_transform(size)(image)
        cropped = classification_transform(size)(image)
        assert squashed.dtype == cropped.dtype == torch.float32
        assert squashed.shape == cropped.shape == (3, size, size)
        assert torch.equal(squashed, _torchvision(size, crop=False)(image))
        assert torch.equal(cropped, _torchvision(size, crop=True)(image))


def test_retrieval_squashes_with_pil_bicubic_and_imagenet_stats() -> None:
    # Independent of torchvision: PIL resize, /255, ImageNet normalisation by hand.
    image = _photo_like(90, 40)
    expected = np.asarray(image.resize((48, 48), Image.Resampling.BICUBIC)).astype(np.float32) / 255
    expected = (expected - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    got = retrieval_transform(48)(image).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_classification_keeps_the_centre_without_squashing() -> None:
    # A wide image whose centre square is white and whose sides are black: the crop sees only white.
    pixels = np.zeros((40, 120, 3), dtype=np.uint8)
    pixels[:, 40:80] = 255
    out = classification_transform(40, mean=(0, 0, 0), std=(1, 1, 1))(Image.fromarray(pixels))
    assert torch.allclose(out, torch.ones_like(out))
    squashed = retrieval_transform(40, mean=(0, 0, 0), std=(1, 1, 1))(Image.fromarray(pixels))
    assert squashed[:, :, 0].max() < 0.05  # the squash keeps the black sides


def test_caller_given_mean_and_std() -> None:
    image = _photo_like(64, 48)
    got = classification_transform(32, mean=CLIP_MEAN, std=CLIP_STD)(image)
    assert torch.equal(got, _torchvision(32, crop=True, mean=CLIP_MEAN, std=CLIP_STD)(image))
    assert not torch.equal(got, classification_transform(32)(image))


@pytest.mark.parametrize("size", [(0, 5), (5, 0)])
def test_an_image_without_pixels_is_refused_clearly(size: tuple[int, int]) -> None:
    for transform in (retrieval_transform(16), classification_transform(16)):
        with pytest.raises(InputError, match="no pixels"):
            transform(Image.new("RGB", size))


def test_pipelines_take_any_mode() -> None:
    rgba = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    out = retrieval_transform(16, mean=(0, 0, 0), std=(1, 1, 1))(rgba)
    assert out.shape == (3, 16, 16) and torch.allclose(out, torch.ones_like(out))  # transparent -> white
    assert classification_transform(16)(Image.new("I;16", (30, 20), 1000)).shape == (3, 16, 16)


def test_bad_arguments_and_inputs() -> None:
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="size"):
            retrieval_transform(size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mean"):
        classification_transform(8, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="std"):
        classification_transform(8, std=(0.2, 0.0, 0.2))
    with pytest.raises(InputError):
        to_rgb(np.zeros((4, 4, 3), dtype=np.uint8))  # type: ignore[arg-type]


def test_truncated_file_is_an_input_error() -> None:
    buffer = io.BytesIO()
    _photo_like(64, 64).save(buffer, "PNG")
    image = Image.open(io.BytesIO(buffer.getvalue()[: len(buffer.getvalue()) // 2]))
    with pytest.raises(InputError, match="decode"):
        to_rgb(image)


# --- real photos ----------------------------------------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.skipif(not PHOTOS, reason=f"reference photos {SHARED / 'images'} are absent (a fresh clone)")
def test_real_photos() -> None:
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for path in PHOTOS:
        with Image.open(path) as image:
            for transform in (retrieval_transform(224), classification_transform(224)):
                out = transform(image)
                assert out.shape == (3, 224, 224) and out.dtype == torch.float32
                assert torch.isfinite(out).all()
                assert (out >= lo[:, None, None] - 1e-6).all() and (out <= hi[:, None, None] + 1e-6).all()
                assert out.std() > 0.1  # a real picture, not a flat fill
