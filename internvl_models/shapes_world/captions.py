"""Captions of scenes in six languages, each paired with its structured meaning.

* `describe_scene` — retrieval captions that describe every object (colour, shape, coarse position, and with
  some probability size), in a template and word order chosen deterministically from (scene, language, seed).
* `query_caption` / `query_for` — short search-style phrases ("a red star", "红色的星星") about one object.
* `classification_prompts` — a zero-shot prompt ensemble per class and language.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .content import CaptionContent, Mention, mention_from_object
from .languages import get_language
from .scene import Scene
from .vocab import LANGUAGES, derive_seed

SIZE_MENTION_PROBABILITY = 0.3  # how often a retrieval caption also says "small"/"large"
QUERY_POSITION_PROBABILITY = 0.2  # how often a query adds the coarse position ("a red star on the left")


@dataclass(frozen=True)
class Caption:
    text: str
    language: str
    content: CaptionContent

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "language": self.language, "content": self.content.to_dict()}


def describe_scene(scene: Scene, language: str, seed: int = 0) -> Caption:
    """A caption describing every object of `scene`; different `seed`s give different wordings."""
    lang = get_language(language)
    rng = random.Random(derive_seed("caption", scene.seed, language, seed))
    with_size = rng.random() < SIZE_MENTION_PROBABILITY
    objects = list(scene.objects)
    rng.shuffle(objects)  # the order objects are mentioned in is part of the variety
    mentions = tuple(mention_from_object(o, position=True, size=with_size) for o in objects)
    return Caption(lang.caption(mentions, rng), language, CaptionContent(mentions, complete=True))


def scene_captions(scene: Scene, languages: Iterable[str] = LANGUAGES, seed: int = 0) -> dict[str, Caption]:
    """One retrieval caption per language."""
    return {code: describe_scene(scene, code, seed) for code in languages}


def query_for(mention: Mention, language: str, seed: int = 0) -> Caption:
    """A short query phrase for an arbitrary mention (it need not come from a scene)."""
    rng = random.Random(derive_seed("query", repr(mention), language, seed))
    text = get_language(language).query(mention, rng)
    return Caption(text, language, CaptionContent((mention,), complete=False))


def query_caption(scene: Scene, language: str, seed: int = 0) -> Caption:
    """A short query about one object of `scene` ("a red star"); the scene satisfies it by construction."""
    rng = random.Random(derive_seed("scene-query", scene.seed, language, seed))
    obj = rng.choice(scene.objects)
    mention = Mention(obj.colour, obj.shape, obj.position if rng.random() < QUERY_POSITION_PROBABILITY else None)
    return query_for(mention, language, rng.getrandbits(32))


def classification_prompts(language: str, colour: str | None = None, shape: str | None = None) -> list[str]:
    """Zero-shot prompt ensemble for the class (colour, shape); leave one out to classify by the other alone
    ("a photo of a star." / "a photo of a red shape.")."""
    if colour is None and shape is None:
        raise ValueError("a class needs a colour, a shape or both")
    return get_language(language).classification_prompts(Mention(colour, shape))


def classification_templates(language: str) -> tuple[str, ...]:
    """The raw templates behind `classification_prompts`; slots are noun-phrase forms such as {indef}."""
    return get_language(language).classification_templates
