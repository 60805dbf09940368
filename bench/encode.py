"""Encoder throughput: images/s and text queries/s of our InternVL-C/G, with MFU from counted FLOPs, each against
the straightforward eager version of the same math measured in the same process.

* ours: SDPA attention (flash / memory-efficient kernels on a GPU), fused q/k/v projections in QLLaMA, packed text
  (linear layers on real tokens only), the configured dtype (bf16 on CUDA, norms in fp32 as the reference does).
* before: the textbook path of the same weights: attention with the score matrix materialised (`eager_attend`),
  q/k/v as three GEMMs, and, for text, the official padding to 80 tokens. Each optimisation is also shown alone.
* MFU = counted FLOPs/s / the FLOP/s of a large dense matmul in the same dtype on the same device (this machine's
  practical peak, timed in turns with the model so both see the same load) and, on CUDA, / the H100's datasheet
  bf16 peak (989 TFLOP/s). Variants compared with each other are also timed in turns (`paired`, medians).
  FLOPs are counted with the eager attention (so attention counts on every backend), on one image x the batch.

    python -m bench.encode                                    # mid-size config on CPU, float32
    python -m bench.encode --config 14b --device cuda         # InternVL-14B-224px's shapes, random bf16 weights
    python -m bench.encode --config 14b --device cuda --compile   # + torch.compile'd image encoding beside eager
    python -m bench.encode --openclip ViT-B-32                # open_clip text: cut to real tokens vs padded to 77
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from internvl_models.config import InternViTConfig, InternVLConfig, QLLaMAConfig, load_preset
from internvl_models.internvl import InternVL
from internvl_models.layers import eager_attention, fuse_projections

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
OFFICIAL_LENGTH = 80


def timed(fn: Callable[[], object], device: torch.device, min_seconds: float, min_calls: int = 3) -> float:
    """Seconds per call, after one warm-up call, averaged over at least `min_seconds` (and `min_calls` calls)."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= min_calls:
            return elapsed / calls


_START = time.perf_counter()


def progress(message: str) -> None:
    """One line on stderr per phase, so a run cut short by a time limit still shows how far it got."""
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


