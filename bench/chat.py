"""Chat model throughput: vision tiles/s (InternViT + pixel shuffle + mlp1), LLM prefill tokens/s and decode
tokens/s (greedy, one sequence, KV cache), on the same code path the service runs (`InternVLChat`).

    python -m bench.chat --config tiny --seconds 1          # a few seconds on a CPU
    python -m bench.chat --config 1b --device cuda --dtype bfloat16   # InternVL2.5-1B's shapes, random weights
    python -m bench.chat --checkpoint DIR_OR_HUB_ID --device cuda     # a real checkpoint

Synthetic configs are built with random weights (nothing is downloaded); the arithmetic is the same as with the
real weights. The prompt is one image's tiles plus `--text-tokens` text tokens, as an /v1/ask prompt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import torch

from bench.encode import timed
from internvl_models.chat import InternVLChat, load_chat_model
from internvl_models.chat_config import ChatConfig
from internvl_models.config import InternViTConfig
from internvl_models.device import resolve_device, resolve_dtype


def _qwen2(hidden: int, layers: int, heads: int, kv: int, intermediate: int, vocab: int) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
            "intermediate_size": intermediate, "vocab_size": vocab, "max_position_embeddings": 8192,
            "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}  # fmt: skip


def _vision(hidden: int, layers: int, heads: int, image: int) -> InternViTConfig:
    return InternViTConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
                           num_hidden_layers=layers, image_size=image, qkv_bias=True, qk_normalization=False,
                           norm_type="layer_norm", initializer_factor=1.0)  # fmt: skip


CONFIGS = {
    # name: (vision tower, LLM): tiny for a smoke run; small for CPU figures; 1b = InternVL2.5-1B's shapes
    # (InternViT-300M at 448 px, 256 image tokens per tile + Qwen2.5-0.5B).
    "tiny": (_vision(64, 2, 2, 56), _qwen2(128, 2, 4, 2, 256, 1000)),
    "small": (_vision(256, 6, 4, 224), _qwen2(384, 6, 6, 2, 1024, 16000)),
    "1b": (_vision(1024, 24, 16, 448), _qwen2(896, 24, 14, 2, 4864, 151674)),
}


def synthetic_model(name: str, device: torch.device, dtype: torch.dtype) -> InternVLChat:
    vision, llm = CONFIGS[name]
    raw = {"model_type": "internvl_chat", "vision_config": vision.to_official_config(), "llm_config": llm,
           "force_image_size": vision.image_size, "downsample_ratio": 0.5, "template": "internvl2_5"}  # fmt: skip
    config = dataclasses.replace(ChatConfig.from_official_config(raw), image_token_id=llm["vocab_size"] - 1)
    with torch.device(device):
        model = InternVLChat(config)
    return model.to(dtype).eval()


@torch.inference_mode()
def measure(model: InternVLChat, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    config, lm = model.config, model.language_model
    dtype = next(model.parameters()).dtype
    size = config.image_size
    tiles = torch.randn(args.tiles, 3, size, size, device=device, dtype=dtype)
    vision_s = timed(lambda: model.extract_feature(tiles), device, args.seconds, min_calls=2)
    prompt_len = args.tiles * config.num_image_token + args.text_tokens
    embeds = torch.randn(1, prompt_len, config.llm_hidden_size, device=device, dtype=dtype) * 0.02
    prefill_s = timed(
        lambda: lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1), device, args.seconds, min_calls=2
    )

    def decode() -> float:
        """Prefill (untimed), then `decode_tokens` greedy steps; returns the seconds of the steps."""
        out = lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.decode_tokens):
            out = lm(input_ids=token, past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1:].argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    decode()  # warm-up
    runs = [decode() for _ in range(args.decode_runs)]
    return {
        "vision_tiles_per_s": args.tiles / vision_s,
        "image_tokens_per_tile": config.num_image_token,
        "prompt_tokens": prompt_len,
        "prefill_tokens_per_s": prompt_len / prefill_s,
        "prefill_ms": prefill_s * 1e3,
        "decode_tokens_per_s": args.decode_tokens / min(runs),
        "decode_ms_per_token": min(runs) / args.decode_tokens * 1e3,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small", help="synthetic model shape")
    parser.add_argument("--checkpoint", help="a real chat checkpoint (directory or hub id) instead of --config")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on CUDA)")
    parser.add_argument("--tiles", type=int, default=4, help="tiles of the prompt image (and of a vision batch)")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--decode-runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="least time per timed figure")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="accepted for `python -m bench`; the output is JSON anyway")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.checkpoint:
        model = load_chat_model(args.checkpoint, device=device, dtype=dtype, image_token_id=0)
    else:
        model = synthetic_model(args.config, device, dtype)
    figures = measure(model, args, device)
    report = {
        "model": args.checkpoint or f"synthetic:{args.config}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
