"""The page's "Ask" panel in a real headless Chromium (marker `browser`) against real `internvl-search serve`
processes: a question about an indexed collection, answered by the scripted tiny chat checkpoint (loaded by the real
loaders), shows the answer, the cited image highlighted and the grounding box drawn where the response puts it;
a high relevance threshold shows "not found"; a server whose chat model cannot load shows its error as a message.

The scripted model always answers "Yes, Image-2<ref>red star</ref><box>[[100, 200, 300, 400]]</box>", so the box
is known in 0-1000 units; the images have different aspect ratios, so a mix-up of width and height shows.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
import serving
from chat_factory import make_tiny_chat_checkpoint
from factories import make_tiny_internvl_checkpoint
from PIL import Image, ImageDraw
from test_web import browser  # noqa: F401 - fixture used by name

pytestmark = pytest.mark.browser

STARTUP_S = 300  # a loaded 2-core machine can take minutes to start a server
SLOW = {"device": "cpu", "timeout_s": STARTUP_S, "request_timeout_s": "300"}  # the first ask loads the chat model
SIZES = {"wide.png": (160, 64), "tall.png": (60, 150), "square.png": (96, 96), "odd.png": (130, 90)}
TOLERANCE_PX = 1.0  # rounding of the layout to device pixels


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "encoder": make_tiny_internvl_checkpoint(root / "enc"),
        "chat": make_tiny_chat_checkpoint(root / "chat", scripted=True),
    }


def png(size: tuple[int, int], seed: int) -> bytes:
    image = Image.new("RGB", size, (240, 240, 240))
    w, h = size
    ImageDraw.Draw(image).ellipse([w // 4, h // 4, w // 4 + w // (2 + seed % 2), 3 * h // 4], fill=(200, 30, 40))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def new_page(chromium, base: str):  # noqa: ANN001, ANN201 - playwright Browser and Page
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)  # a busy two-core machine runs the models and the browser together
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/")
    page.wait_for_selector("#collection option[value=shapes]", state="attached")
    return page, errors


def ask(page, question: str, status: int = 200) -> dict:  # noqa: ANN001 - playwright Page
    """Type the question and submit it with the keyboard; the body of the /v1/ask response the page received."""
    page.fill("#question", question)
    with page.expect_response(lambda r: r.url.endswith("/v1/ask")) as reply:
        page.press("#question", "Enter")
    assert reply.value.status == status, reply.value.text()
    return reply.value.json()


def check_box_geometry(page, image_id: int, box: list[float], size: tuple[int, int]) -> None:  # noqa: ANN001
    """The drawn box is the response's pixel box scaled from the original size to the image's rendered size."""
    img = page.locator(f"#ask-figures img[data-image-id='{image_id}']")
    page.wait_for_function(
        "(id) => { const im = document.querySelector(`#ask-figures img[data-image-id='${id}']`);"
        " return im && im.complete && im.naturalWidth > 0; }",
        arg=image_id,
    )
    shown, drawn = img.bounding_box(), page.locator("#ask-figures .gbox").bounding_box()
    sx, sy = shown["width"] / size[0], shown["height"] / size[1]
    assert sx == pytest.approx(sy, rel=0.02), "the image is drawn with its aspect ratio"
    expected = (shown["x"] + box[0] * sx, shown["y"] + box[1] * sy, (box[2] - box[0]) * sx, (box[3] - box[1]) * sy)
    got = (drawn["x"], drawn["y"], drawn["width"], drawn["height"])
    assert got == pytest.approx(expected, abs=TOLERANCE_PX), (got, expected, shown)


def test_ask_shows_answer_citation_and_box(browser, tmp_path: Path, checkpoints: dict) -> None:  # noqa: ANN001, F811
    settings = {"encoder_checkpoint": str(checkpoints["encoder"]), "chat_model": str(checkpoints["chat"])}
    with serving.serve(tmp_path / "data", **SLOW, **settings) as base:
        assert httpx.post(f"{base}/v1/collections", json={"name": "shapes"}, timeout=120).status_code == 201
        files = [("files", (name, png(size, i), "image/png")) for i, (name, size) in enumerate(SIZES.items())]
        job = httpx.post(f"{base}/v1/index?wait=true", data={"collection": "shapes"}, files=files, timeout=300).json()
        assert job["job"]["done"] == len(SIZES), job
        page, errors = new_page(browser, base)

        data = ask(page, "Which image shows a red star? Where is it?")
        assert data["found"] and len(data["images"]) == 4, data
        [cited] = data["citations"]
        [box] = data["boxes"]
        assert (cited["label"], box["image_id"], box["ref"]) == ("Image-2", cited["image_id"], "red star")
        record = httpx.get(f"{base}/v1/images/{cited['image_id']}", params={"collection": "shapes"}).json()
        size = SIZES[record["source"].removeprefix("upload:")]
        assert box["box"] == pytest.approx([0.1 * size[0], 0.2 * size[1], 0.3 * size[0], 0.4 * size[1]])

        page.wait_for_selector("#ask-figures .gbox")
        answer = page.inner_text("#ask-answer")
        assert answer.startswith("Yes, Image-2") and "red star" in answer and "<ref>" not in answer, answer
        assert page.inner_text("#ask-answer mark") == "red star"
        assert page.locator("#ask-images .thumb").count() == 4
        highlighted = page.locator("#ask-images .thumb.cited img")
        assert highlighted.count() == 1 and f"#{cited['image_id']}" in highlighted.get_attribute("alt")
        assert page.locator("#ask-figures .gbox").count() == 1
        assert page.inner_text("#ask-figures .gbox") == "red star"
        check_box_geometry(page, cited["image_id"], box["box"], size)
        assert page.locator(f"#ask-figures img[data-image-id='{cited['image_id']}']").bounding_box()["width"] > size[0]
        page.screenshot(path=tmp_path / "ask.png", full_page=True)

        page.set_viewport_size({"width": 300, "height": 800})  # the image shrinks; the box must follow it
        page.wait_for_function("document.querySelector('#ask-figures img').getBoundingClientRect().width < 280")
        check_box_geometry(page, cited["image_id"], box["box"], size)

        page.fill("#ask-threshold", "0.95")  # above the scripted P(yes) of 0.9: nothing is relevant
        data = ask(page, "Is there a blue whale?")
        assert not data["found"]
        page.wait_for_selector("#ask-answer.not-found")
        assert page.inner_text("#ask-answer").startswith("Not found")
        assert "retrieved images was relevant" in page.inner_text("#ask-notes")
        assert page.locator("#ask-figures .gbox").count() == 0 and page.locator("#ask-images .thumb").count() == 0
        assert not errors, errors


def test_ask_without_a_chat_model_shows_the_error(browser, tmp_path: Path, checkpoints: dict) -> None:  # noqa: ANN001, F811
    empty = tmp_path / "no-chat-model"
    empty.mkdir()
    settings = {"encoder_checkpoint": str(checkpoints["encoder"]), "chat_model": str(empty)}
    with serving.serve(tmp_path / "data", **SLOW, **settings) as base:
        assert httpx.post(f"{base}/v1/collections", json={"name": "shapes"}, timeout=120).status_code == 201
        page, errors = new_page(browser, base)
        error = ask(page, "Which image shows a red star?", status=503)["error"]
        assert error["code"] == "chat_unavailable"
        page.wait_for_selector("#ask-status.error")
        message = page.inner_text("#ask-status")
        assert message.startswith("Cannot answer: the chat model") and "INTERNVL_SEARCH_CHAT_URL" in message, message
        assert page.locator("#ask-result").is_hidden()
        assert page.locator("#ask-form button").is_enabled()  # the page is still usable
        assert not errors, errors
