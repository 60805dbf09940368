"""The text-vector cache: a repeated text is encoded once per encoder, gets the vector it got when encoded, never
one of another encoder's space; least recently used entries go first; 0 entries turn it off. Wired into
`Engine.search` (the next page of a search does not encode its text again) and zero-shot classification."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from hostile import cached_encoder_factory, engine_config, image_bytes, tiny_checkpoint
from PIL import Image

from indexer import Engine, IngestItem
from indexer.classify import classify_images
from indexer.query_cache import TextVectorCache
from internvl_models import Encoder


class Counted:
    """A real encoder whose text passes are counted (and may carry another fingerprint)."""

    def __init__(self, encoder: Encoder, fingerprint: str | None = None) -> None:
        self.encoder, self.fingerprint = encoder, fingerprint or encoder.fingerprint
        self.encoded: list[str] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> object:  # everything else is the real encoder's
        return getattr(self.encoder, name)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            self.encoded += texts
        return self.encoder.encode_texts(texts)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return cached_encoder_factory("internvl-c", str(tiny_checkpoint()))


def test_a_repeated_text_is_encoded_once_and_gets_its_vector(encoder: Encoder) -> None:
    cache, counted = TextVectorCache(8), Counted(encoder)
    first = cache.encode(counted, ["a red circle", "ein blaues Quadrat", "a red circle"])
    again = cache.encode(counted, ["ein blaues Quadrat", "a green star", "a red circle"])
    assert counted.encoded == ["a red circle", "ein blaues Quadrat", "a green star"]  # each distinct text once
    np.testing.assert_allclose(
        first, encoder.encode_texts(["a red circle", "ein blaues Quadrat", "a red circle"]), atol=1e-5
    )
    np.testing.assert_array_equal(again[[0, 2]], first[[1, 0]])
    assert (cache.hits, cache.misses) == (2, 3)  # a text repeated within one call is encoded once, not a hit
    again[:] = 0  # the caller's array is its own: the cached vectors are untouched
    np.testing.assert_array_equal(cache.encode(counted, ["a red circle"])[0], first[0])


def test_encoders_never_share_vectors(encoder: Encoder) -> None:
    cache, one, other = TextVectorCache(8), Counted(encoder), Counted(encoder, fingerprint="other weights")
    cache.encode(one, ["a red circle"])
    cache.encode(other, ["a red circle"])
    assert one.encoded == other.encoded == ["a red circle"]


def test_the_least_recently_used_go_first_and_zero_turns_it_off(encoder: Encoder) -> None:
    cache, counted = TextVectorCache(2), Counted(encoder)
    cache.encode(counted, ["a"])
    cache.encode(counted, ["b"])
    cache.encode(counted, ["a"])  # used again: "b" is now the oldest
    cache.encode(counted, ["c"])  # evicts "b"
    cache.encode(counted, ["a", "c", "b"])
    assert counted.encoded == ["a", "b", "c", "b"]
    off, counted = TextVectorCache(0), Counted(encoder)
    off.encode(counted, ["a"])
    off.encode(counted, ["a"])
    assert counted.encoded == ["a", "a"]
    with pytest.raises(ValueError, match=">= 0"):
        TextVectorCache(-1)


def test_concurrent_callers_get_the_same_vectors(encoder: Encoder) -> None:
    cache, counted = TextVectorCache(64), Counted(encoder)
    texts = [f"query {i % 8}" for i in range(32)]
    results: dict[int, np.ndarray] = {}

    def search(i: int) -> None:
        results[i] = cache.encode(counted, [texts[i]])[0]

    threads = [threading.Thread(target=search, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = encoder.encode_texts([f"query {i}" for i in range(8)])
    for i, vector in results.items():
        np.testing.assert_allclose(vector, expected[i % 8], atol=1e-5)
    assert 8 <= len(counted.encoded) <= 32 and len(cache._vectors) == 8  # racing misses may encode a text twice


def test_the_next_page_and_the_same_labels_are_not_encoded_again(tmp_path: Path, encoder: Encoder) -> None:
    with Engine(
        engine_config(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}"), cached_encoder_factory
    ).open() as engine:
        engine.create_collection("pics")
        items = [IngestItem.upload(image_bytes("red", (40, 30), seed=i), f"{i}.png") for i in range(6)]
        engine.run_job(engine.submit("pics", items, start=False))
        before = engine.text_vectors.misses
        first = engine.search("pics", text="a red square", k=3)
        second = engine.search("pics", text="a red square", k=3, offset=3)
        assert engine.text_vectors.misses == before + 1 and engine.text_vectors.hits >= 1
        assert {h.id for h in first}.isdisjoint(h.id for h in second) and len(first + second) == 6
    cache, counted = TextVectorCache(), Counted(encoder)
    images = [image_bytes(colour, (40, 30), seed=1) for colour in ("red", "blue")]
    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    alone = classify_images(encoder, pictures, ["red", "blue"])
    for _ in range(2):
        assert classify_images(counted, pictures, ["red", "blue"], cache=cache) == alone
    assert len(counted.encoded) == 8  # 2 labels x 4 English templates, encoded at the first call only
