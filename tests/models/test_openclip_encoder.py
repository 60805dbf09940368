"""OpenCLIPEncoder on a small random-weight architecture: shapes, determinism, batching, weights files, errors."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from safetensors.torch import save_file

from internvl_models.errors import CheckpointError, InputError, ModelError, UnknownModelError
from internvl_models.openclip_encoder import MIN_REAL_TOKEN_FRACTION, OpenCLIPEncoder, length_groups
from internvl_models.transforms import CLIP_MEAN, CLIP_STD, classification_transform

# The smallest built-in open_clip config with plain towers: ViT-S/32 vision, 10-layer 256-wide text, 43M params;
# builds in ~0.4 s and embeds 8 images in ~0.1 s on two CPU cores.
ARCH = "ViT-S-32-alt"
DIM = 256
TEXTS = ["a photo of a cat", "a diagram", "", "un chat noir", "一张猫的照片", "🐱🐱🐱", "x " * 200, "dog"]


def _images(n: int = 8) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(224, 224), (300, 200), (64, 128), (500, 333)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 4][::-1], 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def encoder() -> OpenCLIPEncoder:
    return OpenCLIPEncoder(ARCH, device="cpu")


@pytest.fixture(scope="module")
def weights_file(encoder: OpenCLIPEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "s32.pt"
    torch.save(encoder.model.state_dict(), path)
    return path


def test_info(encoder: OpenCLIPEncoder) -> None:
    info = encoder.info
    assert info.name == f"openclip:{ARCH}"
    assert info.dim == DIM and info.image_size == 224
    assert info.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip initialises the temperature at 0.07
    assert len(info.fingerprint) == 64 and int(info.fingerprint, 16) >= 0
    assert encoder.device == torch.device("cpu") and encoder.dtype == torch.float32


def test_auto_device_on_this_machine() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    enc = OpenCLIPEncoder(ARCH)
    assert enc.device.type == expected
    assert enc.dtype == (torch.bfloat16 if expected == "cuda" else torch.float32)


def test_embeddings_are_unit_float32(encoder: OpenCLIPEncoder) -> None:
    images = encoder.encode_images(_images(3))
    texts = encoder.encode_texts(TEXTS)
    for out, n in ((images, 3), (texts, len(TEXTS))):
        assert out.shape == (n, DIM) and out.dtype == np.float32
        assert np.isfinite(out).all()
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert len({tuple(np.round(row, 5)) for row in texts}) == len(TEXTS)  # different texts, different vectors
    assert encoder.encode_images([]).shape == (0, DIM)


def test_two_instances_agree_and_leave_the_global_rng_alone(encoder: OpenCLIPEncoder) -> None:
    state = torch.random.get_rng_state()
    again = OpenCLIPEncoder(ARCH, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert again.fingerprint == encoder.fingerprint
    images = _images(2)
    np.testing.assert_array_equal(again.encode_images(images), encoder.encode_images(images))
    np.testing.assert_array_equal(again.encode_texts(TEXTS[:3]), encoder.encode_texts(TEXTS[:3]))


def test_another_seed_is_another_space(encoder: OpenCLIPEncoder) -> None:
    other = OpenCLIPEncoder(ARCH, device="cpu", seed=1)
    assert other.fingerprint != encoder.fingerprint
    assert not np.allclose(other.encode_texts(["a cat"]), encoder.encode_texts(["a cat"]), atol=1e-3)


def test_batch_size_does_not_change_image_embeddings(encoder: OpenCLIPEncoder) -> None:
    images = _images(8)
    one_by_one = OpenCLIPEncoder(ARCH, device="cpu", image_batch_size=1).encode_images(images)
    batched = encoder.encode_images(images)  # one batch of 8
    np.testing.assert_allclose(one_by_one, batched, atol=1e-5)


def test_batch_size_does_not_change_text_embeddings(encoder: OpenCLIPEncoder) -> None:
    one_by_one = OpenCLIPEncoder(ARCH, device="cpu", text_batch_size=1).encode_texts(TEXTS)
    np.testing.assert_allclose(one_by_one, encoder.encode_texts(TEXTS), atol=1e-5)


# --- preprocessing -------------------------------------------------------------------------------------------------


QUERIES = [
    "a red car",
    "two dogs playing in the snow",
    "un chat noir sur un canapé",
    "sunset",
    "一只猫",
    "a man riding a horse on the beach at dawn",
    "logo",
    "ein rotes Auto vor einem Haus",
]


def padded_reference(encoder: OpenCLIPEncoder, texts: list[str]) -> np.ndarray:
    """open_clip's own encode_text on the full padded context, as unit rows."""
    with torch.inference_mode():
        features = encoder.model.encode_text(encoder.tokenizer(texts)).float()
    return (features / features.norm(dim=-1, keepdim=True)).numpy()


def test_texts_cut_after_their_last_token_give_open_clips_vectors(encoder: OpenCLIPEncoder) -> None:
    texts = TEXTS + QUERIES  # empty, emoji, CJK and a text truncated at the context length among them
    np.testing.assert_allclose(encoder.encode_texts(texts), padded_reference(encoder, texts), atol=1e-5)


def test_text_tokens_computed_are_mostly_real(encoder: OpenCLIPEncoder) -> None:
    computed: list[int] = []
    hook = encoder.model.token_embedding.register_forward_pre_hook(lambda _m, args: computed.append(args[0].numel()))
    try:
        real = int((encoder.tokenizer(QUERIES).argmax(dim=-1) + 1).sum())
        encoder.encode_texts(QUERIES)
        assert real / sum(computed) >= MIN_REAL_TOKEN_FRACTION, (real, computed)  # it was 77 tokens a text
        computed.clear()
        encoder.encode_texts(["sunset"])
        assert computed == [3]  # start, one word, end
    finally:
        hook.remove()