def paired(fns: dict[str, Callable[[], object]], device: torch.device, min_seconds: float) -> dict[str, float]:
    """Median seconds per call of each function, called in turns (a, b, c, a, b, c, ...) after one warm-up each,
    for at least 3 rounds and until the slowest has run `min_seconds`: on a shared machine whose load drifts, every
    variant sees the same load, so their ratios hold even when the absolute times do not. A function much faster
    than the slowest runs several times per turn (as many as fit in the slowest's one call), so a 1 ms matmul
    beside a 1 s model neither needs a thousand rounds nor is timed from one noisy call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def once(fn: Callable[[], object], calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - start) / calls

    for fn in fns.values():  # warm-up: first calls compile, allocate, autotune
        once(fn, 1)
    single = {name: once(fn, 1) for name, fn in fns.items()}  # one warm call each, to size the turns
    slowest = max(single.values())
    calls = {name: max(1, min(1000, round(slowest / max(t, 1e-9)))) for name, t in single.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    while len(times[next(iter(fns))]) < 3 or max(sum(t) * calls[n] for n, t in times.items()) < min_seconds:
        for name, fn in fns.items():
            times[name].append(once(fn, calls[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, attention included (the eager matmuls are counted whatever backend SDPA would pick)."""
    with torch.inference_mode(), eager_attention(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class MatmulPeak:
    """A large dense matmul in the model's dtype: this machine's practical peak FLOP/s. Timed in the same rounds
    as the model (`paired`), so MFU compares the two under the same load."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        n = 8192 if device.type == "cuda" else 2048
        self.a = torch.randn(n, n, device=device, dtype=dtype)
        self.b = torch.randn(n, n, device=device, dtype=dtype)
        self.flops = 2 * n**3

    def __call__(self) -> torch.Tensor:
        return self.a @ self.b


def random_queries(batch: int, vocab: int, generator: torch.Generator) -> list[torch.Tensor]:
    lengths = [QUERY_LENGTHS[i % len(QUERY_LENGTHS)] for i in range(batch)]
    return [torch.randint(3, vocab, (n,), generator=generator) for n in lengths]


def pad(queries: list[torch.Tensor], length: int) -> torch.Tensor:
    ids = torch.zeros(len(queries), length, dtype=torch.long)  # pad id 0, right padding
    for row, q in enumerate(queries):
        ids[row, : len(q)] = q
    return ids


@contextlib.contextmanager
def before(model: InternVL, *, eager: bool = True, unfused: bool = True) -> Iterator[None]:
    """The "before" path: eager attention and/or separate q/k/v projections, restored on exit."""
    groups = [g for m in model.modules() for g in getattr(m, "fused_groups", ())]
    saved = [g.weight for g in groups]
    if unfused:
        for g in groups:
            g.weight = None
    try:
        with eager_attention() if eager else contextlib.nullcontext():
            yield
    finally:
        for g, weight in zip(groups, saved):
            g.weight = weight


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> InternVL:
    config = MID if args.config == "mid" else load_preset("internvl-14b-224px")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target dtype: 14B fp32 parameters would not fit an 80 GB GPU
    try:
        with torch.device(device):
            model = InternVL(config).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)
    return fuse_projections(model)


def image_figures(model: InternVL, args: argparse.Namespace, device: torch.device, matmul: MatmulPeak) -> dict:
    size = model.config.image_size
    pixels = torch.randn(args.image_batch, 3, size, size, device=device, dtype=next(model.parameters()).dtype)
    out = {}
    for mode in ("C", "G"):
        progress(f"image {mode}: counting FLOPs")
        flops = count_flops(lambda m=mode: model.encode_image(pixels[:1], mode=m)) * args.image_batch

        def run(m: str = mode) -> torch.Tensor:
            return model.encode_image(pixels, mode=m)

        def run_before(m: str = mode) -> torch.Tensor:
            with before(model):
                return model.encode_image(pixels, mode=m)

        variants = {"ours": run, "before": run_before, "matmul": matmul}
        compile_s = None
        if args.compile:  # torch.compile fuses the norms, layer scales and residual adds between the GEMMs
            compiled = torch.compile(model.encode_image, dynamic=False)

            def run_compiled(m: str = mode, fn: Callable[..., torch.Tensor] = compiled) -> torch.Tensor:
                return fn(pixels, mode=m)

            progress(f"image {mode}: compiling")
            start = time.perf_counter()
            with torch.inference_mode():
                run_compiled()
            if device.type == "cuda":
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            variants["compiled"] = run_compiled
        progress(f"image {mode}: timing {' / '.join(variants)}")
        with torch.inference_mode():
            seconds = paired(variants, device, args.seconds)
        ours, eager, peak = seconds["ours"], seconds["before"], matmul.flops / seconds["matmul"]
        out[f"image_{mode}"] = {
            "images_per_s": args.image_batch / ours,
            "tflop_per_image": flops / args.image_batch / 1e12,
            "mfu_vs_matmul": flops / ours / peak,
            **({"mfu_vs_h100_peak": flops / ours / H100_BF16_DENSE_PEAK} if device.type == "cuda" else {}),
            "before_images_per_s": args.image_batch / eager,
            "speedup_vs_before": eager / ours,
            "matmul_peak_tflops": peak / 1e12,
        }
        if compile_s is not None:
            out[f"image_{mode}"].update({
                "compiled_images_per_s": args.image_batch / seconds["compiled"],
                "compiled_mfu_vs_matmul": flops / seconds["compiled"] / peak,
                **({"compiled_mfu_vs_h100_peak": flops / seconds["compiled"] / H100_BF16_DENSE_PEAK}
                   if device.type == "cuda" else {}),
                "compiled_speedup_vs_ours": ours / seconds["compiled"],
                "compile_s": compile_s,
            })  # fmt: skip
    return out


def text_figures(model: InternVL, args: argparse.Namespace, device: torch.device, matmul: MatmulPeak) -> dict:
    queries = random_queries(args.text_batch, model.config.qllama.vocab_size, torch.Generator().manual_seed(0))
    real = sum(len(q) for q in queries)
    longest = pad(queries, max(len(q) for q in queries)).to(device)
    official = pad(queries, OFFICIAL_LENGTH).to(device)
    progress("text: counting FLOPs")
    useful = count_flops(lambda: model.encode_text(longest))  # the packed path: real tokens only
    # name: (ids, packed, which optimisations are undone (before()'s arguments), tokens the linear layers compute)
    variants = {
        "before_pad80_eager_unfused": (official, False, {"eager": True, "unfused": True}, official.numel()),
        "pad80_unfused": (official, False, {"eager": False, "unfused": True}, official.numel()),
        "pad80": (official, False, {"eager": False, "unfused": False}, official.numel()),
        "pad_longest": (longest, False, {"eager": False, "unfused": False}, longest.numel()),
        "packed": (longest, True, {"eager": False, "unfused": False}, real),
    }

    def call(ids: torch.Tensor, packed: bool, undone: dict[str, bool]) -> Callable[[], object]:
        def fn() -> torch.Tensor:
            with before(model, **undone):
                return model.encode_text(ids, packed=packed)

        return fn

    out: dict[str, object] = {}
    progress(f"text: timing {len(variants)} variants / matmul")
    with torch.inference_mode():
        times = paired({**{name: call(*v[:3]) for name, v in variants.items()}, "matmul": matmul}, device, args.seconds)
        peak = matmul.flops / times["matmul"]
        out["text_matmul_peak_tflops"] = peak / 1e12
        for name, (_, _, _, computed) in variants.items():
            seconds = times[name]
            out[f"text_{name}"] = {
                "queries_per_s": args.text_batch / seconds,
                "real_token_fraction": real / computed,
                "useful_mfu_vs_matmul": useful / seconds / peak,
            }
        one = official[:1, : len(queries[0])]
        out["single_query_latency_ms"] = 1e3 * timed(lambda: model.encode_text(one), device, args.seconds)
    rate = {k: v["queries_per_s"] for k, v in out.items() if isinstance(v, dict) and "queries_per_s" in v}
    out["text_speedups"] = {
        "packed_vs_before": rate["text_packed"] / rate["text_before_pad80_eager_unfused"],
        "packed_vs_pad80": rate["text_packed"] / rate["text_pad80"],
        "packed_vs_pad_longest": rate["text_packed"] / rate["text_pad_longest"],
        "sdpa_vs_eager_pad80": rate["text_pad80_unfused"] / rate["text_before_pad80_eager_unfused"],
        "fused_qkv_vs_separate_pad80": rate["text_pad80"] / rate["text_pad80_unfused"],
    }
    return out


# Search queries as people type them, for the open_clip figures (CLIP's tokenizer: 3-14 tokens with start and end).
OPENCLIP_QUERIES = [
    "a red car", "two dogs playing in the snow", "sunset over the sea", "logo", "a man riding a horse on a beach",
    "un chat noir sur un canapé", "ein rotes Auto vor einem Haus", "birthday cake with candles", "city at night",
    "a bowl of ramen", "mountain lake with reflections", "kids playing football", "old black and white photo",
    "a cat sleeping on a laptop keyboard", "wedding", "aerial view of a harbour with boats",
]  # fmt: skip


def openclip_text_figures(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """An open_clip text tower (random weights of `args.openclip`): our encoder's texts cut after their last token
    in groups of similar length, against open_clip's `encode_text` on the full 77-token context (the before)."""
    from internvl_models.openclip_encoder import MIN_REAL_TOKEN_FRACTION, OpenCLIPEncoder, length_groups

    encoder = OpenCLIPEncoder(args.openclip, device=device, dtype=dtype)
    texts = [OPENCLIP_QUERIES[i % len(OPENCLIP_QUERIES)] for i in range(args.text_batch)]
    ids = encoder.tokenizer(texts).to(device)
    ends = encoder._text_ends(ids)
    if ends is None:
        return {"openclip_text": f"{args.openclip}: the text tower cannot be cut (bidirectional or last-token)"}
    real = int((ends + 1).sum())
    groups = length_groups(ends.tolist(), MIN_REAL_TOKEN_FRACTION)
    computed = sum(len(g) * (int(ends[g].max()) + 1) for g in groups)
    progress(f"open_clip {args.openclip} text: timing ours / padded")
    with torch.inference_mode():
        times = paired(
            {"ours": lambda: encoder._text_features(texts), "padded": lambda: encoder.model.encode_text(ids)},
            device,
            args.seconds,
        )
        one = {"ours": lambda: encoder._text_features(texts[:1]), "padded": lambda: encoder.model.encode_text(ids[:1])}
        single = paired(one, device, args.seconds)
    return {
        "openclip_text": {
            "arch": args.openclip,
            "queries_per_s_ours": args.text_batch / times["ours"],
            "queries_per_s_padded_77": args.text_batch / times["padded"],
            "speedup": times["padded"] / times["ours"],
            "real_token_fraction_ours": real / computed,
            "real_token_fraction_padded": real / ids.numel(),
            "groups": len(groups),
            "single_query_ms_ours": 1e3 * single["ours"],
            "single_query_ms_padded": 1e3 * single["padded"],
        }
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.openclip:
        return openclip_text_figures(args, device, dtype)
    progress(f"building {args.config} on {device}")
    model = build(args, device, dtype)
    progress("built")
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        "config": args.config,
        "device": str(device),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "image_batch": args.image_batch,
        "text_batch": args.text_batch,
    }
    if device.type == "cuda":
        results["weights_gib"] = torch.cuda.memory_allocated() / 2**30
    matmul = MatmulPeak(device, dtype)
    if not args.skip_images:
        results.update(image_figures(model, args, device, matmul))
        progress("image figures: " + json.dumps({k: v for k, v in results.items() if k.startswith("image_")}))
    results.update(text_figures(model, args, device, matmul))
    if device.type == "cuda":
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["mid", "14b"], default="mid")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--text-batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timing window per figure")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-images", action="store_true", help="text figures only")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd image encoding")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--openclip", metavar="ARCH", help="instead: text figures of an open_clip arch (e.g. ViT-B-32)")
    args = parser.parse_args(argv)
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
