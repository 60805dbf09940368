"""QLLaMATokenizer against the ids the official InternVL-C/G tokenizer wrappers produced (../shared/parity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from internvl_models.errors import CheckpointError, InputError
from internvl_models.tokenizer import BOS_ID, EOS_ID, PAD_ID, QLLaMATokenizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TOKENIZER_DIR = SHARED / "tokenizers" / "qllama"
PARITY_FILE = SHARED / "parity" / "qllama_tokenizer.json"
SUMMARIZE = [19138, 675, 29901]  # "▁summar", "ize", ":" (INTERNVL.md B.6)

needs_shared = pytest.mark.skipif(
    not (TOKENIZER_DIR / "tokenizer.model").is_file() or not PARITY_FILE.is_file(),
    reason=f"reference data {SHARED} is absent (it exists in CI and on developer machines)",
)


def _parity_cases() -> list[tuple[str, int]]:
    if not PARITY_FILE.is_file():
        return []
    data = json.loads(PARITY_FILE.read_text())
    return [(wrapper, i) for wrapper, rec in sorted(data.items()) for i in range(len(rec["texts"]))]


@pytest.fixture(scope="module")
def parity() -> dict:
    return json.loads(PARITY_FILE.read_text())


@pytest.fixture(scope="module")
def tok() -> QLLaMATokenizer:
    return QLLaMATokenizer.from_pretrained(TOKENIZER_DIR)


# --- parity with the official wrappers -------------------------------------------------------------------------


@pytest.mark.parity
@needs_shared
@pytest.mark.parametrize(("wrapper", "index"), _parity_cases())
def test_each_official_case_padded_to_max_length(tok: QLLaMATokenizer, parity: dict, wrapper: str, index: int) -> None:
    rec = parity[wrapper]
    assert rec["pad_token_id"] == PAD_ID and rec["padding_side"] == "right"
    ids, mask = tok([rec["texts"][index]], pad_to="max_length")
    expected = torch.tensor([rec["input_ids"][index]])
    assert ids.shape == (1, 80)
    assert torch.equal(ids, expected)
    assert torch.equal(mask, (expected != PAD_ID).long())  # no parity text holds a literal <unk>


@pytest.mark.parity
@needs_shared
@pytest.mark.parametrize("wrapper", ["hf_InternVLTokenizer", "pytorch_InternVLTokenizer"])
def test_pad_to_longest_is_the_official_ids_cut_at_the_longest(
    tok: QLLaMATokenizer, parity: dict, wrapper: str
) -> None:
    rec = parity[wrapper]
    official = torch.tensor(rec["input_ids"])
    # The whole batch (its longest text is truncated to 80), then the short texts alone (longest is shorter).
    for rows in (list(range(len(rec["texts"]))), [0, 1, 2, 3, 4]):
        ids, mask = tok([rec["texts"][i] for i in rows])
        longest = int((official[rows] != PAD_ID).sum(dim=1).max())
        assert ids.shape == (len(rows), longest)
        assert torch.equal(ids, official[rows, :longest])
        assert torch.equal(mask, (ids != PAD_ID).long())
        assert (official[rows, longest:] == PAD_ID).all()  # what pad-to-longest leaves out is only padding
    assert longest < 80  # the short subset really exercised a shorter length


@pytest.mark.parity
@needs_shared
def test_vocabulary_and_special_ids(tok: QLLaMATokenizer, parity: dict) -> None:
    assert tok.vocab_size == parity["hf_InternVLTokenizer"]["vocab_size"] == 49954
    assert tok.encode("") == [BOS_ID, *SUMMARIZE, EOS_ID]


# --- truncation ------------------------------------------------------------------------------------------------


@pytest.mark.parity
@needs_shared
def test_truncation_keeps_bos_and_eos_and_the_first_pieces(tok: QLLaMATokenizer) -> None:
    text = " ".join(f"word{i}" for i in range(5000))
    full = QLLaMATokenizer(tok.model_file, max_length=10**6).encode(text)
    ids, mask = tok([text, "a"])
    assert ids.shape == (2, 80)
    assert ids[0, 0] == BOS_ID and ids[0, -1] == EOS_ID
    assert ids[0].tolist() == [*full[:79], EOS_ID]  # the first 78 text pieces, then EOS
    assert ids[1].tolist()[:6] == [BOS_ID, *SUMMARIZE, 29874, EOS_ID]
    assert mask.sum(dim=1).tolist() == [80, 6]


@pytest.mark.parity
@needs_shared
def test_a_very_long_string_without_spaces(tok: QLLaMATokenizer) -> None:
    ids = tok.encode("猫" * 200_000)
    assert len(ids) == 80
    assert ids[:4] == [BOS_ID, *SUMMARIZE] and ids[-1] == EOS_ID
    assert set(ids[4:-1]) == {33155}  # "猫" is one piece


@pytest.mark.parity
@needs_shared
def test_custom_max_length_and_prefix(tok: QLLaMATokenizer) -> None:
    short = QLLaMATokenizer(tok.model_file, max_length=6)
    assert short.encode("a photo of a cat.") == [BOS_ID, *SUMMARIZE, 29874, EOS_ID]
    assert short.encode("") == [BOS_ID, *SUMMARIZE, EOS_ID]
    bare = QLLaMATokenizer(tok.model_file, max_length=3, prefix="")
    assert bare.encode("") == [BOS_ID, EOS_ID]
    assert bare.encode("a cat") == [BOS_ID, 263, EOS_ID]  # no prefix: SentencePiece's dummy "▁a"


# --- languages and legacy SentencePiece details ----------------------------------------------------------------


@pytest.mark.parity
@needs_shared
@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("一张猫的照片。", [33823, 33155, 36580, 30267]),  # Chinese: "一张", "猫", "的照片", "。"
        ("猫の写真", [33155, 30199, 41971]),  # Japanese
        ("😀", [0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3]),  # no emoji piece: UTF-8 bytes, id = 3 + byte
        ("Ａ", [0xEF + 3, 0xBC + 3, 0xA1 + 3]),  # identity normaliser: no NFKC folding to "A"
    ],
)
def test_other_scripts(tok: QLLaMATokenizer, text: str, pieces: list[int]) -> None:
    ids = tok.encode(text)
    assert ids == [BOS_ID, *SUMMARIZE, *pieces, EOS_ID]
    assert tok.decode(ids) == "summarize:" + text  # byte fallback: nothing became <unk>


@pytest.mark.parity
@needs_shared
def test_mixed_batch_round_trips(tok: QLLaMATokenizer) -> None:
    texts = ["un chat 🐱 noir", "一只黑猫", "", "a  b\tc\nd"]
    ids, mask = tok(texts)
    for row, m, text in zip(ids.tolist(), mask, texts, strict=True):
        n = int(m.sum())
        assert row[n:] == [PAD_ID] * (len(row) - n)
        assert PAD_ID not in row[:n]
        assert tok.decode(row) == "summarize:" + text


@pytest.mark.parity
@needs_shared
def test_special_token_strings_are_split_out_like_the_slow_tokenizer(tok: QLLaMATokenizer) -> None:
    # The slow LlamaTokenizer's trie turns literal "</s>" into EOS and encodes "b" as a new chunk: "▁b" (289), not
    # the "b" (29890) that follows "summarize:" directly.
    assert tok.encode("a</s>b") == [BOS_ID, *SUMMARIZE, 29874, EOS_ID, 289, EOS_ID]
    assert tok.encode("b") == [BOS_ID, *SUMMARIZE, 29890, EOS_ID]
    ids, mask = tok(["<unk>x"])
    assert ids.tolist() == [[BOS_ID, *SUMMARIZE, PAD_ID, 921, EOS_ID]]
    assert mask.tolist() == [[1] * 7]  # the mask is positional; a literal <unk> still counts as a token


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parity
@needs_shared
@pytest.mark.parametrize("bad", [[], "a single string", ["ok", 3], [None]])
def test_bad_input_is_an_input_error(tok: QLLaMATokenizer, bad: object) -> None:
    with pytest.raises(InputError):
        tok(bad)  # type: ignore[arg-type]


@pytest.mark.parity
@needs_shared
def test_bad_arguments(tok: QLLaMATokenizer) -> None:
    with pytest.raises(ValueError, match="pad_to"):
        tok(["a"], pad_to="right")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        QLLaMATokenizer(tok.model_file, max_length=1)


def test_checkpoint_without_tokenizer_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        QLLaMATokenizer.from_pretrained(tmp_path)


def test_missing_or_corrupt_model_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        QLLaMATokenizer(tmp_path / "nope.model")
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(CheckpointError, match="SentencePiece"):
        QLLaMATokenizer.from_pretrained(tmp_path)
