"""Every registered encoder, built on a small real checkpoint, behaves the way the engine relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from factories import make_tiny_internvl_checkpoint
from PIL import Image

from internvl_models import Encoder, UnknownModelError, create_encoder, list_encoders
from internvl_models.internvl_encoder import InternVLEncoder

OPENCLIP_TINY = "openclip:ViT-S-32-alt"  # random weights: a test-only open_clip entry
TEXTS = ["a red circle on the left", "ein blaues Quadrat", "un cercle rouge", "红色的星星", "左に赤い円", ""]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_internvl_checkpoint(tmp_path_factory.mktemp("tiny-internvl"))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 64, 3), dtype=np.uint8)) for i in range(5)]


def build(name: str, checkpoint: Path, **options: object) -> Encoder:
    if name.startswith("openclip:"):
        return create_encoder(name, device="cpu", **options)
    return create_encoder(name, checkpoint, device="cpu", **options)


ENCODERS = ["internvl-c", "internvl-g", OPENCLIP_TINY]


def test_the_registry_lists_every_family() -> None:
    names = list_encoders()
    assert {"internvl-c", "internvl-g"} <= set(names)
    assert any(name.startswith("openclip:") for name in names)


@pytest.mark.parametrize("name", ENCODERS)
def test_outputs_are_unit_float32_rows(name: str, tiny_checkpoint: Path, images: list[Image.Image]) -> None:
    encoder = build(name, tiny_checkpoint)
    image_vectors = encoder.encode_images(images)
    text_vectors = encoder.encode_texts(TEXTS)
    for vectors, n in ((image_vectors, len(images)), (text_vectors, len(TEXTS))):
        assert vectors.shape == (n, encoder.dim) and vectors.dtype == np.float32
        assert np.all(np.isfinite(vectors))
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode_images([]).shape == (0, encoder.dim)
    assert encoder.info.logit_scale > 0


@pytest.mark.parametrize("name", ENCODERS)
def test_results_do_not_depend_on_batching(name: str, tiny_checkpoint: Path, images: list[Image.Image]) -> None:
    one = build(name, tiny_checkpoint, image_batch_size=1, text_batch_size=1)
    many = build(name, tiny_checkpoint, image_batch_size=8, text_batch_size=8)
    np.testing.assert_allclose(one.encode_images(images), many.encode_images(images), atol=1e-5)
    np.testing.assert_allclose(one.encode_texts(TEXTS), many.encode_texts(TEXTS), atol=1e-5)
    assert one.fingerprint == many.fingerprint


def test_fingerprints_separate_heads_and_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    c = build("internvl-c", tiny_checkpoint)
    g = build("internvl-g", tiny_checkpoint)
    other = build("internvl-c", make_tiny_internvl_checkpoint(tmp_path / "other", seed=1))
    assert len({c.fingerprint, g.fingerprint, other.fingerprint}) == 3
    assert c.fingerprint == build("internvl-c", tiny_checkpoint).fingerprint


def test_unknown_encoder_names_the_available_ones() -> None:
    with pytest.raises(UnknownModelError, match="internvl-c"):
        create_encoder("internvl-x")


def test_padding_to_the_longest_text_equals_the_official_padding_to_80(tiny_checkpoint: Path) -> None:
    encoder = build("internvl-c", tiny_checkpoint)
    assert isinstance(encoder, InternVLEncoder)
    longest, _ = encoder.tokenizer(TEXTS, pad_to="longest")
    official, _ = encoder.tokenizer(TEXTS, pad_to="max_length")
    assert longest.shape[1] < official.shape[1] == 80
    with torch.inference_mode():
        a = encoder.model.encode_text(longest)
        b = encoder.model.encode_text(official)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_internvl_g_is_renormalised_and_differs_from_c(tiny_checkpoint: Path, images: list[Image.Image]) -> None:
    c = build("internvl-c", tiny_checkpoint)
    g = build("internvl-g", tiny_checkpoint)
    pixels = torch.stack([g.preprocess_image(im) for im in images])
    with torch.inference_mode():
        raw = g.model.encode_image(pixels, mode="G")
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(images)))  # the official output is a sum of units
    np.testing.assert_allclose(g.encode_images(images), torch.nn.functional.normalize(raw).numpy(), atol=1e-6)
    assert not np.allclose(g.encode_images(images), c.encode_images(images))


def test_classification_crops_and_retrieval_squashes(tiny_checkpoint: Path) -> None:
    encoder = build("internvl-c", tiny_checkpoint)
    wide = Image.new("RGB", (300, 100), "white")
    wide.paste(Image.new("RGB", (100, 100), "red"), (0, 0))  # red only at the far left, outside a centre crop
    retrieval = encoder.preprocess_image(wide, "retrieval")
    classification = encoder.preprocess_image(wide, "classification")
    assert retrieval.shape == classification.shape == (3, 56, 56)
    red = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]).view(3, 1)
    assert torch.allclose(retrieval[:, 28, :5], red.expand(3, 5), atol=0.05)
    assert not torch.allclose(classification[:, 28, :5], red.expand(3, 5), atol=0.5)


def test_encoder_reproduces_the_official_image_embeddings(shared_dir: Path) -> None:
    """The Encoder path (device/dtype placement, batching, normalisation) keeps parity with the official model."""
    parity = shared_dir / "parity"
    inputs, outputs = np.load(parity / "internvl14b_inputs.npz"), np.load(parity / "internvl14b_outputs.npz")
    for mode, key in (("C", "image_embeds_C"), ("G", "image_embeds_G")):
        from internvl_models.checkpoint import load_internvl

        model = load_internvl(parity / "internvl14b_tiny", device="cpu")
        encoder = InternVLEncoder(model, tokenizer=None, mode=mode, name=f"internvl-{mode.lower()}", fingerprint="x",
                                  image_batch_size=2)  # fmt: skip
        expected = outputs[key] / np.linalg.norm(outputs[key], axis=1, keepdims=True)
        np.testing.assert_allclose(encoder.encode_pixels(torch.from_numpy(inputs["pixel_values"])), expected, atol=1e-5)


def test_compiled_image_towers_give_the_eager_vectors(tiny_checkpoint: Path, images: list[Image.Image]) -> None:
    """`compile_images` (opt-in) runs the image tower through torch.compile: same vectors, and a graph compiled."""
    from torch._dynamo.utils import counters

    eager = build("internvl-c", tiny_checkpoint, image_batch_size=8)
    compiled = build("internvl-c", tiny_checkpoint, image_batch_size=8, compile_images=True)
    graphs = counters["stats"]["unique_graphs"]
    np.testing.assert_allclose(compiled.encode_images(images), eager.encode_images(images), atol=1e-5)
    assert counters["stats"]["unique_graphs"] > graphs
    np.testing.assert_array_equal(compiled.encode_texts(TEXTS), eager.encode_texts(TEXTS))  # text stays eager
