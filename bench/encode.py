"""Encoder throughput: images/s and text queries/s of our InternVL-C/G, with MFU from counted FLOPs.

Every figure is printed next to a baseline measured in the same process:
* MFU = achieved FLOP/s / the FLOP/s of a large dense matmul in the same dtype on the same device (the
  practical peak of this machine, measured here, not a datasheet number) and, on CUDA, the datasheet peak too.
* Text: pad-to-longest (ours) against pad-to-80 (the official wrappers' padding), same queries.

    python -m bench.encode                       # mid-size config on CPU, float32
    python -m bench.encode --config 14b --device cuda --dtype bfloat16   # the real InternVL-14B-224px shape
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from internvl_models.config import InternViTConfig, InternVLConfig, QLLaMAConfig, load_preset
from internvl_models.internvl import InternVL

# ViT-B-sized tower and a 12-layer QLLaMA: the largest that gives stable CPU figures in about a minute.
MID = InternVLConfig(
    vision=InternViTConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12),
    qllama=QLLaMAConfig(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, vision_hidden_size=768
    ),
    clip_embed_dim=512,
    attn_pool_num_heads=12,
)
H100_BF16_DENSE_PEAK = 989e12
# Token lengths of typical search queries under the real tokenizer ("summarize:" + BOS/EOS included),
# measured on the English/Chinese captions of ../shared/parity/qllama_tokenizer.json: 10-25 tokens.
QUERY_LENGTHS = [10, 12, 13, 15, 16, 18, 20, 25]


def timed(fn: Callable[[], object], device: torch.device, min_seconds: float) -> float:
    """Seconds per call, after one warm-up call, averaged over at least `min_seconds`."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return elapsed / calls


def count_flops(fn: Callable[[], object]) -> int:
    # Grad mode on (no backward is run): the counter's module hooks need tensors that autograd tracks.
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, min_seconds: float) -> float:
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device, min_seconds)


def random_queries(batch: int, vocab: int, generator: torch.Generator) -> list[torch.Tensor]:
    lengths = [QUERY_LENGTHS[i % len(QUERY_LENGTHS)] for i in range(batch)]
    return [torch.randint(3, vocab, (n,), generator=generator) for n in lengths]


def pad(queries: list[torch.Tensor], length: int) -> torch.Tensor:
    ids = torch.zeros(len(queries), length, dtype=torch.long)  # pad id 0, right padding
    for row, q in enumerate(queries):
        ids[row, : len(q)] = q
    return ids


def run(args: argparse.Namespace) -> dict[str, object]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = MID if args.config == "mid" else load_preset("internvl-14b-224px")
    torch.manual_seed(0)
    with torch.device(device):
        model = InternVL(config).to(dtype).eval()
    size = config.image_size
    pixels = torch.randn(args.image_batch, 3, size, size, device=device, dtype=dtype)
    queries = random_queries(args.text_batch, config.qllama.vocab_size, torch.Generator().manual_seed(0))
    longest = pad(queries, max(len(q) for q in queries)).to(device)
    official = pad(queries, 80).to(device)
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        "config": args.config,
        "device": str(device),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
    }
    peak = matmul_peak(device, dtype, args.seconds)
    results["matmul_peak_tflops"] = peak / 1e12
    flops_of = {m: count_flops(lambda m=m: model.encode_image(pixels, mode=m)) for m in ("C", "G")}
    with torch.inference_mode():
        for mode in ("C", "G"):
            flops = flops_of[mode]
            seconds = timed(lambda m=mode: model.encode_image(pixels, mode=m), device, args.seconds)
            results[f"image_{mode}"] = {
                "images_per_s": args.image_batch / seconds,
                "tflop_per_image": flops / args.image_batch / 1e12,
                "mfu_vs_matmul": flops / seconds / peak,
                **({"mfu_vs_h100_peak": flops / seconds / H100_BF16_DENSE_PEAK} if device.type == "cuda" else {}),
            }
        for name, ids in (("text_pad_longest", longest), ("text_pad_80", official)):
            seconds = timed(lambda ids=ids: model.encode_text(ids), device, args.seconds)
            results[name] = {
                "queries_per_s": args.text_batch / seconds,
                "real_token_fraction": float((ids > 0).float().mean()),
            }
        one = official[:1, : len(queries[0])]
        results["single_query_latency_ms"] = 1e3 * timed(lambda: model.encode_text(one), device, args.seconds)
    results["text_speedup_longest_vs_80"] = (
        results["text_pad_longest"]["queries_per_s"] / results["text_pad_80"]["queries_per_s"]  # type: ignore[index]
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["mid", "14b"], default="mid")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--text-batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timing window per figure")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for key, value in results.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{key:<30} {value}")


if __name__ == "__main__":
    main()
