"""Builders of small real artefacts for tests: a tokenizer trained here, a random tiny InternVL checkpoint and
photo-like JPEGs of any size.

Nothing here is a stand-in: the checkpoint is written in the official layout by the project's own saver and
read back by the same loader that reads the real InternVL-14B-224px.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from PIL import Image

from internvl_models.checkpoint import save_internvl
from internvl_models.config import InternViTConfig, InternVLConfig, QLLaMAConfig
from internvl_models.internvl import InternVL

_WORDS = {
    "en": "a red circle on the left and a blue square at the top right of the picture with green star",
    "de": "ein roter Kreis links und ein blaues Quadrat oben rechts im Bild mit grünem Stern",
    "fr": "un cercle rouge à gauche et un carré bleu en haut à droite de l'image avec une étoile verte",
    "es": "un círculo rojo a la izquierda y un cuadrado azul arriba a la derecha con una estrella verde",
    "zh": "左边 有 一个 红色 的 圆形 右上 角 有 一个 蓝色 的 正方形 和 绿色 的 星星",
    "ja": "左 に 赤い 円 が あり 右上 に 青い 四角 と 緑 の 星 が あります",
}


def train_tiny_tokenizer(directory: Path, vocab_size: int = 400) -> Path:
    """A LlamaTokenizer-compatible SentencePiece model (unk 0, bos 1, eos 2, byte fallback) at directory/tokenizer.model."""
    directory.mkdir(parents=True, exist_ok=True)
    sentences = [
        "summarize:" + " ".join(words.split()[i:] + words.split()[:i]) for words in _WORDS.values() for i in range(12)
    ]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    path = directory / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def tiny_internvl_config(vocab_size: int, image_size: int = 56) -> InternVLConfig:
    vision = InternViTConfig(
        hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2, image_size=image_size
    )
    qllama = QLLaMAConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        num_query_token=8,
        vision_hidden_size=32,
    )
    return InternVLConfig(vision=vision, qllama=qllama, clip_embed_dim=16, attn_pool_num_heads=2)


def make_tiny_internvl_checkpoint(directory: Path, seed: int = 0) -> Path:
    """config.json + model.safetensors + tokenizer.model of a random tiny InternVL-C/G, in the official layout."""
    train_tiny_tokenizer(directory)
    vocab_size = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model")).get_piece_size()
    config = tiny_internvl_config(vocab_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = InternVL(config)
    # Our own checkpoints keep the two embedding tables equal, as the official release is expected to.
    model.qllama.lm_head.weight.data.copy_(model.qllama.model.embed_tokens.weight.data)
    save_internvl(model, config, directory)
    return directory


def photo_jpeg(size: tuple[int, int], seed: int = 0, orientation: int | None = None) -> bytes:
    """A photo-like JPEG: smooth shading, edges and fine noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 120 + 80 * np.sin(x / (w / 7)) * np.cos(y / (h / 5))
    pixels = np.stack([base, base[::-1], 255 - base], axis=-1) + rng.normal(0, 10, (h, w, 3))
    pixels[h // 3 : h // 2, w // 4 : w // 2] = (250, 30, 30)  # a hard-edged block
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()
