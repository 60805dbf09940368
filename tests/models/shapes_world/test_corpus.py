"""Corpus helpers: contrastive pairs, QA streams, the demo corpus on disk, tokenizer text."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from internvl_models.shapes_world import (
    LANGUAGES,
    CaptionContent,
    generate_scene,
    iter_pairs,
    iter_qa,
    iter_texts,
    scene_satisfies,
    split_of,
    write_demo_corpus,
)


def test_pairs_are_balanced_true_and_deterministic() -> None:
    pairs = list(iter_pairs("train", 24, LANGUAGES, seed=5, size=64))
    assert Counter(p.language for p in pairs) == {code: 4 for code in LANGUAGES}
    assert len({p.scene.seed for p in pairs}) == 24
    for pair in pairs:
        assert pair.image.size == (64, 64) and pair.caption
        assert pair.content.complete and scene_satisfies(pair.scene, pair.content)
        assert split_of(pair.scene.seed) == "train"
    again = list(iter_pairs("train", 24, LANGUAGES, seed=5, size=64))
    assert [p.caption for p in again] == [p.caption for p in pairs]
    assert np.array_equal(np.asarray(again[3].image), np.asarray(pairs[3].image))


def test_query_style_pairs_and_language_subsets() -> None:
    pairs = list(iter_pairs("test", 6, ["zh", "de"], seed=1, size=32, style="query"))
    assert [p.language for p in pairs] == ["zh", "de"] * 3
    assert all(not p.content.complete and scene_satisfies(p.scene, p.content) for p in pairs)
    with pytest.raises(ValueError, match="Available"):
        next(iter_pairs("train", 1, ["xx"]))
    with pytest.raises(ValueError, match="Available"):
        next(iter_pairs("train", 1, style="long"))


def test_train_and_test_pairs_never_share_a_scene() -> None:
    train = {p.scene.seed for p in iter_pairs("train", 30, seed=0, size=32)}
    test = {p.scene.seed for p in iter_pairs("test", 30, seed=0, size=32)}
    assert not train & test


def test_qa_stream_is_deterministic() -> None:
    a = [(q.question, q.answer) for q in iter_qa("train", 21, ["en", "ja"], seed=2, size=32)]
    b = [(q.question, q.answer) for q in iter_qa("train", 21, ["en", "ja"], seed=2, size=32)]
    assert a == b and len(set(a)) > 15


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_demo_corpus(tmp_path, image_format: str) -> None:
    manifest = write_demo_corpus(tmp_path / "demo", 5, image_format=image_format, size=96)
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 5
    for record in records:
        image = Image.open(manifest.parent / record["path"])
        assert image.size == (96, 96) and image.format == image_format.upper()
        scene = generate_scene(record["seed"], size=96)
        assert [o.to_dict() for o in scene.objects] == record["objects"]
        assert set(record["captions"]) == set(LANGUAGES) == set(record["queries"])
        for caption in record["captions"].values():
            assert scene_satisfies(scene, CaptionContent.from_dict(caption["content"]))
        if image_format == "png":  # lossless: the file is exactly the generator's pixels
            assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(scene.image))


def test_texts_cover_every_language_and_the_prompt_prefix() -> None:
    texts = list(iter_texts(20))
    assert any(t.startswith("summarize:") for t in texts)
    assert any("<ref>" in t and "<box>" in t for t in texts)
    for marker in ("the", "的", "の", "ein", "une", "una"):
        assert any(marker in t for t in texts)
