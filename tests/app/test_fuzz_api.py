"""Fuzzing the HTTP API with schemathesis, from the service's own OpenAPI schema, against a real uvicorn server on
loopback (real engine: tiny encoder, SQLite, FAISS, the scripted tiny chat model; a collection named as in the schema's
examples holds images).

Every operation gets generated requests, valid and invalid; the checks are: no 5xx, every status code documented,
response bodies and headers as the schema says, and schema-invalid requests refused with a 4xx. Bounded here
(FUZZ_EXAMPLES per operation, default 6, derandomized, so a failure replays); `make fuzz` runs far more.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from chat_factory import make_tiny_chat_checkpoint
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "indexer"))
from hostile import cached_encoder_factory, engine_config, image_bytes  # noqa: E402

from app.main import create_app  # noqa: E402
from app.settings import load_settings  # noqa: E402
from indexer import Engine, IngestItem  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))


@schemathesis.check
def no_server_error_except_timeouts(ctx: schemathesis.CheckContext, response: schemathesis.Response, case) -> None:  # noqa: ANN001
    """No 5xx, except the documented 504 of the request time limit: a generated job of 10,000 unreachable URLs with
    wait=true may legitimately use up the limit on a busy machine, and the 504 is that limit doing its job."""
    if response.status_code >= 500 and response.status_code != 504:
        raise AssertionError(f"server error {response.status_code}: {response.text[:500]}")


CHECKS = [
    no_server_error_except_timeouts,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openapi() -> dict:
    """The schema the service publishes at /openapi.json (building the app opens nothing)."""
    return create_app(load_settings(data_dir=Path("unused"), device="cpu")).openapi()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    chat = make_tiny_chat_checkpoint(root / "chat", scripted=True)  # so the chat routes answer instead of a 503
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("INTERNVL_SEARCH_")]:
            mp.delenv(name)
        # A short request limit: generated `wait=true` jobs of 10,000 URLs would otherwise each wait most of a minute.
        app_settings = load_settings(
            data_dir=root / "data", device="cpu", request_timeout_s=4, max_k=50, chat_model=str(chat)
        )
    with Engine(engine_config(root, f"sqlite:///{root / 'catalog.db'}"), cached_encoder_factory).open() as engine:
        engine.create_collection("photos")
        items = [IngestItem.upload(image_bytes("red", seed=i), f"{i}.png", {"year": 2020 + i}) for i in range(6)]
        engine.wait_job(engine.submit("photos", items), timeout_s=60)
        port = _free_port()
        config = uvicorn.Config(create_app(app_settings, engine=engine), host="127.0.0.1", port=port,
                                log_level="warning", log_config=None, timeout_graceful_shutdown=2)  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(30)
            for job in engine.list_jobs(states=["queued", "running"], limit=10_000):
                engine.cancel_job(job.id)  # generated jobs need not run to their end


schema = schemathesis.openapi.from_dict(_openapi())


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_no_server_error_and_no_schema_violation(case: schemathesis.Case, base_url: str) -> None:
    case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=30)
