"""Every domain exception maps to its documented status and the one error schema; nothing leaks a traceback."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from app.errors import DOMAIN_ERRORS, install_error_handlers
from indexer import errors as engine_errors
from internvl_models import errors as model_errors


def _instance(cls: type[Exception]) -> Exception:
    if cls is engine_errors.Busy:
        return cls("queue full", retry_after_s=2.4)
    if cls is engine_errors.SchemaNotCurrent:
        return cls("run `internvl-search db upgrade`", current=(), expected=("0001",))
    if cls is engine_errors.CorruptData:
        return cls("index file truncated", path="/x")
    return cls(f"{cls.__name__} happened")


class Body(BaseModel):
    n: int


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise/{index}")
    def raise_domain(index: int) -> None:
        raise _instance(DOMAIN_ERRORS[index][0])

    @app.get("/bug")
    def bug() -> None:
        raise RuntimeError("secret internal detail")

    @app.post("/typed")
    def typed(body: Body) -> dict[str, int]:
        return {"n": body.n}

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("index", range(len(DOMAIN_ERRORS)))
def test_domain_errors_map_to_their_status(client: TestClient, index: int) -> None:
    cls, status, code = DOMAIN_ERRORS[index]
    response = client.get(f"/raise/{index}")
    assert response.status_code == status
    assert response.json() == {"error": {"code": code, "message": str(_instance(cls)), "detail": None}}
    if cls is engine_errors.Busy:
        assert response.headers["Retry-After"] == "2"


def test_validation_errors_use_the_same_schema(client: TestClient) -> None:
    response = client.post("/typed", json={"n": "many"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and "body.n" in error["message"] and error["detail"]


def test_unexpected_errors_are_generic_500s(client: TestClient) -> None:
    response = client.get("/bug")
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.json()["error"]["code"] == "internal_error"


def test_every_exception_class_is_mapped() -> None:
    mapped = {cls for cls, _, _ in DOMAIN_ERRORS}
    for module, base in ((engine_errors, engine_errors.IndexerError), (model_errors, model_errors.ModelError)):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, base) and value is not base:
                assert value in mapped, f"{value.__name__} has no HTTP status"
