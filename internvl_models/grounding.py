"""Reading an InternVL answer: which images it cites ("Image-2") and where it points (`<ref>…</ref><box>[[…]]</box>`).

InternVL2/2.5 refer to the images of a multi-image prompt by the labels of the prompt (`Image-1: <image>\\n…`) and
ground phrases with boxes `[[x1, y1, x2, y2]]` in a 0-1000 frame relative to the whole image (the tiles and the
thumbnail all cover the whole image, so the frame is the original image's). A `<box>` may hold several boxes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BOX_SCALE = 1000
_IMAGE_REF = re.compile(r"\bImage[-_ ]?(\d{1,3})\b", re.IGNORECASE)
_GROUNDED = re.compile(r"(?:<ref>(?P<ref>.*?)</ref>\s*)?<box>(?P<boxes>.*?)</box>", re.DOTALL)
_ONE_BOX = re.compile(
    r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]"
)


@dataclass(frozen=True)
class ImageMention:
    number: int  # 1-based, as written
    start: int  # character offset in the answer


@dataclass(frozen=True)
class AnswerBox:
    ref: str | None  # the grounded phrase, when the box follows a <ref>
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the 0-1000 frame
    start: int  # character offset of the <ref> (or <box>) in the answer


def image_mentions(text: str) -> list[ImageMention]:
    """Every "Image-N" (also "image 2", "Image_3") in the answer, in order."""
    return [ImageMention(int(m.group(1)), m.start()) for m in _IMAGE_REF.finditer(text)]


def cited_images(text: str, num_images: int) -> tuple[list[int], list[int]]:
    """(valid image numbers cited, in order of first mention; numbers cited that the prompt does not have)."""
    valid, invalid = [], []
    for mention in image_mentions(text):
        bucket = valid if 1 <= mention.number <= num_images else invalid
        if mention.number not in bucket:
            bucket.append(mention.number)
    return valid, invalid


def answer_boxes(text: str) -> list[AnswerBox]:
    """Every box of the answer with the phrase it grounds; malformed boxes (not four numbers) are skipped."""
    out = []
    for match in _GROUNDED.finditer(text):
        ref = match.group("ref")
        for box in _ONE_BOX.finditer(match.group("boxes")):
            out.append(AnswerBox(ref.strip() if ref else None, tuple(float(v) for v in box.groups()), match.start()))
    return out


def box_image(text: str, box: AnswerBox, num_images: int) -> int | None:
    """The image number a box belongs to: the last valid "Image-N" before it; the only image of a one-image
    prompt; the only image the answer cites at all; otherwise unknown (None)."""
    before = [m.number for m in image_mentions(text[: box.start]) if 1 <= m.number <= num_images]
    if before:
        return before[-1]
    if num_images == 1:
        return 1
    cited, _ = cited_images(text, num_images)
    return cited[0] if len(cited) == 1 else None


def box_to_pixels(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...]:
    """A 0-1000 box -> pixel coordinates (x1, y1, x2, y2) of a width x height image, clamped to the image."""
    x1, y1, x2, y2 = box
    scale_x, scale_y = width / BOX_SCALE, height / BOX_SCALE
    return (
        min(max(x1 * scale_x, 0.0), width),
        min(max(y1 * scale_y, 0.0), height),
        min(max(x2 * scale_x, 0.0), width),
        min(max(y2 * scale_y, 0.0), height),
    )
