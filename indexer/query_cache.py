"""Vectors of recent query texts, per encoder: a repeated text skips the text tower.

Searches repeat their text more than one might think: the next page of results is the same query at another
offset, a refreshed page or an `/v1/ask` follow-up sends it again, popular queries recur, and zero-shot
classification encodes the same label prompts at every call. Each is a forward pass of the text tower (on CPU a
few ms for a small encoder, far more for InternVL's QLLaMA); a hit is a dictionary lookup.

Keyed by the encoder's fingerprint (name + weights) and the exact text, so a collection that switches encoders
never gets a vector of the other space. Least recently used entries go first once `entries` are held (4,096
vectors of 768 float32 dimensions are 12 MiB); 0 turns the cache off.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from internvl_models import Encoder


class TextVectorCache:
    """`encode(encoder, texts)`: what `encoder.encode_texts(texts)` returns, the texts seen lately from memory."""

    def __init__(self, entries: int = 4096) -> None:
        if entries < 0:
            raise ValueError(f"entries must be >= 0, got {entries}")
        self.entries = entries
        self.hits = self.misses = 0
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) unit vectors of `texts`: the cached ones looked up, the others encoded in one pass (each
        distinct text once) and remembered."""
        if not self.entries or not texts:
            return encoder.encode_texts(list(texts))
        keys = [(encoder.fingerprint, text) for text in texts]
        found: dict[tuple[str, str], np.ndarray] = {}
        with self._lock:
            for key in keys:
                vector = self._vectors.get(key)
                if vector is not None:
                    self._vectors.move_to_end(key)
                    found[key] = vector
            missing = list(dict.fromkeys(key for key in keys if key not in found))
            self.hits += sum(key in found for key in keys)
            self.misses += len(missing)
        if missing:  # encoded outside the lock: other searches look up meanwhile
            vectors = encoder.encode_texts([text for _, text in missing])
            with self._lock:
                for key, vector in zip(missing, vectors, strict=True):
                    vector = vector.copy()
                    vector.flags.writeable = False  # shared by every caller that gets it
                    found[key] = self._vectors[key] = vector
                    self._vectors.move_to_end(key)
                while len(self._vectors) > self.entries:
                    self._vectors.popitem(last=False)
        return np.stack([found[key] for key in keys])
