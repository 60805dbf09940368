"""PIL image -> normalised pixel tensor, the way the official InternVL-C/G evaluation does it (INTERNVL.md B.7).

Two pipelines, chosen by task (pitfall 8):

* `retrieval_transform`: squash to S×S with bicubic resampling, no crop;
* `classification_transform`: shorter side to S (bicubic), then centre-crop S×S.

Both then scale to [0, 1] and normalise with ImageNet mean/std (not CLIP's). Before either, `to_rgb` turns an
image of any Pillow mode into 8-bit RGB: EXIF orientation applied, transparency composited on white, 16-bit and
float images rescaled instead of clipped, CMYK/YCbCr/LAB converted colorimetrically by Pillow.

`reduce_jpeg_decode`, called on an image not yet decoded, lets a large JPEG decode at a fraction of its size
(an option of the callers that decode bytes; the official evaluation decodes every pixel).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# open_clip's OPENAI_DATASET_MEAN/STD, for callers that build a CLIP pipeline from these parts.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Transform = Callable[[Image.Image], torch.Tensor]

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WIDE_MODES = {"I", "F"}  # 32-bit integer and float grey; "I;16*" modes are handled by prefix
_WHITE = (255, 255, 255, 255)
# libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size by scaling in the DCT domain, skipping most of the
# inverse transforms and the colour conversion of pixels a resize would throw away (a 12 MP photo becomes ~0.8 MP
# for a 224 px model). Keeping both sides at least this many times the model's input before the bicubic resize
# keeps the preprocessed pixels within ~1 level in 255 of a full decode on average (bench/RESULTS.md, "Reduced
# JPEG decoding"); at 1x the resize has too little left to filter (mean error up to 7 levels).
JPEG_REDUCE_MARGIN = 2


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> an upright 8-bit RGB image; returns the input itself when it already is one.

    Raises:
        InputError: the object is not a Pillow image, its data cannot be decoded, or its mode has no RGB meaning.
    """
    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image, got {type(image).__name__}")
    try:
        image.load()  # decode now, so a truncated file fails here with a clear error rather than mid-resize
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot decode image: {e}") from e
    image = _upright(image)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I;16") or mode in _WIDE_MODES:
        return _grey_to_8bit(image).convert("RGB")
    if _has_alpha(image):
        return _composite_on_white(image)
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise InputError(f"cannot convert an image of mode {mode!r} to RGB: {e}") from e


def reduce_jpeg_decode(image: Image.Image, size: int) -> tuple[int, int] | None:
    """Before `image` is decoded: a JPEG will decode at the smallest of 1/1, 1/2, 1/4 and 1/8 scale that keeps
    both sides at least JPEG_REDUCE_MARGIN x `size`; other formats, and images already decoded, are left as they
    are. Returns the upright (width, height) the image had before, which its `size` no longer tells, or None when
    it was not reduced."""
    if image.format not in ("JPEG", "MPO"):
        return None  # (a PNG's EXIF may follow its pixels: reading it would decode them, and swallow their errors)
    width, height = image.size
    # Pillow ignores the request once the image is decoded (no tiles left to scale); a header it cannot scale
    # raises before changing anything, and that image decodes in full, as without the option.
    with contextlib.suppress(Exception):
        image.draft(None, (JPEG_REDUCE_MARGIN * size, JPEG_REDUCE_MARGIN * size))
    if image.size == (width, height):
        return None
    # Turned as `_upright` will turn it (a JPEG's EXIF is in its header: reading it decodes nothing).
    return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def retrieval_transform(
    size: int, *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Transform:
    """Image -> float32 (3, size, size): the whole image squashed to a square (InternVL retrieval evaluation)."""
    _check_args(size, mean, std)
    return ImageTransform(size, crop=False, mean=tuple(mean), std=tuple(std))


def classification_transform(
    size: int, *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Transform:
    """Image -> float32 (3, size, size): shorter side resized to `size`, then the centre square."""
    _check_args(size, mean, std)
    return ImageTransform(size, crop=True, mean=tuple(mean), std=tuple(std))


@dataclass(frozen=True)
class ImageTransform:
    """torchvision's `Compose([Resize, (CenterCrop), ToTensor, Normalize])` on a PIL image, step for step (the
    official clip_benchmark pipeline; tests hold the two equal bit for bit), after `to_rgb`. Written out because
    importing torchvision imports its models, ops and torch._dynamo: 2.9 s of the service's 7.2 s start-up on a
    CPU, for four operations that are PIL's resize and crop and two tensor ops. A dataclass, so it pickles."""

    size: int
    crop: bool  # False: squash to size x size; True: shorter side to size, then the centre square
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)
        if 0 in image.size:
            raise InputError(f"the image has no pixels ({image.size[0]} x {image.size[1]})")
        image = self._resize_and_crop(image)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        tensor = pixels.to(torch.float32).div(255)
        mean = torch.as_tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.as_tensor(self.std, dtype=torch.float32)[:, None, None]
        return tensor.sub_(mean).div_(std)

    def _resize_and_crop(self, image: Image.Image) -> Image.Image:
        size, (width, height) = self.size, image.size
        if not self.crop:
            target = (size, size)
        elif width <= height:  # shorter side to `size`, the longer one scaled and truncated, as torchvision does
            target = (size, int(size * height / width))
        else:
            target = (int(size * width / height), size)
        if target != image.size:
            image = image.resize(target, Image.Resampling.BICUBIC)
        if not self.crop:
            return image
        width, height = image.size
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
        return image.crop((left, top, left + size, top + size))


def _check_args(size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need one value per RGB channel, got {mean!r} and {std!r}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {std!r}")


def _upright(image: Image.Image) -> Image.Image:
    """Applies the EXIF orientation tag; phone photos are stored sideways and rely on it."""
    if _orientation(image) not in range(2, 9):
        return image  # skip exif_transpose's copy for the usual upright image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image  # malformed EXIF (see `_orientation`): the pixels are still usable


def _orientation(image: Image.Image) -> object:
    """The EXIF orientation tag (1..8 when valid), 1 when absent or unreadable: malformed EXIF is common in the wild
    and Pillow raises many types for it."""
    try:
        return image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return True
    # A palette can carry alpha per entry without a "transparency" key (e.g. some PNG and WebP decoders).
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _composite_on_white(image: Image.Image) -> Image.Image:
    # Transparent regions are usually "background": black (Pillow's plain RGB convert) would invent dark content.
    if image.mode == "La":
        image = image.convert("LA")  # Pillow converts premultiplied "La" only to "LA"
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float grey -> "L", rescaled; Pillow's own convert would clip at 255."""
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        values = values / 257.0  # the full 16-bit range onto 0..255 (65535 / 257 = 255)
    else:
        values = _wide_to_8bit_range(values, is_float=image.mode == "F")
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _wide_to_8bit_range(values: np.ndarray, *, is_float: bool) -> np.ndarray:
    # "I" and "F" do not say which range they use, so infer it from the data: the common conventions first
    # (float in 0..1, integers in 0..255 or 0..65535), a min-max stretch for anything else.
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    lo, hi = float(finite.min()), float(finite.max())
    values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    if is_float and lo >= 0.0 and hi <= 1.0:
        return values * 255.0
    if lo >= 0.0 and hi <= 255.0:
        return values
    if not is_float and lo >= 0.0 and hi <= 65535.0:
        return values / 257.0
    if hi == lo:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo) * 255.0
