"""The shipped shapes-world chat checkpoint, through the public inference path, against its quality floors; and the
trainer's determinism (a stopped and resumed run equals a straight one) on a micro config.

The floors are those of the model card: per-kind accuracy on held-out (test split) scenes, grounding boxes, and
the "looks at the image" gain of colour / shape accuracy over blank images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from internvl_models.shapes_world.evaluate_chat import evaluate_chat
from internvl_models.shapes_world.train_chat import Recipe, train

SHIPPED = Path(__file__).resolve().parents[3] / "internvl_models" / "shapes_world" / "weights" / "internvl-chat-shapes"
FLOORS = {"colour": 0.75, "shape": 0.75, "existence": 0.75, "count": 0.70, "position": 0.60, "multi_image": 0.70}
LOOK_GAIN = 0.4
IOU_RATE = 0.40
LANGUAGES = ("en", "zh", "ja", "de", "fr", "es")


@pytest.fixture(scope="module")
def report() -> dict:
    if not (SHIPPED / "model.safetensors").is_file():
        pytest.skip(f"no shipped checkpoint at {SHIPPED}")
    torch.set_num_threads(2)
    # 294 questions: 42 per kind, 7 per kind and language; a seed the model card's numbers do not use.
    return evaluate_chat(SHIPPED, n=294, seed=1, split="test", batch_size=49)


@pytest.mark.parametrize("kind", list(FLOORS))
def test_accuracy_per_kind_meets_floor(report: dict, kind: str) -> None:
    assert report["accuracy"][kind] >= FLOORS[kind], report["accuracy"]


@pytest.mark.parametrize("check", ["well_formed", "iou"])
def test_grounding_boxes(report: dict, check: str) -> None:
    grounding = report["grounding"]
    if check == "well_formed":
        assert grounding["well_formed"] == 1.0, grounding
    else:
        assert grounding["iou_at_0.5"] >= IOU_RATE, grounding


@pytest.mark.parametrize("kind", ["colour", "shape"])
def test_model_looks_at_the_image(report: dict, kind: str) -> None:
    assert report["looks_at_image"][kind]["gain"] >= LOOK_GAIN, report["looks_at_image"]


def test_every_language_is_answered(report: dict) -> None:
    per_language = report["language_accuracy"]
    assert set(per_language) == set(LANGUAGES)
    assert min(per_language.values()) > 0.2, per_language  # every language well above "never right"


def test_every_language_reaches_half(report: dict) -> None:
    assert min(report["language_accuracy"].values()) >= 0.5, report["language_accuracy"]


MICRO = Recipe(
    vision_width=32,
    vision_layers=1,
    vision_heads=2,
    llm_width=32,
    llm_layers=1,
    llm_heads=2,
    llm_kv_heads=1,
    attend_layer=0,  # the micro LM has one layer
    tokenizer_scenes=40,
    train_scenes=48,
    val_questions=14,
    vision_steps=2,
    vision_batch=8,
    steps=3,
    batch_size=6,
    eval_every=2,
    save_every=100,
)


def test_resumed_training_equals_straight_training(tmp_path: Path) -> None:
    """Stopped once in each stage and resumed, the export is bit-identical to an uninterrupted run's."""
    straight = tmp_path / "straight"
    train(straight, recipe=MICRO, vision=None, report=lambda _: None)
    resumed = tmp_path / "resumed"
    for stop in (1, 3, None):  # inside the vision stage, inside the QA stage, then to the end
        train(resumed, recipe=MICRO, vision=None, resume=stop != 1, stop_after=stop, report=lambda _: None)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert (straight / "config.json").read_text() == (resumed / "config.json").read_text()
    assert (straight / "tokenizer.json").read_bytes() == (resumed / "tokenizer.json").read_bytes()


def test_a_fresh_tower_without_stage_1_is_refused(tmp_path: Path) -> None:
    """No C/G checkpoint and no vision steps would train the chat on an untrained tower: a clear error instead."""
    with pytest.raises(ValueError, match="vision_steps"):
        train(tmp_path / "out", recipe=dataclasses.replace(MICRO, vision_steps=0), vision=None, report=lambda _: None)
    assert not (tmp_path / "out" / "model.safetensors").exists()
