"""Questions are unambiguous, answers are verified against the scenes, and answer matching is tolerant."""

from __future__ import annotations

import random
import re

import pytest

from internvl_models.shapes_world import (
    LANGUAGES,
    QUESTION_KINDS,
    answer_matches,
    generate_scene,
    get_language,
    interpret,
    iter_qa,
    make_question,
    parse_boxes,
)

N_PER_KIND_AND_LANGUAGE = 6
_SLOT = re.compile(r"[{}]")


@pytest.fixture(scope="module")
def qas():
    n = len(QUESTION_KINDS) * len(LANGUAGES) * N_PER_KIND_AND_LANGUAGE
    return list(iter_qa("val", n, seed=11))


def _matching(ref, scene):
    return [o for o in scene.objects if ref.matches(o)]


def test_kinds_and_languages_are_balanced(qas) -> None:
    for kind in QUESTION_KINDS:
        for language in LANGUAGES:
            assert sum(q.kind == kind and q.language == language for q in qas) == N_PER_KIND_AND_LANGUAGE


def test_questions_are_well_formed_and_answers_are_canonical(qas) -> None:
    for qa in qas:
        assert qa.question and not _SLOT.search(qa.question), qa
        assert qa.answer and not _SLOT.search(qa.answer), qa
        assert answer_matches(qa.answer, qa.answer, qa.kind, qa.language)
        if qa.kind not in ("grounding",):
            assert interpret(qa.answer, qa.kind, qa.language) == qa.value, qa  # the answer is in the table
        assert all(s.split == "val" for s in qa.scenes)
        assert "<Ref>" not in qa.question


@pytest.mark.parametrize("kind", ["colour", "shape", "position"])
def test_attribute_questions_refer_to_exactly_one_object(qas, kind: str) -> None:
    for qa in (q for q in qas if q.kind == kind):
        (scene,) = qa.scenes
        (obj,) = _matching(qa.target, scene)  # unambiguous
        assert getattr(qa.target, kind) is None  # the question does not give its own answer away
        assert qa.value == getattr(obj, kind)
        assert qa.answer == get_language(qa.language).answer(kind, qa.value)


def test_count_answers(qas) -> None:
    counts = [q for q in qas if q.kind == "count"]
    for qa in counts:
        assert qa.value == len(_matching(qa.target, qa.scenes[0])) and qa.answer == str(qa.value)
    assert len({q.value for q in counts}) >= 3


def test_existence_answers_are_true_and_balanced(qas) -> None:
    existence = [q for q in qas if q.kind == "existence"]
    for qa in existence:
        assert qa.value == bool(_matching(qa.target, qa.scenes[0]))
    yes = sum(q.value for q in existence)
    assert yes == len(existence) // 2 or yes == (len(existence) + 1) // 2
    hard = [q for q in existence if not q.value and (q.target.colour and q.target.shape)]
    assert any(
        any(o.colour == q.target.colour or o.shape == q.target.shape for o in q.scenes[0].objects) for q in hard
    )  # near-miss negatives exist


def test_grounding_answers_parse_back_to_the_box(qas) -> None:
    for qa in (q for q in qas if q.kind == "grounding"):
        (obj,) = _matching(qa.target, qa.scenes[0])
        assert parse_boxes(qa.answer) == [tuple(float(v) for v in obj.box_1000)]
        ref = re.search(r"<ref>(.*?)</ref>", qa.answer).group(1)
        assert f"<ref>{ref}</ref>" in qa.question
        assert re.fullmatch(r"<ref>[^<]+</ref><box>\[\[\d+, \d+, \d+, \d+\]\]</box>", qa.answer)


def test_multi_image_answers_name_the_right_image(qas) -> None:
    multi = [q for q in qas if q.kind == "multi_image"]
    assert {len(q.scenes) for q in multi} >= {2, 3}
    for qa in multi:
        holds = [bool(_matching(qa.target, s)) for s in qa.scenes]
        assert holds.count(True) == 1 and holds.index(True) + 1 == qa.value
        assert qa.answer == f"Image-{qa.value}"
        assert qa.prompt().startswith("Image-1: <image>\nImage-2: <image>\n")


def test_single_image_prompt_and_images(qas) -> None:
    qa = next(q for q in qas if q.kind == "colour")
    assert qa.prompt() == "<image>\n" + qa.question
    assert qa.images[0].size == (224, 224)


def test_no_question_when_nothing_is_unique() -> None:
    # A scene with one object always has a unique reference; questions come back for every kind.
    scene = next(s for s in (generate_scene(i, max_objects=1) for i in range(5)))
    for kind in ("colour", "shape", "position", "count", "existence", "grounding"):
        assert make_question(kind, scene, "en", random.Random(0)) is not None
    with pytest.raises(ValueError, match="2-4 scenes"):
        make_question("multi_image", scene, "en", random.Random(0))


MATCHES = [
    ("Red.", "red", "colour", "en", True),
    ("The answer is: RED", "red", "colour", "en", True),
    ("violet", "purple", "colour", "en", True),
    ("blue", "red", "colour", "en", False),
    ("红色的。", "红色", "colour", "zh", True),
    ("赤です", "赤", "colour", "ja", True),
    ("Rot", "rot", "colour", "de", True),
    ("Verte", "vert", "colour", "fr", True),
    ("roja", "rojo", "colour", "es", True),
    ("a Star", "star", "shape", "en", True),
    ("une étoile", "étoile", "shape", "fr", True),
    ("ein Stern.", "Stern", "shape", "de", True),
    ("星形", "星", "shape", "ja", True),
    ("upper left", "top left", "position", "en", True),
    ("In the top-left corner", "top left", "position", "en", True),
    ("top right", "top left", "position", "en", False),
    ("en haut a gauche", "en haut à gauche", "position", "fr", True),
    ("izquierda", "a la izquierda", "position", "es", True),
    ("In der Mitte", "Mitte", "position", "de", True),
    ("左上", "左上角", "position", "zh", True),
    ("three", "3", "count", "en", True),
    ("三个", "3", "count", "zh", True),
    ("3つです", "3", "count", "ja", True),
    ("drei", "3", "count", "de", True),
    ("4", "3", "count", "en", False),
    ("Yes.", "yes", "existence", "en", True),
    ("no", "yes", "existence", "en", False),
    ("没有", "没有", "existence", "zh", True),
    ("有", "没有", "existence", "zh", False),
    ("Sí", "sí", "existence", "es", True),
    ("image 2", "Image-2", "multi_image", "en", True),
    ("The second image.", "Image-2", "multi_image", "en", True),
    ("第二张图片", "Image-2", "multi_image", "zh", True),
    ("2枚目の画像です", "Image-2", "multi_image", "ja", True),
    ("Bild 2", "Image-2", "multi_image", "de", True),
    ("Image-1", "Image-2", "multi_image", "en", False),
    ("<box>[[100, 100, 300, 300]]</box>", "<ref>b</ref><box>[[110, 105, 310, 300]]</box>", "grounding", "en", True),
    ("[[100, 100, 300, 300]]", "<ref>x</ref><box>[[500, 500, 700, 700]]</box>", "grounding", "en", False),
    ("no box here", "<ref>x</ref><box>[[500, 500, 700, 700]]</box>", "grounding", "en", False),
]  # fmt: skip


@pytest.mark.parametrize(("predicted", "gold", "kind", "language", "expected"), MATCHES)
def test_answer_matches(predicted: str, gold: str, kind: str, language: str, expected: bool) -> None:
    assert answer_matches(predicted, gold, kind, language) is expected
