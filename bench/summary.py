"""The summary lines `python -m bench` prints: per benchmark, the figures the performance goals (issue #8) are
stated in, each as (figure, value, what it is measured against in the same run / the goal).

Each function reads the JSON a `bench.<name> --json` run printed; a missing key raises KeyError, which the runner
reports as "no summary" without failing the run.
"""

from __future__ import annotations

from collections.abc import Callable

Row = tuple[str, str, str]


def _f(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}"


def encode(r: dict) -> list[Row]:
    if "openclip_text" in r:  # `--openclip ARCH`: that run has only these figures
        o = r["openclip_text"]
        if isinstance(o, str):
            return [("open_clip text", o, "")]
        return [
            (f"open_clip {o['arch']} text queries/s", _f(o["queries_per_s_ours"]), f"{_f(o['speedup'])}x padded to 77 ({_f(o['queries_per_s_padded_77'])})"),
            ("  real-token fraction", _f(o["real_token_fraction_ours"]), f"padded {_f(o['real_token_fraction_padded'])}; goal >= 0.8"),
            ("  single query", f"{_f(o['single_query_ms_ours'])} ms", f"padded {_f(o['single_query_ms_padded'])} ms"),
        ]  # fmt: skip
    rows: list[Row] = [
        (
            "config",
            f"{r['config']} {r['dtype']} on {r['device']}",
            f"matmul peak {_f(r['text_matmul_peak_tflops'])} TFLOP/s (text rounds)",
        )
    ]
    for mode, goal in (("C", 0.55), ("G", 0.5)):
        key = f"image_{mode}"
        if key not in r:
            continue
        m = r[key]
        mfu = m.get("mfu_vs_h100_peak", m["mfu_vs_matmul"])
        basis = "H100 peak" if "mfu_vs_h100_peak" in m else "this machine's matmul"
        rows.append(
            (f"InternVL-{mode} images/s", _f(m["images_per_s"]), f"{_f(m['speedup_vs_before'])}x the eager baseline")
        )
        rows.append((f"InternVL-{mode} MFU", _f(mfu), f"vs {basis}; goal >= {goal} on an H100"))
    text, speed = r["text_packed"], r["text_speedups"]
    rows += [
        ("text queries/s (packed)", _f(text["queries_per_s"]), f"{_f(speed['packed_vs_before'])}x pad-80 eager unfused"),
        ("  vs pad-80 / pad-longest", f"{_f(speed['packed_vs_pad80'])}x / {_f(speed['packed_vs_pad_longest'])}x", "same kernels, padding only"),
        ("real-token fraction", _f(text["real_token_fraction"]), f"pad-longest {_f(r['text_pad_longest']['real_token_fraction'])}, pad-80 {_f(r['text_pad80']['real_token_fraction'])}; goal >= 0.8"),
        ("single query latency", f"{_f(r['single_query_latency_ms'])} ms", "one text, packed"),
        ("each optimisation alone", f"SDPA {_f(speed['sdpa_vs_eager_pad80'])}x, fused QKV {_f(speed['fused_qkv_vs_separate_pad80'])}x", "text at pad-80: vs eager attention / separate q,k,v"),
    ]  # fmt: skip
    return rows


def ingest(r: dict) -> list[Row]:
    return [
        ("end-to-end images/s", _f(r["end_to_end_images_per_s"]), f"model-only {_f(r['model_only_images_per_s'])}"),
        ("pipeline efficiency", _f(r["pipeline_efficiency"]), "end-to-end / model-only; goal >= 0.9"),
        ("encoder busy / waiting", f"{_f(r['encoder_busy_fraction'])} / {_f(r['encoder_wait_fraction'])}", "share of job wall time"),
        ("decode + preprocess, one thread", f"{_f(r['decode_preprocess_images_per_s_one_thread'])} images/s", f"{_f(r['reduced_vs_full_decode'])}x a full decode ({_f(r['same_full_decode'])}), {r['photo_size']} JPEGs"),
    ]  # fmt: skip


def search(r: dict) -> list[Row]:
    rows: list[Row] = []
    sizes = sorted({int(key.split("@")[1]) for key in r["results"]})
    for n in sizes:
        if str(n) in r.get("lid", {}):
            rows.append((f"data @ {n:,}", r.get("data", "isotropic"), f"local intrinsic dimension {r['lid'][str(n)]} (d={r['dim']})"))  # fmt: skip
        flat = r["results"].get(f"flat@{n}")
        if flat and "bandwidth_bound_ms" in flat:
            rows.append((f"flat @ {n:,} p50", f"{_f(flat['latency_p50_ms'])} ms", f"{_f(flat['latency_vs_bound'])}x the bandwidth bound {_f(flat['bandwidth_bound_ms'])} ms; goal <= 2 (GPU)"))  # fmt: skip
        for kind in ("hnsw", "ivf_flat", "ivf_pq"):
            ann = r["results"].get(f"{kind}@{n}")
            if ann is None:
                continue
            against = f"QPS {_f(ann['batch_qps'] / flat['batch_qps'])}x exact" if flat else "no exact run"
            rows.append(
                (f"{kind} @ {n:,} recall@10", _f(ann["recall_at_10"]), f"{against}; goal >= 0.95 at >= 10x (1M)")
            )
            best = ann.get("operating_points", {}).get("at_recall_0_95")
            if best is not None and "qps_vs_exact" in best:
                effort = "ef_search" if "ef_search" in best else "nprobe"
                rows.append((f"{kind} @ {n:,} at recall >= 0.95", f"{effort} {best[effort]}: {_f(best['recall_at_10'])}", f"QPS {_f(best['qps_vs_exact'])}x, p50 {_f(best['latency_speedup_vs_exact'])}x faster than exact; goal >= 10x (1M)"))  # fmt: skip
    return rows


