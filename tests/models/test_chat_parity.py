"""The InternVL2/2.5 chat model against the official outputs on the tiny chat checkpoints (../shared/parity).

chat_a: InternViT-300M style tower + tiny Qwen2, pixel shuffle v2, last layer; it also carries a chat turn.
chat_b: InternViT-6B style tower (RMSNorm, QK-norm) + tiny Qwen2, pixel shuffle v1, select_layer -2.

The transcript of chat_a was tokenized by a byte-level stand-in tokenizer (`chat_a_transcript.json: tokenizer`):
the special tokens it lists have fixed ids, every other UTF-8 byte b is id b + byte_offset. `ByteTokenizer` below
is that tokenizer, so the transcript's prompts, token ids and decoded responses can all be reproduced end to end:
prompt assembly, tokenization, image-token replacement, greedy generation (single turn, second turn with history,
left-padded batch) and response clean-up.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from internvl_models.chat import InternVLChat, load_chat_model
from internvl_models.conversation import clean_response, get_template
from internvl_models.tiling import add_image_placeholders, build_query

PARITY = Path(__file__).resolve().parents[2].parent / "shared" / "parity"
TOLERANCE = 1e-5
# The official run generated with max_new_tokens=6: 7 ids = transformers 4.37's BOS placeholder + 6 new tokens.
MAX_NEW_TOKENS = 6

pytestmark = pytest.mark.parity


def _require(*names: str) -> None:
    for name in names:
        if not (PARITY / name).exists():
            pytest.skip(f"parity vectors absent: {PARITY / name} (they live in ../shared beside the repository)")


def _max_diff(got: torch.Tensor, expected: np.ndarray) -> float:
    assert tuple(got.shape) == expected.shape, f"shape {tuple(got.shape)} != {expected.shape}"
    return float(np.abs(got.float().numpy() - expected).max())


class ByteTokenizer:
    """The transcript's stand-in tokenizer: listed special tokens, otherwise one id per UTF-8 byte (+ offset)."""

    def __init__(self, spec: dict) -> None:
        self.special: dict[str, int] = spec["special"]
        self.offset: int = spec["byte_offset"]
        self.pad_token_id: int = spec["pad_token_id"]
        self._split = re.compile("|".join(re.escape(t) for t in sorted(self.special, key=len, reverse=True)))

    def encode(self, text: str) -> list[int]:
        ids, start = [], 0
        for match in self._split.finditer(text):
            ids += [b + self.offset for b in text[start : match.start()].encode()]
            ids.append(self.special[match.group()])
            start = match.end()
        return ids + [b + self.offset for b in text[start:].encode()]

    def decode(self, ids: list[int]) -> str:
        """skip_special_tokens: only byte ids are kept; invalid UTF-8 becomes U+FFFD."""
        data = bytes(i - self.offset for i in ids if self.offset <= i < self.offset + 256)
        return data.decode("utf-8", errors="replace")

    def left_padded(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.encode(t) for t in texts]
        width = max(map(len, rows))
        ids = [[self.pad_token_id] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        return torch.tensor(ids), torch.tensor(mask)


@pytest.fixture(scope="module")
def transcript() -> dict:
    _require("chat_a_transcript.json")
    return json.loads((PARITY / "chat_a_transcript.json").read_text())


@pytest.fixture(scope="module")
def chat_a(transcript: dict) -> InternVLChat:
    _require("chat_a")
    return load_chat_model(
        PARITY / "chat_a", device="cpu", image_token_id=transcript["tokenizer"]["special"]["<IMG_CONTEXT>"]
    )


@pytest.mark.parametrize(("name", "ps_version", "select_layer"), [("chat_a", "v2", -1), ("chat_b", "v1", -2)])
def test_vision_and_projector_match_official(name: str, ps_version: str, select_layer: int) -> None:
    _require(name, f"{name}_inputs.npz", f"{name}_outputs.npz")
    model = load_chat_model(PARITY / name, device="cpu")
    # The two checkpoints must really exercise both shuffle orders and both feature layers.
    assert (model.config.ps_version, model.config.select_layer) == (ps_version, select_layer)
    inputs, expected = np.load(PARITY / f"{name}_inputs.npz"), np.load(PARITY / f"{name}_outputs.npz")
    pixels = torch.from_numpy(inputs["pixel_values"])
    with torch.inference_mode():
        vision = model.vision_model(pixels, output_hidden_states=True)
        diffs = {
            "vision_last_hidden_state": _max_diff(vision.last_hidden_state, expected["vision_last_hidden_state"]),
            "vision_hidden_states": _max_diff(torch.stack(vision.hidden_states), expected["vision_hidden_states"]),
            "vision_last_hidden_state_84": _max_diff(
                model.vision_model(torch.from_numpy(inputs["pixel_values_84"])).last_hidden_state,
                expected["vision_last_hidden_state_84"],
            ),
            "vit_embeds": _max_diff(model.extract_feature(pixels), expected["vit_embeds"]),
            "vit_embeds_ps_v1": _max_diff(model.extract_feature(pixels, "v1"), expected["vit_embeds_ps_v1"]),
            "vit_embeds_ps_v2": _max_diff(model.extract_feature(pixels, "v2"), expected["vit_embeds_ps_v2"]),
        }
    print(name, "max abs diff:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert model.num_image_token == int(expected["num_image_token"])
    assert all(v <= TOLERANCE for v in diffs.values()), diffs
    # v1 and v2 differ (a transpose of the 2x2 token grid): the comparison above does tell them apart.
    assert not np.allclose(expected["vit_embeds_ps_v1"], expected["vit_embeds_ps_v2"])


def test_chat_turn1_logits_and_greedy_ids_match_official(chat_a: InternVLChat) -> None:
    _require("chat_a_inputs.npz", "chat_a_outputs.npz")
    inputs, expected = np.load(PARITY / "chat_a_inputs.npz"), np.load(PARITY / "chat_a_outputs.npz")
    pixels, ids = torch.from_numpy(inputs["pixel_values"]), torch.from_numpy(inputs["chat_turn1_input_ids"])
    with torch.inference_mode():
        logits = chat_a(pixels, ids, torch.ones_like(ids), image_flags=torch.ones(len(pixels), dtype=torch.long))
    generated = chat_a.generate(pixels, ids, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=281)
    diff = _max_diff(logits, expected["chat_turn1_logits"])
    print(f"chat_turn1_logits max abs diff: {diff:.2e}")
    assert diff <= TOLERANCE
    official = expected["chat_turn1_generated_ids"]
    assert generated.tolist() == official[:, 1:].tolist()  # transformers 4.37 put a BOS placeholder first


def test_transcript_two_turns_reproduced(chat_a: InternVLChat, transcript: dict) -> None:
    _require("chat_a_inputs.npz")
    tokenizer, template = ByteTokenizer(transcript["tokenizer"]), get_template(chat_a.config.template)
    stop = tokenizer.special[template.stop_token]
    pixels = torch.from_numpy(np.load(PARITY / "chat_a_inputs.npz")["pixel_values"])
    history: list[tuple[str, str]] = []
    for turn in ("chat_turn1", "chat_turn2"):
        expected = transcript[turn]
        question = expected["question"] if history else add_image_placeholders(expected["question"], 1)
        query = build_query(
            template, question, num_image_token=chat_a.num_image_token, num_patches_list=[len(pixels)], history=history
        )
        assert query == expected["query"]
        ids = tokenizer.encode(query)
        assert ids == expected["input_ids"]
        generated = chat_a.generate(pixels, torch.tensor([ids]), max_new_tokens=MAX_NEW_TOKENS, eos_token_id=stop)
        response = clean_response(template, tokenizer.decode(generated[0].tolist()))
        assert response == expected["response"]
        history.append((question, response))


def test_transcript_left_padded_batch_reproduced(chat_a: InternVLChat, transcript: dict) -> None:
    _require("chat_a_inputs.npz")
    expected = transcript["batch_chat"]
    tokenizer, template = ByteTokenizer(transcript["tokenizer"]), get_template(chat_a.config.template)
    questions = ["What is this?", "Where is <ref>the cat</ref>?"]  # the transcript's queries, image prefix removed
    queries = [
        build_query(
            template, add_image_placeholders(q, 1), num_image_token=chat_a.num_image_token, num_patches_list=[n]
        )
        for q, n in zip(questions, expected["num_patches_list"], strict=True)
    ]
    assert queries == expected["queries"]
    ids, mask = tokenizer.left_padded(queries)
    assert ids.tolist() == expected["input_ids"] and mask.tolist() == expected["attention_mask"]
    pixels = torch.from_numpy(np.load(PARITY / "chat_a_inputs.npz")["pixel_values"])  # 2 + 1 tiles, in order
    generated = chat_a.generate(
        pixels,
        ids,
        mask,
        max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=tokenizer.special[template.stop_token],
        pad_token_id=tokenizer.pad_token_id,
    )
    responses = [clean_response(template, tokenizer.decode(row)) for row in generated.tolist()]
    assert responses == expected["responses"]