def test_length_groups_bound_the_padding() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        ends = rng.integers(0, 77, size=int(rng.integers(1, 40))).tolist()
        groups = length_groups(ends, 0.8)
        assert sorted(i for group in groups for i in group) == list(range(len(ends)))
        for group in groups:
            lengths = [ends[i] + 1 for i in group]
            assert sum(lengths) >= 0.8 * len(group) * max(lengths) - 1e-9
    assert length_groups([9, 9, 9, 9], 0.8) == [[0, 1, 2, 3]]


def test_a_tower_without_a_causal_mask_runs_uncut() -> None:
    bidirectional = OpenCLIPEncoder(ARCH, device="cpu")
    bidirectional.model.attn_mask = None  # every token now sees the padding after it: cutting would change vectors
    texts = QUERIES[:3]
    np.testing.assert_array_equal(bidirectional.encode_texts(texts), padded_reference(bidirectional, texts))


def test_preprocess_is_open_clips_resize_crop_with_clip_stats(encoder: OpenCLIPEncoder) -> None:
    image = _images(2)[1]  # 300x200: the crop matters
    pixels = encoder.preprocess_image(image)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.float32
    assert torch.equal(pixels, classification_transform(224, mean=CLIP_MEAN, std=CLIP_STD)(image))


def test_preprocess_goes_through_to_rgb(encoder: OpenCLIPEncoder) -> None:
    white = encoder.preprocess_image(Image.new("RGB", (50, 40), (255, 255, 255)))
    transparent = encoder.preprocess_image(Image.new("RGBA", (50, 40), (0, 0, 0, 0)))
    assert torch.equal(transparent, white)  # open_clip's own convert("RGB") would give black
    grey16 = encoder.preprocess_image(Image.new("I;16", (50, 40), 128 * 257))
    assert torch.equal(grey16, encoder.preprocess_image(Image.new("L", (50, 40), 128)))  # not clipped to 255


def test_preprocess_applies_exif_orientation(encoder: OpenCLIPEncoder) -> None:
    upright = Image.fromarray(np.asarray(_images(3)[2]))  # 64 wide, 128 high
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8  # stored turned 90° clockwise; the viewer turns it back
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_270).save(buffer, "PNG", exif=exif.tobytes())
    stored = Image.open(io.BytesIO(buffer.getvalue()))
    assert stored.size == (128, 64)
    assert torch.equal(encoder.preprocess_image(stored), encoder.preprocess_image(upright))


# --- weights files -----------------------------------------------------------------------------------------------


def test_local_weights_round_trip(encoder: OpenCLIPEncoder, weights_file: Path, tmp_path: Path) -> None:
    # Another seed proves the vectors come from the file, not from the same random initialisation.
    loaded = OpenCLIPEncoder(f"{ARCH}/{weights_file}", device="cpu", seed=123)
    assert loaded.name == f"openclip:{ARCH}/{weights_file}"
    images = _images(2)
    np.testing.assert_array_equal(loaded.encode_images(images), encoder.encode_images(images))
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), encoder.encode_texts(TEXTS))
    assert loaded.fingerprint != encoder.fingerprint  # a file is not the same space as "random, seed 0"
    # The fingerprint follows the content, not the path.
    moved = tmp_path / "elsewhere.pt"
    shutil.copy(weights_file, moved)
    assert OpenCLIPEncoder(f"{ARCH}/{moved}", device="cpu").fingerprint == loaded.fingerprint


def test_changed_weights_change_the_fingerprint(encoder: OpenCLIPEncoder, weights_file: Path, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    state["logit_scale"] += 1.0
    path = tmp_path / "tuned.safetensors"
    save_file(state, str(path))
    tuned = OpenCLIPEncoder(f"{ARCH}/{path}", device="cpu")
    assert tuned.info.logit_scale == pytest.approx(encoder.info.logit_scale * np.e, rel=1e-5)
    assert tuned.fingerprint != OpenCLIPEncoder(f"{ARCH}/{weights_file}", device="cpu").fingerprint


# --- errors ----------------------------------------------------------------------------------------------------


def test_unknown_architecture_lists_real_ones() -> None:
    with pytest.raises(UnknownModelError, match="ViT-B-32") as info:
        OpenCLIPEncoder("ViT-Nope-99/openai")
    assert "ViT-Nope-99" in str(info.value)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="neither a weights file nor a pretrained tag"):
        OpenCLIPEncoder(f"{ARCH}/{tmp_path / 'absent.pt'}", device="cpu")


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pt"
    torch.save({"visual.conv1.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="does not load into"):
        OpenCLIPEncoder(f"{ARCH}/{path}", device="cpu")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="does not load into"):
        OpenCLIPEncoder(f"{ARCH}/{path}", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_without_cuda() -> None:
    with pytest.raises(ModelError, match="CUDA is not available"):
        OpenCLIPEncoder(ARCH, device="cuda")


def test_bad_device_and_text_input(encoder: OpenCLIPEncoder) -> None:
    with pytest.raises(ModelError, match="invalid device"):
        OpenCLIPEncoder(ARCH, device="tpu9")
    with pytest.raises(InputError):
        encoder.encode_texts("a single string")  # type: ignore[arg-type]
