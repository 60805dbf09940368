"""`RemoteChatBackend` against real HTTP servers on 127.0.0.1 that misbehave on purpose: retries on 503, refusals,
timeouts, non-JSON, missing logprobs, broken streams, an unreachable port. (The well-behaved case, a real
internvl-search server, is in tests/e2e/test_chat_e2e.py.)"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from indexer.chat_backends import ChatRequest, RemoteChatBackend, Turn, openai_messages, render_turns
from indexer.errors import ChatUnavailable, UpstreamError, UpstreamTimeout
from internvl_models.chat_types import GenerationSettings

Reply = tuple[int, dict[str, str], bytes]


@contextmanager
def server(reply: Callable[[str, dict], Reply]) -> Iterator[tuple[str, list[dict]]]:
    """A real HTTP server; `reply(path, json body or {})` -> (status, headers, body). Yields (base URL, requests)."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            seen.append({"path": self.path, "body": body, "auth": self.headers.get("authorization")})
            status, headers, data = reply(self.path, body)
            self.send_response(status)
            for name, value in {"Content-Length": str(len(data)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer  # noqa: N815 - the http.server API

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def completion(text: str, logprobs: list | None = None) -> Reply:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
              "logprobs": None if logprobs is None else {"content": logprobs}}  # fmt: skip
    body = {"choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


REQUEST = ChatRequest.question("What is it?", [Image.new("RGB", (8, 8), "red")], GenerationSettings(max_new_tokens=4))


def test_retries_then_succeeds_and_sends_the_key() -> None:
    calls = []

    def reply(path: str, body: dict) -> Reply:
        calls.append(path)
        if path.endswith("/models"):
            return 200, {}, json.dumps({"data": [{"id": "m1"}, {"id": "m2"}]}).encode()
        return (503, {"Retry-After": "0"}, b"busy") if len(calls) < 4 else completion("a red square")

    with server(reply) as (base, seen):
        backend = RemoteChatBackend(base, api_key="k" * 20, backoff_s=0.01)
        assert backend.complete(REQUEST).text == "a red square"
    assert calls == ["/v1/models", "/v1/chat/completions", "/v1/chat/completions", "/v1/chat/completions"]
    body = seen[-1]["body"]
    assert seen[-1]["auth"] == "Bearer " + "k" * 20 and body["model"] == "m1"
    assert body["max_tokens"] == 4 and body["temperature"] == 0.0
    parts = body["messages"][0]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,") and parts[1]["text"] == "What is it?"


@pytest.mark.parametrize(
    ("reply", "error", "fragment"),
    [
        (
            (400, {}, b'{"error": {"message": "image too large"}}'),
            UpstreamError,
            "refused the request (400): image too",
        ),
        ((503, {}, b"down for maintenance"), ChatUnavailable, "unavailable (503)"),
        ((200, {}, b"<html>hello</html>"), UpstreamError, "not JSON"),
        ((200, {}, b'{"choices": []}'), UpstreamError, "unreadable completion"),
    ],
)
def test_refusals_become_one_clear_error(reply: Reply, error: type, fragment: str) -> None:
    with server(lambda path, body: reply) as (base, _):
        with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            RemoteChatBackend(base, model="m", retries=1, backoff_s=0.01).complete(REQUEST)


def test_a_slow_server_times_out() -> None:
    def slow(path: str, body: dict) -> Reply:
        time.sleep(1.5)
        return completion("late")

    with server(slow) as (base, seen):
        with pytest.raises(UpstreamTimeout, match="did not answer within 0.5 s"):
            RemoteChatBackend(base, model="m", timeout_s=0.5).complete(REQUEST)
    assert len(seen) == 1  # a timeout is not retried: the server may still be working on it


def test_an_unreachable_server_is_unavailable() -> None:
    with server(lambda path, body: completion("x")) as (base, _):
        pass  # closed again: nothing listens on that port now
    with pytest.raises(ChatUnavailable, match="unreachable"):
        RemoteChatBackend(base, model="m", retries=1, backoff_s=0.01).complete(REQUEST)


def test_rerank_reads_the_top_logprobs_and_needs_them() -> None:
    top = [{"token": "Yes", "logprob": -0.2}, {"token": "No", "logprob": -1.8}]
    with server(lambda path, body: completion("Yes", [{"token": "Yes", "logprob": -0.2, "top_logprobs": top}])) as (
        base,
        seen,
    ):
        assert RemoteChatBackend(base, model="m").first_token_logprobs(REQUEST.images[0], "q") == [
            ("Yes", -0.2),
            ("No", -1.8),
        ]
    assert seen[0]["body"]["logprobs"] is True and seen[0]["body"]["top_logprobs"] == 20
    assert seen[0]["body"]["max_tokens"] == 1
    with server(lambda path, body: completion("Yes")) as (base, _):
        with pytest.raises(UpstreamError, match="no logprobs"):
            RemoteChatBackend(base, model="m").first_token_logprobs(REQUEST.images[0], "q")


def sse(*events: str) -> Reply:
    return 200, {"Content-Type": "text/event-stream"}, "".join(f"data: {e}\n\n" for e in events).encode()


def test_streams_are_read_and_broken_streams_are_errors() -> None:
    chunk = json.dumps({"choices": [{"delta": {"content": "a red"}, "finish_reason": None}]})
    end = json.dumps({"choices": [{"delta": {}, "finish_reason": "length"}]})
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})
    with server(lambda path, body: sse(chunk, end, usage, "[DONE]")) as (base, seen):
        deltas = list(RemoteChatBackend(base, model="m").stream(REQUEST))
    assert seen[0]["body"]["stream"] is True
    assert [d.text for d in deltas] == ["a red", ""]
    assert (deltas[-1].finish_reason, deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == ("length", 9, 2)
    error = json.dumps({"error": {"code": "x", "message": "boom"}})
    with server(lambda path, body: sse(chunk, error)) as (base, _):
        with pytest.raises(UpstreamError, match="mid-stream"):
            list(RemoteChatBackend(base, model="m").stream(REQUEST))
    with server(lambda path, body: (404, {}, b'{"error": {"message": "no such model"}}')) as (base, _):
        with pytest.raises(UpstreamError, match="no such model"):  # refused before the first piece
            RemoteChatBackend(base, model="m").stream(REQUEST)


def test_turns_are_labelled_as_the_model_cards_do() -> None:
    turns = [Turn("user", "Compare.", 2), Turn("assistant", "ok"), Turn("user", "And this?", 1)]
    assert render_turns(turns) == [
        ("user", "Image-1: <image>\nImage-2: <image>\nCompare."),
        ("assistant", "ok"),
        ("user", "Image-3: <image>\nAnd this?"),
    ]
    assert render_turns([Turn("user", "Describe.", 1)]) == [("user", "<image>\nDescribe.")]
    assert render_turns([Turn("user", "<image> left, <image> right", 2)]) == [("user", "<image> left, <image> right")]
    request = ChatRequest(tuple(turns), tuple(Image.new("RGB", (4, 4)) for _ in range(3)), system="Be brief.")
    messages = openai_messages(request)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert [p["type"] for p in messages[1]["content"]] == ["image_url", "image_url", "text"]
