"""`ChatModel` (tokenizer + template + generation loop) and the answer readers of `internvl_models.grounding`, on
tiny chat checkpoints written in the official layout by tests/chat_factory.py and loaded by the real loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from chat_factory import SCRIPT_TEXT, YES_PROBABILITY, make_tiny_chat_checkpoint
from PIL import Image

from internvl_models import CheckpointError, InputError, UnknownModelError, create_chat_model, list_chat_models
from internvl_models.chat_model import ChatModel, GenerationSettings, yes_probability
from internvl_models.grounding import answer_boxes, box_image, box_to_pixels, cited_images
from internvl_models.registry import OFFICIAL_CHAT_CHECKPOINT, default_chat_checkpoint

TWO = [("user", "Image-1: <image>\nImage-2: <image>\nWhich image shows a red star?")]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> ChatModel:
    return create_chat_model(make_tiny_chat_checkpoint(tmp_path_factory.mktemp("s") / "s", scripted=True), device="cpu")


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> ChatModel:
    return create_chat_model(make_tiny_chat_checkpoint(tmp_path_factory.mktemp("r") / "r"), device="cpu")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (30 + 20 * i, 60, 3), dtype=np.uint8)) for i in range(3)]


def test_the_registry_names_the_default_and_the_official_models() -> None:
    assert OFFICIAL_CHAT_CHECKPOINT in list_chat_models()
    shipped = Path(__file__).resolve().parents[2] / "internvl_models/shapes_world/weights/internvl-chat-shapes"
    expected = str(shipped) if (shipped / "config.json").is_file() else OFFICIAL_CHAT_CHECKPOINT
    assert default_chat_checkpoint() == expected


def test_unusable_checkpoints_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        create_chat_model(tmp_path / "absent", device="cpu")
    directory = make_tiny_chat_checkpoint(tmp_path / "no-tokenizer")
    (directory / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer"):
        create_chat_model(directory, device="cpu")
    if "internvl-chat-shapes" not in list_chat_models():
        with pytest.raises(UnknownModelError, match="not installed"):
            create_chat_model("internvl-chat-shapes", device="cpu")


def test_scripted_weights_write_the_script(scripted: ChatModel, images: list[Image.Image]) -> None:
    out = scripted.generate(images[:2], TWO)
    assert (out.text, out.finish_reason) == (SCRIPT_TEXT, "stop")
    assert out.completion_tokens == 11 and out.prompt_tokens > 50  # 10 script tokens + the stop token
    assert scripted.yes_probability(images[0], "Does this image show: a red star?") == pytest.approx(
        YES_PROBABILITY, abs=1e-3
    )


def test_greedy_decoding_matches_transformers_generate(random_model: ChatModel, images: list[Image.Image]) -> None:
    """Our KV-cache loop picks the same tokens as `InternVLChat.generate` (transformers' generate)."""
    ids, pixels = random_model.encode_prompt(images[:2], TWO)
    reference = random_model.model.generate(pixels, ids, max_new_tokens=12, eos_token_id=list(random_model.stop_ids))
    expected = random_model.tokenizer.decode(reference[0], skip_special_tokens=True).strip()
    out = random_model.generate(images[:2], TWO, GenerationSettings(max_new_tokens=12))
    assert out.text == expected and out.completion_tokens == reference.shape[1]


def test_stream_pieces_add_up_to_the_answer(random_model: ChatModel, images: list[Image.Image]) -> None:
    settings = GenerationSettings(max_new_tokens=16)
    deltas = list(random_model.stream(images[:1], [("user", "<image>\nDescribe.")], settings))
    assert deltas[-1].finish_reason in ("stop", "length") and all(d.finish_reason is None for d in deltas[:-1])
    assert "".join(d.text for d in deltas) == random_model.generate(images[:1], [("user", "<image>\nDescribe.")],
                                                                     settings).text  # fmt: skip


def test_sampling_is_seeded(random_model: ChatModel, images: list[Image.Image]) -> None:
    def sample(seed: int) -> str:
        settings = GenerationSettings(max_new_tokens=12, temperature=1.5, top_p=0.95, top_k=40, seed=seed)
        return random_model.generate(images[:1], [("user", "<image>\nDescribe.")], settings).text

    assert sample(1) == sample(1)
    assert len({sample(s) for s in range(1, 6)}) > 1


def test_logprobs_are_the_models_distribution(random_model: ChatModel, images: list[Image.Image]) -> None:
    out = random_model.generate(images[:1], [("user", "<image>\nHi")], GenerationSettings(max_new_tokens=3,
                                                                                            top_logprobs=5))  # fmt: skip
    assert len(out.logprobs) == out.completion_tokens
    first = out.logprobs[0]
    assert first.top[0][1] == pytest.approx(first.logprob) and first.top[0][0] == first.token  # greedy: the best
    assert [lp for _, lp in first.top] == sorted((lp for _, lp in first.top), reverse=True)
    ids, pixels = random_model.encode_prompt(images[:1], [("user", "<image>\nHi")])
    with torch.inference_mode():
        logits = random_model.model(pixels, ids)[0, -1]
    assert first.logprob == pytest.approx(float(torch.log_softmax(logits, -1).max()), abs=1e-4)


def test_bad_conversations_and_settings_are_input_errors(random_model: ChatModel, images: list[Image.Image]) -> None:
    with pytest.raises(InputError, match="end with a user"):
        random_model.generate([], [("user", "a"), ("assistant", "b")])
    with pytest.raises(InputError, match="alternate"):
        random_model.generate([], [("assistant", "a"), ("user", "b")])
    with pytest.raises(InputError, match="placeholders"):
        random_model.generate(images[:2], [("user", "<image>\nonly one placeholder")])
    with pytest.raises(InputError, match="IMG_CONTEXT|image tokens"):
        random_model.generate([], [("user", "<IMG_CONTEXT> typed by a user")])
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}, {"top_logprobs": 21}, {"stop": ("",)}):
        with pytest.raises(InputError):
            GenerationSettings(**bad)


