"""Scoring short answers by normalised exact match, tolerant to case, punctuation, spacing and synonyms.

Both the prediction and the gold answer are normalised, stripped of fillers ("it is", "the", "です"), and mapped
through the language's answer table to a structured value (a colour id, a position id, an int, yes/no), which
is what gets compared. Grounding answers are compared by box IoU, multi-image answers by the image number.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

from .languages import Language, get_language

GROUNDING_IOU = 0.5  # the usual RefCOCO criterion
_CJK = ("zh", "ja")
# The evaluation regex of the official InternVL RefCOCO scorer (INTERNVL.md D.7).
_BOX_RE = re.compile(r"\[*\[(.*?),(.*?),(.*?),(.*?)\]\]*")


def normalise(text: str, language: str) -> str:
    """NFKC, case-folded, accents dropped (Latin scripts only: Japanese voiced marks are letters, not accents),
    punctuation and symbols turned into spaces, whitespace collapsed; CJK loses its spaces entirely."""
    text = unicodedata.normalize("NFKC", text).casefold()
    if language not in _CJK:
        decomposed = unicodedata.normalize("NFD", text)
        text = unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    joiner = "" if language in _CJK else " "
    return joiner.join(text.split())


def _strip_variants(text: str, lang: Language) -> list[str]:
    """`text` and what remains after removing filler prefixes / suffixes (repeatedly, e.g. "it is the ...")."""
    spaced = lang.code not in _CJK
    prefixes = [normalise(p, lang.code) for p in lang.answer_prefixes]
    suffixes = [normalise(s, lang.code) for s in lang.answer_suffixes]
    seen, frontier = [text], [text]
    while frontier:
        current = frontier.pop()
        for p in prefixes:
            head = p + " " if spaced else p
            if p and current.startswith(head) and len(current) > len(head):
                frontier.append(current[len(head) :])
        for s in suffixes:
            tail = " " + s if spaced else s
            if s and current.endswith(tail) and len(current) > len(tail):
                frontier.append(current[: -len(tail)])
        frontier = [f for f in frontier if f not in seen]
        seen.extend(frontier)
    return seen


@cache
def _table(language: str, kind: str) -> dict[str, object]:
    """Normalised surface form -> structured value, for one language and question kind."""
    lang = get_language(language)
    entries: dict[object, tuple[str, ...]]
    if kind == "colour":
        entries = dict(lang.colour_answers)
    elif kind == "shape":
        entries = dict(lang.shape_answers)
    elif kind == "position":
        entries = dict(lang.position_answers)
    elif kind == "existence":
        entries = {True: lang.yes_answers, False: lang.no_answers}
    elif kind == "count":
        entries = {n: (str(n), *words) for n, words in lang.number_words.items()}
    else:
        raise ValueError(f"no answer table for kind {kind!r}")
    return {normalise(surface, language): value for value, surfaces in entries.items() for surface in surfaces}


def interpret(answer: str, kind: str, language: str) -> object | None:
    """The structured value an answer denotes, or None if it is not recognised."""
    if kind == "grounding":
        boxes = parse_boxes(answer)
        return boxes[0] if boxes else None
    if kind == "multi_image":
        return image_index(answer, language)
    table = _table(language, kind)
    for variant in _strip_variants(normalise(answer, language), get_language(language)):
        if variant in table:
            return table[variant]
        if kind == "count" and variant.isdigit():
            return int(variant)
    return None


def answer_matches(predicted: str, gold: str, kind: str, language: str) -> bool:
    """Whether `predicted` says the same as the canonical `gold` answer of a question of `kind`."""
    if kind == "grounding":
        pred, want = parse_boxes(predicted), parse_boxes(gold)
        return bool(pred and want) and box_iou(pred[0], want[0]) >= GROUNDING_IOU
    want = interpret(gold, kind, language)
    if want is None:  # an answer outside the tables: fall back to plain normalised equality
        return normalise(predicted, language) == normalise(gold, language)
    return interpret(predicted, kind, language) == want


def parse_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """Every [[x1, y1, x2, y2]] box in `text`, in the 0-1000 frame, as the official RefCOCO scorer reads them."""
    boxes = []
    for match in _BOX_RE.finditer(text):
        try:
            boxes.append(tuple(float(v) for v in match.groups()))
        except ValueError:
            continue
    return boxes  # type: ignore[return-value]


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def image_index(answer: str, language: str) -> int | None:
    """The 1-based image number an answer names ("Image-2", "the second image", "第二张", "2枚目")."""
    text = normalise(answer, language)
    digits = {int(d) for d in re.findall(r"\d+", text)}
    if len(digits) == 1:
        return digits.pop()
    if digits:
        return None  # "image 1 or 2" names no single image
    lang = get_language(language)
    found = set()
    for n, words in (*lang.ordinal_words.items(), *lang.number_words.items()):
        for word in words:
            w = normalise(word, language)
            if language in _CJK and w in text or w in text.split():
                found.add(n)
    found.discard(0)
    return found.pop() if len(found) == 1 else None