def api(r: dict) -> list[Row]:
    rows: list[Row] = [
        ("in-process encode + search p50", f"{r['in_process_engine_search']['p50_ms']} ms", "one caller")
    ]
    if "in_process_on_a_worker_thread" in r:
        rows.append(("... from a pool thread p50", f"{r['in_process_on_a_worker_thread']['p50_ms']} ms", "where a server runs it"))  # fmt: skip
    if "trivial_route" in r:
        rows.append(("trivial FastAPI route p50", f"{r['trivial_route']['p50_ms']} ms", "same server setup, 1 client"))
        rows.append(("/v1/search server overhead", f"{r['http_overhead_p50_ms_one_client']} ms", f"{_f(r['overhead_vs_trivial_route'])}x the trivial route; goal <= 2"))  # fmt: skip
    if "trivial_async_route" in r:
        vs = r["overhead_vs_trivial_async_route"]
        rows.append(("trivial async route p50", f"{r['trivial_async_route']['p50_ms']} ms", f"overhead {_f(vs['from_in_process'])}x it; outside the engine {_f(vs['outside_engine'])}x"))  # fmt: skip
    if "asgi_layer" in r:
        a = r["asgi_layer"]
        rows.append(("/v1/search HTTP layer alone (ASGI, stubbed search)", f"{a['search_us']} us", f"{_f(a['ratio'])}x the trivial async route's {a['trivial_async_route_us']} us"))  # fmt: skip
    if "more_like_this" in r:
        m = r["more_like_this"]
        rows.append(("search by an indexed image's id p50", f"{m['by_id_p50_ms']} ms", f"by its bytes {m['by_image_bytes_p50_ms']} ms ({_f(m['speedup'])}x)"))  # fmt: skip
    if "http_minus_engine_time" in r:
        rows.append(("... outside the engine work (Server-Timing)", f"{r['http_minus_engine_time']['p50_ms']} ms", f"{_f(r['overhead_vs_trivial_route_outside_engine'])}x the trivial route; engine p50 {r['engine_time_in_the_server']['p50_ms']} ms in the server"))  # fmt: skip
    for mode in ("batching_on", "batching_off"):
        for clients, m in r["http"][mode].items():
            failed = f"; failed: {m['errors']}" if m.get("errors") else ""
            rows.append(
                (
                    f"{mode} {clients}",
                    f"p50 {m['p50_ms']} / p99 {m['p99_ms']} ms",
                    f"{m['requests_per_s']} req/s{failed}",
                )
            )
    rows.append(("batching gain (median req/s)", f"{r['median_batching_gain_rps']}x", "on vs off, same clients"))
    if "lone_query_p50_ms" in r:
        lone = r["lone_query_p50_ms"]
        for kind in ("search", "image-search"):
            rows.append((f"lone {kind} p50, batching on / off", f"{lone[f'{kind}_batching_on']} / {lone[f'{kind}_batching_off']} ms", "one client, interleaved turns"))  # fmt: skip
    for clients, gain in r.get("image_batching_gain_rps", {}).items():
        on, off = r["http_image_queries"]["batching_on"][clients], r["http_image_queries"]["batching_off"][clients]
        rows.append((f"image queries {clients}", f"{on['requests_per_s']} vs {off['requests_per_s']} req/s", f"batching on vs off: {gain}x; p99 {on['p99_ms']} vs {off['p99_ms']} ms"))  # fmt: skip
    return rows


def chat(r: dict) -> list[Row]:
    return [
        ("model", str(r["model"]), f"{r['dtype']} on {r['device']}"),
        ("vision tiles/s", _f(r["vision_tiles_per_s"]), f"{r['image_tokens_per_tile']} tokens per tile"),
        ("prefill tokens/s", _f(r["prefill_tokens_per_s"]), f"{r['prompt_tokens']}-token prompt"),
        ("decode tokens/s", _f(r["decode_tokens_per_s"]), "greedy, one sequence, KV cache"),
    ]


SUMMARIES: dict[str, Callable[[dict], list[Row]]] = {
    "encode": encode,
    "ingest": ingest,
    "search": search,
    "api": api,
    "chat": chat,
}
