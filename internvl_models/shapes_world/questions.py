"""Questions with verified answers about one scene, or several (multi-image), in six languages.

Every question is unambiguous by construction: the object it refers to is named by a description that matches
exactly one object of the scene ("the star" only when there is one star), and multi-image questions target a
description that holds in exactly one image. Answers are canonical short strings in the question's language
(scored with answers.answer_matches); `QA.value` keeps the structured gold value next to them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .content import Mention
from .languages import get_language
from .scene import Scene, SceneObject
from .vocab import COLOURS, POSITIONS, SHAPES

QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "count", "position", "existence", "grounding", "multi_image")
MAX_IMAGES = 4  # a multi-image question is about 2 to MAX_IMAGES scenes
# Attribute sets a referring expression may use, in order of preference ("the red star" before "the star").
_REF_ATTRIBUTES: tuple[tuple[str, ...], ...] = (("colour", "shape"), ("shape",), ("colour",), ("position",))


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str
    language: str
    scenes: tuple[Scene, ...]
    value: Any  # structured gold: colour / shape / position id, int, bool, 0-1000 box, or 1-based image number
    target: Mention | None = None  # what the question refers to

    @property
    def images(self) -> list[Image.Image]:
        return [scene.image for scene in self.scenes]

    def prompt(self) -> str:
        """The user turn with InternVL image placeholders: "<image>\\n" for one image, and
        "Image-1: <image>\\nImage-2: <image>\\n…" for several (the InternVL model-card convention)."""
        if len(self.scenes) == 1:
            return "<image>\n" + self.question
        labels = "".join(f"Image-{i + 1}: <image>\n" for i in range(len(self.scenes)))
        return labels + self.question


def _restrict(obj: SceneObject, attributes: Sequence[str]) -> Mention:
    return Mention(**{a: getattr(obj, a) for a in attributes})


def unique_refs(scene: Scene, obj: SceneObject, exclude: str | None = None) -> list[Mention]:
    """Descriptions of `obj` that match no other object of `scene`, without attribute `exclude`."""
    refs = []
    for attributes in _REF_ATTRIBUTES:
        if exclude in attributes:
            continue
        ref = _restrict(obj, attributes)
        if sum(ref.matches(o) for o in scene.objects) == 1:
            refs.append(ref)
    return refs


def _pick_ref(scene: Scene, rng: random.Random, exclude: str | None) -> tuple[SceneObject, Mention] | None:
    # Position-only references ("the shape in the top left") are kept rarer than attribute references.
    options = [
        (obj, ref)
        for obj in scene.objects
        for ref in unique_refs(scene, obj, exclude)
        if ref.position is None or rng.random() < 0.3
    ]
    return rng.choice(options) if options else None


def _attribute_question(kind: str, scene: Scene, language: str, rng: random.Random) -> QA | None:
    """colour / shape / position questions: ask for one attribute of a uniquely described object."""
    picked = _pick_ref(scene, rng, exclude=kind)
    if picked is None:
        return None
    obj, ref = picked
    lang = get_language(language)
    value = getattr(obj, kind)
    return QA(lang.question(kind, ref, rng), lang.answer(kind, value), kind, language, (scene,), value, ref)


def _count_question(scene: Scene, language: str, rng: random.Random) -> QA:
    attributes = rng.choice(((), ("colour",), ("shape",), ("colour", "shape")))
    if rng.random() < 0.75:  # mostly about what is there; otherwise any value, so "0" is a possible answer
        ref = _restrict(rng.choice(scene.objects), attributes)
    else:
        ref = Mention(
            colour=rng.choice(tuple(COLOURS)) if "colour" in attributes else None,
            shape=rng.choice(SHAPES) if "shape" in attributes else None,
        )
    value = sum(ref.matches(o) for o in scene.objects)
    lang = get_language(language)
    return QA(lang.question("count", ref, rng), lang.answer("count", value), "count", language, (scene,), value, ref)


def _negative_ref(scene: Scene, attributes: Sequence[str], rng: random.Random) -> Mention | None:
    """A description matching nothing in the scene; half the time a near miss (one attribute of a real
    object changed), so "no" cannot be answered from colour or shape alone."""
    choices = {"colour": tuple(COLOURS), "shape": SHAPES, "position": POSITIONS}
    for _ in range(50):
        if rng.random() < 0.5:
            base = _restrict(rng.choice(scene.objects), attributes)
            changed = rng.choice(attributes)
            ref = Mention(**{**vars(base), changed: rng.choice(choices[changed])})
        else:
            ref = Mention(**{a: rng.choice(choices[a]) for a in attributes})
        if not any(ref.matches(o) for o in scene.objects):
            return ref
    return None


def _existence_question(scene: Scene, language: str, rng: random.Random, want: bool | None) -> QA | None:
    """Is there ...? `want` fixes the answer (for balanced sets); None draws it."""
    want = rng.random() < 0.5 if want is None else want
    attributes = rng.choice((("colour", "shape"),) * 3 + (("shape",), ("colour",), ("colour", "shape", "position")))
    ref = _restrict(rng.choice(scene.objects), attributes) if want else _negative_ref(scene, attributes, rng)
    if ref is None:
        return None
    lang = get_language(language)
    return QA(
        lang.question("existence", ref, rng), lang.answer("existence", want), "existence", language, (scene,), want, ref
    )


def grounding_answer(ref_text: str, box: Sequence[int]) -> str:
    """InternVL grounding format: <ref>phrase</ref><box>[[x1, y1, x2, y2]]</box>, coordinates in 0-1000."""
    return f"<ref>{ref_text}</ref><box>[[{', '.join(str(int(v)) for v in box)}]]</box>"


def _grounding_question(scene: Scene, language: str, rng: random.Random) -> QA | None:
    picked = _pick_ref(scene, rng, exclude=None)
    if picked is None:
        return None
    obj, ref = picked
    lang = get_language(language)
    question, forms = lang.question_with_forms("grounding", ref, rng)
    answer = grounding_answer(forms["bare"], obj.box_1000)
    return QA(question, answer, "grounding", language, (scene,), obj.box_1000, ref)


def _multi_image_question(scenes: Sequence[Scene], language: str, rng: random.Random) -> QA | None:
    """Which image shows ...? The description holds in exactly one of the images."""
    options = []
    for attributes in (("colour", "shape"), ("colour", "shape"), ("shape",), ("colour",)):
        for index, scene in enumerate(scenes, start=1):
            for obj in scene.objects:
                ref = _restrict(obj, attributes)
                holds = [any(ref.matches(o) for o in s.objects) for s in scenes]
                if sum(holds) == 1:
                    options.append((ref, index))
    if not options:
        return None
    ref, index = rng.choice(options)
    lang = get_language(language)
    question = lang.question("multi_image", ref, rng)
    return QA(question, lang.answer("multi_image", index), "multi_image", language, tuple(scenes), index, ref)


def make_question(
    kind: str, scenes: Scene | Sequence[Scene], language: str, rng: random.Random, *, want: bool | None = None
) -> QA | None:
    """One question of `kind`, or None when the scene(s) admit none (e.g. no uniquely describable object).

    `scenes` is one scene, or 2-4 scenes for "multi_image". `want` fixes the answer of an existence question.
    """
    scene_list = [scenes] if isinstance(scenes, Scene) else list(scenes)
    if kind == "multi_image":
        if not 2 <= len(scene_list) <= MAX_IMAGES:
            raise ValueError(f"multi_image questions take 2-{MAX_IMAGES} scenes, got {len(scene_list)}")
        return _multi_image_question(scene_list, language, rng)
    if len(scene_list) != 1:
        raise ValueError(f"{kind} questions take exactly one scene, got {len(scene_list)}")
    scene = scene_list[0]
    if kind in ("colour", "shape", "position"):
        return _attribute_question(kind, scene, language, rng)
    if kind == "count":
        return _count_question(scene, language, rng)
    if kind == "existence":
        return _existence_question(scene, language, rng, want)
    if kind == "grounding":
        return _grounding_question(scene, language, rng)
    raise ValueError(f"Unknown question kind {kind!r}. Available: {list(QUESTION_KINDS)}")
