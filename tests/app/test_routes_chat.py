"""/v1/ask, /v1/search with rerank "chat", /v1/chat/completions (JSON and SSE) and /v1/models through TestClient,
on a real engine (tiny InternVL encoder) and the scripted tiny chat checkpoint loaded by the real loaders.

The scripted model always answers `SCRIPT_TEXT` ("Yes, Image-2<ref>red star</ref><box>[[100, 200, 300, 400]]</box>")
with P("yes") = 0.9 for its first token, so what the service makes of an answer can be checked exactly.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat_factory import SCRIPT_TEXT, YES_PROBABILITY, make_tiny_chat_checkpoint
from fastapi.testclient import TestClient
from test_routes_search import make_client

from indexer.chat import ChatOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "indexer"))
from hostile import image_bytes  # noqa: E402

W = ChatOptions().rerank_weight  # the default weight of P(yes) in rerank scores

SIZES = [(40, 30), (64, 20), (30, 50), (44, 44)]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_chat_checkpoint(tmp_path_factory.mktemp("chat") / "scripted", scripted=True)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, scripted: Path) -> Iterator[TestClient]:
    yield from make_client(tmp_path_factory.mktemp("chat-api"), chat_model=str(scripted), max_text_chars=200)


@pytest.fixture(scope="module")
def ids(client: TestClient) -> list[int]:
    """Four indexed images of different sizes; their ids in upload order."""
    assert client.post("/v1/collections", json={"name": "pics"}).status_code == 201
    files = [("files", (f"im{i}.png", image_bytes("red", size, seed=i), "image/png")) for i, size in enumerate(SIZES)]
    response = client.post("/v1/index?wait=true", data={"collection": "pics"}, files=files)
    assert response.json()["job"]["done"] == 4, response.text
    hits = client.post("/v1/search", json={"collection": "pics", "text": "red", "k": 10}).json()["results"]
    return [hit["id"] for hit in sorted(hits, key=lambda h: h["source"])]


def assert_error(response, status: int, code: str | None = None) -> dict:  # noqa: ANN001 - httpx.Response
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "detail"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_ask_maps_citations_and_boxes_to_the_retrieved_images(client: TestClient, ids: list[int]) -> None:
    body = client.post("/v1/ask", json={"question": "Which image shows a red star?", "collection": "pics", "k": 4})
    assert body.status_code == 200, body.text
    answer = body.json()
    assert answer["found"] and answer["answer"] == SCRIPT_TEXT
    retrieved = [r["image_id"] for r in answer["retrieved"]]
    assert sorted(retrieved) == sorted(ids)
    for r in answer["retrieved"]:
        assert r["chat_score"] == pytest.approx(YES_PROBABILITY, abs=1e-3)
        assert r["rerank_score"] == pytest.approx(W * r["chat_score"] + (1 - W) * r["retrieval_score"])
    # The prompt holds the 4 best reranked images (max_images 4) as Image-1..4; "Image-2" is the second of them.
    prompt = [(p["label"], p["image_id"]) for p in answer["images"]]
    assert [label for label, _ in prompt] == ["Image-1", "Image-2", "Image-3", "Image-4"]
    assert [i for _, i in prompt] == [r["image_id"] for r in answer["retrieved"]]
    second = prompt[1][1]
    assert [(c["label"], c["image_id"], c["explicit"]) for c in answer["citations"]] == [("Image-2", second, True)]
    width, height = SIZES[ids.index(second)]
    [box] = answer["boxes"]
    assert box["ref"] == "red star" and box["image_id"] == second and box["box_1000"] == [100, 200, 300, 400]
    assert box["box"] == pytest.approx([0.1 * width, 0.2 * height, 0.3 * width, 0.4 * height])
    assert answer["citations"][0]["image_url"] == f"/v1/images/{second}/content?collection=pics"


def test_only_the_prompt_images_can_be_cited(client: TestClient, ids: list[int]) -> None:
    """One image in the prompt: "Image-2" names nothing, is reported as ignored, and the box lands on that image."""
    answer = client.post("/v1/ask", json={"question": "Is it red?", "collection": "pics", "max_images": 1}).json()
    [only] = answer["images"]
    assert answer["ignored_citations"] == ["Image-2"]
    assert [(c["image_id"], c["explicit"]) for c in answer["citations"]] == [(only["image_id"], False)]
    width, height = SIZES[ids.index(only["image_id"])]
    assert answer["boxes"][0]["image_id"] == only["image_id"]
    assert answer["boxes"][0]["box"] == pytest.approx([0.1 * width, 0.2 * height, 0.3 * width, 0.4 * height])


def test_not_found_when_no_image_reaches_the_threshold(client: TestClient) -> None:
    response = client.post("/v1/ask", json={"question": "a blue whale?", "collection": "pics", "threshold": 0.95})
    answer = response.json()
    assert response.status_code == 200 and not answer["found"]
    assert answer["answer"].startswith("Not found") and answer["citations"] == [] and answer["boxes"] == []
    assert answer["images"] == [] and len(answer["retrieved"]) == 4  # what was looked at is still reported
    assert all(r["chat_score"] < 0.95 for r in answer["retrieved"])


def test_ask_about_chosen_images(client: TestClient, ids: list[int]) -> None:
    chosen = [ids[2], ids[0]]
    answer = client.post("/v1/ask", json={"question": "Where?", "collection": "pics", "image_ids": chosen}).json()
    assert answer["retrieved"] == [] and [p["image_id"] for p in answer["images"]] == chosen
    assert answer["citations"][0]["image_id"] == ids[0]  # "Image-2" is the second image given
    width, height = SIZES[0]
    assert answer["boxes"][0]["box"] == pytest.approx([0.1 * width, 0.2 * height, 0.3 * width, 0.4 * height])


def test_search_rerank_chat_returns_both_scores(client: TestClient, ids: list[int]) -> None:
    plain = client.post("/v1/search", json={"collection": "pics", "text": "a red star", "k": 3}).json()["results"]
    assert all(hit["chat_score"] is None for hit in plain)
    body = {"collection": "pics", "text": "a red star", "k": 3, "rerank": "chat", "rerank_top_n": 4}
    reranked = client.post("/v1/search", json=body).json()["results"]
    assert len(reranked) == 3
    scores = [hit["rerank_score"] for hit in reranked]
    assert scores == sorted(scores, reverse=True)
    for hit in reranked:
        assert hit["rerank_score"] == pytest.approx(W * hit["chat_score"] + (1 - W) * hit["score"])


def chat(client: TestClient, content: object, **extra: object):  # noqa: ANN201 - httpx.Response
    messages = [{"role": "user", "content": content}]
    return client.post("/v1/chat/completions", json={"model": "scripted", "messages": messages, **extra})


def data_url(size: tuple[int, int] = (40, 30)) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes("blue", size, seed=3)).decode()


def test_models_and_a_completion_with_images(client: TestClient, ids: list[int]) -> None:
    assert client.get("/v1/models").json()["data"][0]["id"] == "scripted"
    parts = [
        {"type": "image_url", "image_url": {"url": data_url()}},
        {"type": "image_url", "image_url": {"url": f"/v1/images/{ids[1]}/content?collection=pics"}},
        {"type": "text", "text": "Which one is red?"},
    ]
    response = chat(client, parts, temperature=0, logprobs=True, top_logprobs=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "scripted"
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": SCRIPT_TEXT} and choice["finish_reason"] == "stop"
    first = choice["logprobs"]["content"][0]
    assert first["token"] == "Yes" and len(first["top_logprobs"]) == 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def sse_events(text: str) -> list[str]:
    assert all(block.startswith("data: ") for block in text.strip().split("\n\n")), text
    return [block[len("data: ") :] for block in text.strip().split("\n\n")]


def test_streaming_follows_the_openai_sse_format(client: TestClient) -> None:
    with client.stream(
        "POST", "/v1/chat/completions",
        json={"model": "scripted", "stream": True, "temperature": 0, "stream_options": {"include_usage": True},
              "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url()}},
                                                        {"type": "text", "text": "Describe"}]}]},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "scripted" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == SCRIPT_TEXT
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 3
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 11


def test_stop_strings_and_max_tokens(client: TestClient) -> None:
    body = chat(client, "hi", temperature=0, stop=["<ref>"]).json()
    assert body["choices"][0]["message"]["content"] == "Yes, Image-2"
    body = chat(client, "hi", temperature=0, max_tokens=2).json()
    assert body["choices"][0] == {**body["choices"][0], "finish_reason": "length"}
    assert body["choices"][0]["message"]["content"] == "Yes,"


BAD_COMPLETIONS = [
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "not_found"),
    ({"model": "scripted", "messages": []}, 422, "invalid_input"),
    ({"model": "scripted", "messages": [{"role": "assistant", "content": "hi"}]}, 422, "invalid_input"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     422, "invalid_input"),
    ({"model": "scripted", "messages": [{"role": "robot", "content": "hi"}]}, 422, "invalid_input"),
    ({"model": "scripted", "n": 2, "messages": [{"role": "user", "content": "hi"}]}, 422, "invalid_input"),
    ({"model": "scripted", "temperature": 3, "messages": [{"role": "user", "content": "hi"}]}, 422, "invalid_input"),
    ({"model": "scripted", "stream": True, "logprobs": True, "messages": [{"role": "user", "content": "hi"}]},
     422, "invalid_input"),
    ({"model": "scripted", "top_logprobs": 2, "messages": [{"role": "user", "content": "hi"}]}, 422, "invalid_input"),
    ({"model": "scripted", "stop": ["a", "b", "c", "d", "e"], "messages": [{"role": "user", "content": "hi"}]},
     422, "invalid_input"),
    ({"model": "scripted", "messages": [{"role": "user", "content": [{"type": "audio", "data": "x"}]}]},
     422, "invalid_input"),
    ({"model": "scripted", "messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}, {"role": "user", "content": "x"}]},
     422, "invalid_input"),
    ({"model": "scripted", "messages": "hi"}, 422, "invalid_input"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "code"), BAD_COMPLETIONS)
def test_bad_completion_requests_are_4xx(client: TestClient, body: dict, status: int, code: str) -> None:
    assert_error(client.post("/v1/chat/completions", json=body), status, code)


@pytest.mark.parametrize(
    ("url", "status", "fragment"),
    [
        ("http://127.0.0.1:9/cat.png", 422, "loopback"),
        ("http://10.0.0.1/cat.png", 422, "private"),
        ("http://169.254.169.254/latest/meta-data/", 422, "metadata"),
        ("http://[::ffff:127.0.0.1]:9/cat.png", 422, "loopback"),
        ("ftp://example.org/cat.png", 422, "image_url must be"),
        ("cat.png", 422, "image_url must be"),
        ("data:image/png;base64,%%%", 422, "base64"),
        ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), 422, "query image"),
        ("/v1/images/999999/content?collection=pics", 404, "999999"),
        ("/v1/images/1/content", 422, "collection=NAME"),
        ("/v1/images/abc/content?collection=pics", 422, "collection=NAME"),
        ("/v1/images/1/content?collection=nope", 404, "nope"),
    ],
)
def test_bad_image_urls_are_4xx(client: TestClient, ids: list[int], url: str, status: int, fragment: str) -> None:
    error = assert_error(chat(client, [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]),
                         status)  # fmt: skip
    assert fragment in error["message"]


def test_too_many_images_is_422(client: TestClient) -> None:
    parts = [{"type": "image_url", "image_url": {"url": data_url()}}] * 17
    assert "at most 16" in assert_error(chat(client, parts), 422)["message"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"question": "", "collection": "pics"}, 422),
        ({"question": "x", "collection": "nope"}, 404),
        ({"question": "x", "collection": "pics", "k": 0}, 422),
        ({"question": "x", "collection": "pics", "threshold": 1.5}, 422),
        ({"question": "x", "collection": "pics", "image_ids": []}, 422),
        ({"question": "x", "collection": "pics", "image_ids": [999999]}, 404),
        ({"question": "x", "collection": "pics", "image_ids": [1] * 17}, 422),
        ({"question": "x", "collection": "pics", "image_ids": [1], "filter": {"a": 1}}, 422),
        ({"question": "x", "collection": "pics", "filter": {"a": {"bogus": 1}}}, 422),
        ({"question": "x" * 201, "collection": "pics"}, 422),
        ({"question": "x", "collection": "pics", "extra": 1}, 422),
    ],
)
def test_bad_ask_requests_are_4xx(client: TestClient, ids: list[int], body: dict, status: int) -> None:
    assert_error(client.post("/v1/ask", json=body), status)


def test_rerank_chat_needs_a_text_query(client: TestClient, ids: list[int]) -> None:
    body = {"collection": "pics", "image_id": ids[0], "k": 2, "rerank": "chat"}
    assert "text query" in assert_error(client.post("/v1/search", json=body), 422, "invalid_input")["message"]
    body = {"collection": "pics", "text": "red", "rerank": "llm"}
    assert_error(client.post("/v1/search", json=body), 422, "invalid_input")


def test_an_unloadable_chat_model_is_a_clear_503(tmp_path: Path) -> None:
    for client in make_client(tmp_path, chat_model=str(tmp_path / "missing")):
        assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        error = assert_error(client.post("/v1/ask", json={"question": "x", "collection": "c"}), 503, "chat_unavailable")
        assert "INTERNVL_SEARCH_CHAT_MODEL" in error["message"]
        assert client.get("/healthz").status_code == 200  # the rest of the service is unaffected


def test_chat_settings_are_checked_and_the_key_is_masked(clean_env: pytest.MonkeyPatch) -> None:
    from app.settings import SettingsError, load_settings

    clean_env.setenv("INTERNVL_SEARCH_CHAT_URL", "127.0.0.1:23333/v1")
    with pytest.raises(SettingsError, match="INTERNVL_SEARCH_CHAT_URL: must be an http"):
        load_settings()
    clean_env.setenv("INTERNVL_SEARCH_CHAT_URL", "http://127.0.0.1:23333/v1")
    clean_env.setenv("INTERNVL_SEARCH_CHAT_API_KEY", "sk-secret-0123456789")
    clean_env.setenv("INTERNVL_SEARCH_CHAT_THRESHOLD", "0.7")
    settings = load_settings()
    assert settings.chat_threshold == 0.7 and settings.public_dict()["chat_api_key"] == "***"
    assert "sk-secret" not in str(settings.public_dict())
    clean_env.setenv("INTERNVL_SEARCH_CHAT_THRESHOLD", "2")
    with pytest.raises(SettingsError, match="INTERNVL_SEARCH_CHAT_THRESHOLD"):
        load_settings()