def test_yes_probability_reads_yes_tokens() -> None:
    assert yes_probability([("Yes", np.log(0.5)), (" yes", np.log(0.2)), ("No", np.log(0.3))]) == pytest.approx(0.7)
    assert yes_probability([("是", np.log(0.6)), ("yesterday", np.log(0.4))]) == pytest.approx(0.6)
    assert yes_probability([]) == 0.0
    # a vocabulary that splits "yes": the piece that can only begin a yes counts, one that may begin a no does not
    assert yes_probability([("y", np.log(0.6)), ("n", np.log(0.3)), ("no", np.log(0.1))]) == pytest.approx(0.6)


def test_citations_and_boxes_are_read_from_an_answer() -> None:
    text = "Image-3 has it: <ref>the star</ref><box>[[10, 20, 110, 220], [0,0,5,5]]</box>; image 7 does not."
    assert cited_images(text, 4) == ([3], [7])
    boxes = answer_boxes(text)
    assert [(b.ref, b.box) for b in boxes] == [("the star", (10, 20, 110, 220)), ("the star", (0, 0, 5, 5))]
    assert box_image(text, boxes[0], 4) == 3
    assert box_image("<box>[[1,2,3,4]]</box>", answer_boxes("<box>[[1,2,3,4]]</box>")[0], 1) == 1
    unknown = "<box>[[1,2,3,4]]</box> in Image-1 or Image-2"
    assert box_image(unknown, answer_boxes(unknown)[0], 2) is None
    assert answer_boxes("<box>[[1, 2, 3]]</box>") == []  # malformed: three numbers
    assert box_to_pixels((100, 200, 300, 1200), 640, 480) == (64.0, 96.0, 192.0, 480.0)  # clamped to the image
