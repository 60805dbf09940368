"""Chat templates: the official renderings (../shared/parity/conv_templates.json) and multi-turn behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from internvl_models.conversation import INTERNVL_ZH, MPT, TEMPLATES, clean_response, get_template, render
from internvl_models.errors import UnknownModelError

CONV_TEMPLATES = Path(__file__).resolve().parents[2].parent / "shared" / "parity" / "conv_templates.json"
OFFICIAL_STYLES = {"18": MPT, "17": INTERNVL_ZH}  # the official SeparatorStyle enum values


@pytest.mark.parity
def test_templates_match_the_official_renderings() -> None:
    if not CONV_TEMPLATES.is_file():
        pytest.skip(f"parity vectors absent: {CONV_TEMPLATES} (they live in ../shared beside the repository)")
    official = json.loads(CONV_TEMPLATES.read_text())
    assert set(official) <= set(TEMPLATES)
    for name, expected in official.items():
        template = get_template(name)
        assert template.system_message == expected["system_message"], name
        assert list(template.roles) == expected["roles"], name
        assert template.sep == expected["sep"], name
        assert template.stop_str == expected["stop_str"], name
        assert template.style == OFFICIAL_STYLES[expected["sep_style"]], name
        assert render(template, ["<image>\nDescribe the image.", None]) == expected["prompt"], name


def test_mpt_multi_turn_and_system_override() -> None:
    template = get_template("internvl2_5")
    prompt = render(template, ["Q1", "A1", "Q2", None], system_message="SYS")
    expected = (
        "<|im_start|>system\nSYS<|im_end|>\n"
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt == expected
    # The separator is the only difference from internlm2-chat (pitfall F.10).
    assert render(get_template("internlm2-chat"), ["Q1", None], "SYS") == (
        "<|im_start|>system\nSYS<|im_end|><|im_start|>user\nQ1<|im_end|><|im_start|>assistant\n"
    )


def test_braces_in_a_system_message_are_kept_verbatim() -> None:
    prompt = render(get_template("phi3-chat"), ["hi", None], system_message="answer as {json}")
    assert prompt == "<|system|>\nanswer as {json}<|end|><|user|>\nhi<|end|><|assistant|>\n"


def test_internvl_zh_multi_turn() -> None:
    prompt = render(get_template("internvl_zh"), ["Q1", "A1", "Q2", None])
    assert prompt == " <human>: Q1 <bot>: A1</s><human>: Q2 <bot>:"


def test_an_empty_message_is_an_open_turn_as_upstream() -> None:
    template = get_template("Hermes-2")
    assert render(template, ["Q", ""]) == render(template, ["Q", None])


def test_stop_token_and_response_cleanup() -> None:
    assert get_template("internvl2_5").stop_token == "<|im_end|>"  # sep.strip(): what the tokenizer looks up
    assert get_template("phi3-chat").stop_token == "<|end|>"
    assert clean_response(get_template("internvl2_5"), "  A cat.<|im_end|>\nleftover") == "A cat."


def test_unknown_template_names_the_valid_ones() -> None:
    with pytest.raises(UnknownModelError, match="internvl2_5"):
        get_template("vicuna")
