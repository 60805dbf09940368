"""Issue #7's accuracy evidence with the shipped shapes-world chat model, end to end through a real server.

Held-out (test split) questions in six languages go to /v1/ask about their own images (indexed first); the
service must answer exactly as the model does when called directly (so it loses nothing end to end), reach the
model card's held-out accuracy (`evaluation.json` beside the weights) within 0.05 in every language it reports,
cite the right image of multi-image questions at least as often as the card's multi-image accuracy says, return
the model's grounding boxes converted to pixels exactly, say "not found" about something absent and find what is
present. Chat rerank
must keep or improve R@1 of text-to-image search on held-out scenes.

These tests skip, with the reason, until the trained weights are shipped.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import serving

from indexer.chat import NOT_FOUND_ANSWER
from internvl_models.chat_model import GenerationSettings
from internvl_models.grounding import answer_boxes, box_to_pixels
from internvl_models.registry import SHAPES_WORLD_CHAT_CHECKPOINT, SHAPES_WORLD_CHECKPOINT, create_chat_model
from internvl_models.shapes_world import answer_matches, iter_qa, write_demo_corpus

TOLERANCE = 0.05

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    for path in (SHAPES_WORLD_CHAT_CHECKPOINT / "model.safetensors", SHAPES_WORLD_CHECKPOINT / "model.safetensors"):
        if not path.is_file():
            pytest.skip(f"the trained shapes-world weights are not shipped yet: {path} is absent")
    with serving.serve(tmp_path_factory.mktemp("sw") / "data", device="cpu", max_k="1000", request_timeout_s="600",
                       encoder_checkpoint=str(SHAPES_WORLD_CHECKPOINT),
                       chat_model=str(SHAPES_WORLD_CHAT_CHECKPOINT)) as base:  # fmt: skip
        yield base


def png(image) -> bytes:  # noqa: ANN001 - PIL image
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def index(base: str, collection: str, named: dict[str, bytes]) -> dict[str, int]:
    """Upload images under their names; name -> image id (equal images are stored once, under the first name)."""
    assert httpx.post(f"{base}/v1/collections", json={"name": collection}).status_code == 201
    files = [("files", (name, data, "image/png")) for name, data in named.items()]
    job = httpx.post(f"{base}/v1/index?wait=true", data={"collection": collection}, files=files, timeout=600).json()
    assert job["job"]["failed"] == 0, job
    hits = httpx.post(f"{base}/v1/search", json={"collection": collection, "text": "x", "k": 1000}).json()["results"]
    ids = {hit["source"].removeprefix("upload:"): hit["id"] for hit in hits}
    return {name: ids.get(name) or ids[_first_equal(name, named)] for name in named}


def _first_equal(name: str, named: dict[str, bytes]) -> str:
    return next(other for other, data in named.items() if data == named[name])


@pytest.fixture(scope="module")
def asked(server: str) -> list[tuple]:
    """(qa, service answer json, image ids) for every held-out question of the model card (the same questions, so
    a lossless service reproduces the card's figures, not just a sample's)."""
    card = json.loads((SHAPES_WORLD_CHAT_CHECKPOINT / "evaluation.json").read_text())
    questions = list(iter_qa(card["split"], card["questions"], seed=card["seed"]))
    named = {f"scene{s.seed}.png": png(s.image) for qa in questions for s in qa.scenes}
    ids = index(server, "heldout", named)
    out = []
    for qa in questions:
        image_ids = [ids[f"scene{s.seed}.png"] for s in qa.scenes]
        body = {"collection": "heldout", "question": qa.question, "image_ids": image_ids, "max_tokens": 48}
        response = httpx.post(f"{server}/v1/ask", json=body, timeout=600)
        assert response.status_code == 200, response.text
        out.append((qa, response.json(), image_ids))
    return out


def test_the_service_answers_exactly_as_the_model(asked: list[tuple]) -> None:
    model = create_chat_model(SHAPES_WORLD_CHAT_CHECKPOINT, device="cpu")
    settings = GenerationSettings(max_new_tokens=48)
    differ = [(qa.question, answer["answer"]) for qa, answer, _ in asked
              if model.answer(qa.images, qa.question, settings) != answer["answer"]]  # fmt: skip
    assert not differ, differ[:5]


def test_accuracy_matches_the_model_card_in_every_language(asked: list[tuple]) -> None:
    card = json.loads((SHAPES_WORLD_CHAT_CHECKPOINT / "evaluation.json").read_text())["language_accuracy"]
    by_language: dict[str, list[bool]] = {}
    for qa, answer, _ in asked:
        by_language.setdefault(qa.language, []).append(
            answer_matches(answer["answer"], qa.answer, qa.kind, qa.language)
        )
    got = {lang: sum(v) / len(v) for lang, v in by_language.items()}
    assert len(got) >= 3
    off = {lang: (got[lang], card[lang]) for lang in got if abs(got[lang] - card[lang]) > TOLERANCE}
    assert not off, f"(service, model card) beyond {TOLERANCE}: {off}"


def test_multi_image_answers_cite_the_right_image(asked: list[tuple]) -> None:
    card = json.loads((SHAPES_WORLD_CHAT_CHECKPOINT / "evaluation.json").read_text())["accuracy"]["multi_image"]
    multi = [(qa, answer, ids) for qa, answer, ids in asked if qa.kind == "multi_image"]
    right = [any(c["image_id"] == ids[qa.value - 1] for c in answer["citations"]) for qa, answer, ids in multi]
    assert sum(right) / len(right) >= card - TOLERANCE, (sum(right), len(right), card)
    assert all(c["image_id"] in ids for _, answer, ids in multi for c in answer["citations"])


def test_grounding_boxes_are_the_models_boxes_in_pixels(asked: list[tuple]) -> None:
    grounding = [(qa, answer) for qa, answer, _ in asked if qa.kind == "grounding"]
    for qa, answer in grounding:
        expected = [b.box for b in answer_boxes(answer["answer"])]
        assert [tuple(b["box_1000"]) for b in answer["boxes"]] == expected
        width, height = qa.images[0].size
        for box in answer["boxes"]:
            assert tuple(box["box"]) == box_to_pixels(tuple(box["box_1000"]), width, height)


@pytest.fixture(scope="module")
def few(server: str, asked: list[tuple]) -> list[tuple]:
    """Six held-out scenes indexed as the collection "few": (scene, image id) each."""
    scenes = list({s.seed: s for qa, _, _ in asked for s in qa.scenes}.values())[:6]
    ids = index(server, "few", {f"scene{s.seed}.png": png(s.image) for s in scenes})
    return [(scene, ids[f"scene{scene.seed}.png"]) for scene in scenes]


def _ask_few(server: str, colour: str, shape: str) -> dict:
    body = {"collection": "few", "question": f"Which image shows a {colour} {shape}?", "k": 6}
    response = httpx.post(f"{server}/v1/ask", json=body, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def test_absent_things_are_not_found(server: str, few: list[tuple]) -> None:
    """Every colour x shape pair of a fixed 16 that no image of the collection holds (about 13 questions, each
    judged on all six images): the explicit "not found" for at least 80% of them. A model whose yes/no ignored
    the image would call some image relevant for nearly every one. A rate, not "every one": the chat is 0.95 on
    held-out existence questions, so a few of ~80 relevance judgments go wrong (a small pink star passed for a
    "pink hexagon" at P(yes) 0.65), and a rate over many questions says more than all of three."""
    present = {(o.colour, o.shape) for s, _ in few for o in s.objects}
    absent = [(c, s) for c in ("pink", "black", "orange", "red") for s in ("hexagon", "star", "cross", "circle")
              if (c, s) not in present]  # fmt: skip
    assert len(absent) >= 10, absent
    answers = {pair: _ask_few(server, *pair) for pair in absent}
    wrong = {pair: a["answer"] for pair, a in answers.items() if a["found"] is not False or a["citations"]}
    assert len(wrong) <= 0.2 * len(absent), wrong
    for pair, answer in answers.items():
        if pair not in wrong:
            assert answer["answer"] == NOT_FOUND_ANSWER, (pair, answer)


def test_present_things_are_found(server: str, few: list[tuple]) -> None:
    """The counterpart (a model that never finds anything would pass the test above): asked about objects the
    collection holds, the answer is found and cites an image holding one, for at least two of three."""
    holders: dict[tuple[str, str], set[int]] = {}
    for scene, image_id in few:
        for o in scene.objects:
            holders.setdefault((o.colour, o.shape), set()).add(image_id)
    right = []
    for (colour, shape), image_ids in list(holders.items())[:3]:
        answer = _ask_few(server, colour, shape)
        cited = {c["image_id"] for c in answer["citations"]}
        right.append(answer["found"] is True and bool(cited & image_ids))
    assert sum(right) >= 2, right


def test_chat_rerank_keeps_or_improves_recall_at_1(server: str, tmp_path: Path) -> None:
    manifest = write_demo_corpus(tmp_path / "corpus", 60, split="test", size=224, seed=3)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    named = {Path(r["path"]).name: (manifest.parent / r["path"]).read_bytes() for r in records}
    ids = index(server, "rerank", named)
    plain = reranked = 0
    for record in records[:40]:
        target = ids[Path(record["path"]).name]
        body = {"collection": "rerank", "text": record["queries"]["en"]["text"], "k": 1}
        top = httpx.post(f"{server}/v1/search", json=body, timeout=600).json()["results"]
        plain += top[0]["id"] == target
        body |= {"rerank": "chat", "rerank_top_n": 10}
        top = httpx.post(f"{server}/v1/search", json=body, timeout=600).json()["results"]
        reranked += top[0]["id"] == target
    assert reranked >= plain, (reranked, plain)
