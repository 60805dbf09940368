"""Chat through real `internvl-search serve` processes (uvicorn) with a tiny random chat checkpoint in the official
layout: the `openai` package as a client (JSON and streaming, images as data URLs and as this service's image
URLs), the remote backend (INTERNVL_SEARCH_CHAT_URL) pointed at a second instance of this server giving the same
answers as the in-process model, and `internvl-search ask` on the command line."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import serving
from chat_factory import make_tiny_chat_checkpoint
from factories import make_tiny_internvl_checkpoint
from openai import OpenAI

from internvl_models.shapes_world import write_demo_corpus

QUESTION = "Which image shows a red circle?"
STARTUP_S = 300  # a loaded 2-core machine can take minutes to start a server


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {"encoder": make_tiny_internvl_checkpoint(root / "enc"), "chat": make_tiny_chat_checkpoint(root / "chat")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    manifest = write_demo_corpus(tmp_path_factory.mktemp("corpus"), 6, size=64)
    return [manifest.parent / json.loads(line)["path"] for line in manifest.read_text().splitlines()]


def add_collection(base: str, corpus: list[Path]) -> None:
    assert httpx.post(f"{base}/v1/collections", json={"name": "shapes"}).status_code == 201
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in corpus]
    job = httpx.post(f"{base}/v1/index?wait=true", data={"collection": "shapes"}, files=files, timeout=120).json()
    assert job["job"]["done"] == len(corpus), job


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict, corpus: list[Path]) -> Iterator[str]:
    """A server with the chat model in process and the collection."""
    data = tmp_path_factory.mktemp("local") / "data"
    with serving.serve(data, encoder_checkpoint=str(checkpoints["encoder"]), chat_model=str(checkpoints["chat"]),
                       device="cpu", timeout_s=STARTUP_S) as base:  # fmt: skip
        add_collection(base, corpus)
        yield base


@pytest.fixture(scope="module")
def remote(
    tmp_path_factory: pytest.TempPathFactory, checkpoints: dict, corpus: list[Path], local: str
) -> Iterator[str]:
    """A second server with the same collection whose chat goes over HTTP to the first one."""
    data = tmp_path_factory.mktemp("remote") / "data"
    with serving.serve(data, encoder_checkpoint=str(checkpoints["encoder"]), chat_url=f"{local}/v1",
                       device="cpu", timeout_s=STARTUP_S) as base:  # fmt: skip
        add_collection(base, corpus)
        yield base


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def by_source(base: str) -> dict[int, str]:
    hits = httpx.post(f"{base}/v1/search", json={"collection": "shapes", "text": "x", "k": 50}).json()["results"]
    return {hit["id"]: hit["source"] for hit in hits}


def test_the_openai_client_gets_completions_with_images(local: str, corpus: list[Path]) -> None:
    client = OpenAI(base_url=f"{local}/v1", api_key="not-needed-on-loopback", max_retries=0)
    [model] = [m.id for m in client.models.list()]
    own = next(iter(by_source(local)))
    content = [
        {"type": "image_url", "image_url": {"url": data_url(corpus[0])}},
        {"type": "image_url", "image_url": {"url": f"/v1/images/{own}/content?collection=shapes"}},
        {"type": "text", "text": "What differs between the two images?"},
    ]
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": content}]
    completion = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12)
    answer = completion.choices[0].message.content
    assert isinstance(answer, str) and answer and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 20 and completion.usage.completion_tokens >= 1
    stream = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12,
                                            stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage.completion_tokens == completion.usage.completion_tokens
    sampled = client.chat.completions.create(model=model, messages=messages, temperature=1.0, seed=7, max_tokens=12)
    again = client.chat.completions.create(model=model, messages=messages, temperature=1.0, seed=7, max_tokens=12)
    assert sampled.choices[0].message.content == again.choices[0].message.content
    with pytest.raises(Exception, match="404") as refused:  # openai.NotFoundError, in our error schema
        client.chat.completions.create(model="gpt-4o", messages=messages)
    assert "not served here" in str(refused.value)


def ask(base: str, **body: object) -> dict:
    response = httpx.post(f"{base}/v1/ask", json={"collection": "shapes", **body}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def comparable(answer: dict, sources: dict[int, str]) -> dict:
    """An ask answer with image ids replaced by the images' sources (the two servers number images alike, but
    this does not depend on it) and scores rounded past float noise."""
    return {
        "answer": answer["answer"],
        "found": answer["found"],
        "images": [(p["label"], sources[p["image_id"]]) for p in answer["images"]],
        "citations": [(c["label"], sources[c["image_id"]], c["explicit"]) for c in answer["citations"]],
        "boxes": [(b["box_1000"], b["box"], b["image_id"] and sources[b["image_id"]]) for b in answer["boxes"]],
        "retrieved": [(sources[r["image_id"]], round(r["retrieval_score"], 5), r["chat_score"] and round(r["chat_score"], 5))
                      for r in answer["retrieved"]],
        "usage": answer["usage"],
    }  # fmt: skip


def test_the_remote_backend_gives_the_in_process_answers(local: str, remote: str) -> None:
    sources_local, sources_remote = by_source(local), by_source(remote)
    for body in ({"question": QUESTION, "k": 4, "threshold": 0.0, "max_tokens": 16},
                 {"question": QUESTION, "k": 6, "threshold": 0.0, "max_images": 2, "max_tokens": 16},
                 {"question": "Ist da ein blauer Stern?", "k": 3, "threshold": 1.0}):  # fmt: skip
        expected = comparable(ask(local, **body), sources_local)
        assert comparable(ask(remote, **body), sources_remote) == expected
    chosen = list(sources_local)[:3]
    chosen_remote = [next(i for i, s in sources_remote.items() if s == sources_local[c]) for c in chosen]
    expected = comparable(ask(local, question="Where is the circle?", image_ids=chosen), sources_local)
    assert comparable(ask(remote, question="Where is the circle?", image_ids=chosen_remote), sources_remote) == expected
    search = {"collection": "shapes", "text": "a red circle", "k": 3, "rerank": "chat", "rerank_top_n": 5}
    ranked = [httpx.post(f"{b}/v1/search", json=search, timeout=120).json()["results"] for b in (local, remote)]
    assert [(h["source"], round(h["chat_score"], 5), round(h["rerank_score"], 5)) for h in ranked[0]] == [
        (h["source"], round(h["chat_score"], 5), round(h["rerank_score"], 5)) for h in ranked[1]
    ]


def test_completions_through_the_remote_backend(local: str, remote: str, corpus: list[Path]) -> None:
    """The remote server serves the model it reaches (its /v1/models) and passes completions through, streamed too."""
    [model] = [m["id"] for m in httpx.get(f"{remote}/v1/models").json()["data"]]
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(corpus[1])}},
                                             {"type": "text", "text": "Describe it."}]}]  # fmt: skip
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 10}
    answers = [httpx.post(f"{b}/v1/chat/completions", json=body, timeout=60).json() for b in (local, remote)]
    assert answers[0]["choices"][0]["message"] == answers[1]["choices"][0]["message"]
    with httpx.stream("POST", f"{remote}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert streamed == answers[0]["choices"][0]["message"]["content"]


def test_an_unreachable_chat_server_is_a_clear_503(tmp_path: Path, checkpoints: dict) -> None:
    port = serving.free_port()
    settings = {"encoder_checkpoint": str(checkpoints["encoder"]), "chat_url": f"http://127.0.0.1:{port}/v1"}
    with serving.serve(tmp_path / "data", device="cpu", timeout_s=STARTUP_S, **settings) as base:
        response = httpx.get(f"{base}/v1/models", timeout=60)
        assert response.status_code == 503 and response.json()["error"]["code"] == "chat_unavailable"
        assert f"127.0.0.1:{port}" in response.json()["error"]["message"]


def test_the_cli_answers_like_the_server(tmp_path: Path, checkpoints: dict, corpus: list[Path]) -> None:
    data = tmp_path / "data"
    settings = {"encoder_checkpoint": str(checkpoints["encoder"]), "chat_model": str(checkpoints["chat"]),
                "device": "cpu"}  # fmt: skip
    with serving.serve(data, timeout_s=STARTUP_S, **settings) as base:
        add_collection(base, corpus)
        served = ask(base, question=QUESTION, k=4, threshold=0.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERNVL_SEARCH_")}
    env |= {"INTERNVL_SEARCH_DATA_DIR": str(data), **{f"INTERNVL_SEARCH_{k.upper()}": v for k, v in settings.items()}}
    command = [str(serving.BIN), "ask", QUESTION, "-c", "shapes", "-k", "4", "--threshold", "0"]
    done = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["answer"] == served["answer"]
    assert [c["image_id"] for c in result["citations"]] == [c["image_id"] for c in served["citations"]]
    assert [r["id"] for r in result["retrieved"]] == [r["image_id"] for r in served["retrieved"]]
    plain = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and plain.stdout.startswith(served["answer"]) and "retrieved image" in plain.stdout
    missing = subprocess.run([*command[:3], "-c", "nope"], env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
