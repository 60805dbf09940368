"""SentencePiece tokenizers trained on shapes-world text: deterministic, LLaMA-style ids, CJK split finely."""

from __future__ import annotations

import json
import time

import pytest
import sentencepiece as spm

from internvl_models.shapes_world import CHAT_SPECIAL_TOKENS, train_tokenizer
from internvl_models.shapes_world.tokenizer_training import split_cjk

SAMPLES = {
    "en": "summarize:A red star in the top left and a small blue circle on the right.",
    "zh": "左上角有一颗红色的星星，右边有一个蓝色的小圆形。",
    "ja": "左上に赤い星、右に小さな青い円があります。",
    "de": "Auf dem Bild sind ein roter Stern oben links und eine kleine rosa Raute.",
    "fr": "Il y a une étoile rouge en haut à gauche et un petit hexagone bleu à droite.",
    "es": "¿Cuántas estrellas rojas hay? Hay una cruz naranja pequeña abajo.",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    start = time.perf_counter()
    paths = {chat: train_tokenizer(root / ("chat" if chat else "retrieval"), 1500, chat=chat) for chat in (False, True)}
    return paths, time.perf_counter() - start


def _sp(path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))


def test_training_is_fast_and_deterministic(trained, tmp_path) -> None:
    paths, seconds = trained
    assert seconds < 30
    again = train_tokenizer(tmp_path, 1500, chat=False)
    assert again.read_bytes() == paths[False].read_bytes()


@pytest.mark.parametrize("chat", [False, True])
def test_llama_compatible_ids_and_small_vocab(trained, chat: bool) -> None:
    sp = _sp(trained[0][chat])
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert (sp.id_to_piece(0), sp.id_to_piece(1), sp.id_to_piece(2)) == ("<unk>", "<s>", "</s>")
    assert 1000 <= sp.get_piece_size() <= 2000
    config = json.loads((trained[0][chat].parent / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["pad_token_id"] == 0


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("language", sorted(SAMPLES))
def test_round_trip_without_unknowns(trained, chat: bool, language: str) -> None:
    sp = _sp(trained[0][chat])
    ids = sp.encode(SAMPLES[language])
    assert sp.decode(ids) == SAMPLES[language]
    assert 0 not in ids


@pytest.mark.parametrize("language", ["zh", "ja"])
def test_cjk_is_split_into_short_pieces(trained, language: str) -> None:
    sp = _sp(trained[0][False])
    pieces = [p.replace("▁", "") for p in sp.encode(SAMPLES[language], out_type=str)]
    pieces = [p for p in pieces if p]
    assert sum(len(p) for p in pieces) / len(pieces) <= 2.0
    assert max(len(p) for p in pieces) <= 3


def test_summarize_prefix_is_compact(trained) -> None:
    sp = _sp(trained[0][False])
    pieces = sp.encode("summarize:a red star", out_type=str)
    assert "".join(pieces).replace("▁", " ").strip() == "summarize:a red star"
    assert len(sp.encode("summarize:")) <= 3


def test_chat_special_tokens_are_single_ids_and_digits_split(trained) -> None:
    sp = _sp(trained[0][True])
    for token in CHAT_SPECIAL_TOKENS:
        assert len(sp.encode(token, add_bos=False)) <= 2  # the dummy-prefix "▁" may come first
        assert sp.piece_to_id(token) != sp.unk_id() and sp.id_to_piece(sp.piece_to_id(token)) == token
    answer = "<ref>red star</ref><box>[[123, 45, 678, 901]]</box>"
    pieces = sp.encode(answer, out_type=str)
    assert {"<ref>", "</ref>", "<box>", "</box>"} <= set(pieces)
    assert all(not (p.strip("▁").isdigit() and len(p.strip("▁")) > 1) for p in pieces)
    assert sp.decode(sp.encode(answer)) == answer


def test_split_cjk_only_touches_cjk() -> None:
    assert split_cjk("a red star") == "a red star"
    assert split_cjk("红色ab") == "红\x1f色\x1fab"


def test_qllama_tokenizer_loads_the_retrieval_model(trained) -> None:
    from internvl_models.tokenizer import QLLaMATokenizer

    tok = QLLaMATokenizer.from_pretrained(trained[0][False].parent)
    ids, mask = tok(["a red star", "左上角的蓝色圆形"])
    assert ids.shape[0] == 2 and int(ids[0, 0]) == 1 and int(mask.sum()) > 6
