"""`python -m bench` runs a benchmark in its own process, keeps its JSON and prints the summary figures; a failing
or overrunning benchmark is reported without stopping the others. (The figures themselves are not checked here:
speed is measured by the benchmarks, never asserted by tests.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.__main__ import main


@pytest.mark.slow
def test_runner_runs_a_benchmark_and_prints_its_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "results.json"
    assert main(["--only", "chat", "--device", "cpu", "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "decode tokens/s" in printed and "load average before" in printed
    report = json.loads(out.read_text())
    assert report["mode"] == "quick" and report["machine"]["cores"] >= 1
    chat = report["results"]["chat"]
    assert chat["command"][:2] == ["-m", "bench.chat"] and "--threads" in chat["command"]
    assert chat["result"]["decode_tokens_per_s"] > 0


def test_runner_reports_a_benchmark_that_overruns(capsys: pytest.CaptureFixture) -> None:
    assert main(["--only", "search", "--timeout", "0.01"]) == 1
    assert "FAILED: timed out after 0.01 s" in capsys.readouterr().out


def test_runner_rejects_unknown_benchmarks() -> None:
    with pytest.raises(SystemExit):
        main(["--only", "nonsense"])


def test_local_intrinsic_dimension_reads_the_dimension_of_the_data_not_of_the_space() -> None:
    """bench.search states each data model's LID: on points of a 4-sphere set in 64 dimensions it reads ~4."""
    import numpy as np

    from bench.search import local_intrinsic_dimension

    rng = np.random.default_rng(0)
    sphere = np.zeros((20_000, 64), dtype=np.float32)
    sphere[:, :5] = rng.standard_normal((20_000, 5))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    assert 3.0 < local_intrinsic_dimension(sphere[200:], sphere[:200]) < 5.5


def test_powerlaw_spread_has_the_isotropic_total_variance_along_a_decaying_spectrum() -> None:
    import numpy as np

    from bench.search import spread_basis

    basis = spread_basis(32, "powerlaw", np.random.default_rng(0))
    variances = np.sort(np.linalg.eigvalsh(basis.T @ basis))[::-1]  # covariance of standard noise @ basis
    expected = 1.0 / np.arange(1, 33)
    np.testing.assert_allclose(variances, expected * 32 / expected.sum(), rtol=1e-4)
    assert spread_basis(32, "isotropic", np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="unknown data model"):
        spread_basis(32, "uniform", np.random.default_rng(0))


def test_search_benchmark_runs_a_variant_store_beside_the_kinds(capsys: pytest.CaptureFixture, monkeypatch) -> None:  # noqa: ANN001
    """`--variant NAME=KIND:JSON` adds a store with explicit params (how the IVF-PQ of before is measured against
    today's in one run), reported under its name with those params in force."""
    from bench.search import main as search_main

    variant = 'pq8=ivf_pq:{"nbits": 8, "refine": "sq8", "refine_factor": 16}'
    argv = ["bench.search", "--sizes", "3000", "--queries", "20", "--kinds", "flat", "--variant", variant, "--json"]
    monkeypatch.setattr("sys.argv", argv)
    search_main()
    results = json.loads(capsys.readouterr().out)["results"]
    assert set(results) == {"flat@3000", "pq8@3000"}
    assert results["pq8@3000"]["params"]["refine"] == "sq8" and results["pq8@3000"]["params"]["refine_factor"] == 16
    assert results["pq8@3000"]["operating_points"]["points"]


@pytest.mark.parametrize("variant", ["pq8", "pq8=nope:{}", "pq8=ivf_pq:{nbits: 8}", "pq8=ivf_pq:[8]", "=ivf_pq:{}"])
def test_search_benchmark_refuses_a_malformed_variant(variant: str, capsys: pytest.CaptureFixture, monkeypatch) -> None:  # noqa: ANN001
    from bench.search import main as search_main

    monkeypatch.setattr("sys.argv", ["bench.search", "--sizes", "3000", "--variant", variant])
    with pytest.raises(SystemExit) as exit_:
        search_main()
    assert exit_.value.code == 2 and "--variant" in capsys.readouterr().err


def test_search_benchmark_reports_live_updates(capsys: pytest.CaptureFixture, monkeypatch) -> None:  # noqa: ANN001
    from bench.search import main as search_main

    argv = ["bench.search", "--sizes", "3000", "--queries", "20", "--kinds", "flat,ivf_flat,ivf_pq", "--json"]
    monkeypatch.setattr("sys.argv", argv)
    search_main()
    results = json.loads(capsys.readouterr().out)["results"]
    for result in results.values():
        updates = result["updates_of_32"]
        assert set(updates) >= {"add_p50_ms", "search_after_add_p50_ms", "remove_p50_ms", "save_s"}
        assert updates["found_after_removals"] == 1.0  # vectors added where removed ones were are found
        assert all(updates[key] > 0 for key in ("add_p50_ms", "search_after_add_p50_ms", "remove_p50_ms", "save_s"))
        assert updates["search_during_save_max_ms"] >= 0  # 0 when the save ended before any search ran
        parallel = result["parallel_single_queries"]
        assert parallel["qps_1_thread"] > 0 and parallel["speedup"] > 0
    # Exact search's batches against faiss's default BLAS threshold, at the batch sizes the 20 queries allow.
    batched = results["flat@3000"]["batched_queries"]
    assert list(batched) == ["1", "2", "4", "8"] and all(
        b["ms_per_query"] > 0 and b["speedup"] > 0 for b in batched.values()
    )


def test_embeddings_benchmark_settles_one_shard_per_batch(capsys: pytest.CaptureFixture, monkeypatch) -> None:  # noqa: ANN001
    from bench.embeddings import main as embeddings_main

    argv = ["bench.embeddings", "--rows", "640", "--dim", "16", "--jobs", "30", "--json"]
    monkeypatch.setattr("sys.argv", argv)
    embeddings_main()
    report = json.loads(capsys.readouterr().out)
    assert report["shards_one_per_batch"] == 20 and report["shards_settled"] == 1
    stream = report["job_stream"]
    assert stream["jobs"] == 30 and 2 <= stream["most_shards"] <= 8
    assert 0 < stream["bytes_rewritten_per_byte_appended"] < 10


def test_embeddings_benchmark_refuses_bad_sizes(capsys: pytest.CaptureFixture, monkeypatch) -> None:  # noqa: ANN001
    from bench.embeddings import main as embeddings_main

    monkeypatch.setattr("sys.argv", ["bench.embeddings", "--rows", "0"])
    with pytest.raises(SystemExit) as exit_:
        embeddings_main()
    assert exit_.value.code == 2 and "--rows" in capsys.readouterr().err


def test_startup_benchmark_times_the_cli_against_importing_torch(capsys: pytest.CaptureFixture, monkeypatch) -> None:  # noqa: ANN001
    from bench.startup import main as startup_main

    monkeypatch.setattr("sys.argv", ["bench.startup", "--turns", "1", "--warm", "0"])
    startup_main()
    report = json.loads(capsys.readouterr().out)
    assert set(report["median_s"]) == {"python_alone", "import_torch", "help", "version", "config_show", "serve_ready"}
    assert all(seconds > 0 for seconds in report["median_s"].values())
    assert set(report["vs_import_torch"]) == {"help", "version", "config_show", "serve_ready"}


def test_startup_benchmark_stops_waiting_for_a_server_that_never_answers(monkeypatch) -> None:  # noqa: ANN001
    import bench.startup

    monkeypatch.setattr(bench.startup, "SERVE_READY_LIMIT_S", 0.0)
    with pytest.raises(RuntimeError, match="did not answer /healthz"):
        bench.startup.serve_ready_time()


def test_a_load_spread_over_client_processes_is_summarised_as_one() -> None:
    """bench.api's clients run in two processes; their samples are pooled: percentiles over every answer, requests/s
    over the longest part's wall time, failures added up."""
    from bench.http_client import summary

    one = {"times": [10.0] * 60 + [200.0], "in_route": [5.0] * 61, "errors": {"ReadError": 1}, "wall": 2.0}
    other = {"times": [20.0] * 39, "in_route": [], "errors": {"ReadError": 2, "503": 1}, "wall": 2.5}
    report = summary([one, other])
    assert report["requests_per_s"] == 100 / 2.5 and report["p50_ms"] == 10.0 and report["p99_ms"] == 200.0
    assert (report["in_route_p50_ms"], report["in_route_p99_ms"]) == (5.0, 5.0)
    assert report["errors"] == {"ReadError": 3, "503": 1}
    with pytest.raises(RuntimeError, match="no request was answered"):
        summary([{"times": [], "in_route": [], "errors": {"503": 4}, "wall": 1.0}])


def test_ingest_benchmark_sets_reduced_jpeg_decoding_against_a_full_decode(capsys: pytest.CaptureFixture) -> None:
    from bench.ingest import main as ingest

    ingest(["--encoder", "internvl-c", "--images", "4", "--batch", "2", "--seconds", "0.1", "--size", "900x700",
            "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["job_decode"] == "reduced JPEGs" and report["end_to_end_images_per_s"] > 0
    assert report["decode_preprocess_images_per_s_one_thread"] > 0 and report["same_full_decode"] > 0
    assert report["reduced_vs_full_decode"] > 0
    from bench.summary import SUMMARIES

    assert "decode + preprocess, one thread" in [row[0] for row in SUMMARIES["ingest"](report)]


def test_api_benchmark_in_process_figures(tmp_path: Path) -> None:
    """A search by id against one by the image's bytes, and the HTTP layer alone called as ASGI."""
    sys.path.insert(0, str(Path(__file__).parent / "indexer"))
    from hostile import cached_encoder_factory, engine_config, image_bytes

    from app.settings import load_settings
    from bench.api import asgi_layer, indexed_image_queries
    from indexer import Engine, IngestItem

    with Engine(engine_config(tmp_path, f"sqlite:///{tmp_path / 'c.db'}"), cached_encoder_factory).open() as engine:
        engine.create_collection("bench")
        items = [IngestItem.upload(image_bytes("red", (40, 30), seed=i), f"img{i}.png") for i in range(5)]
        engine.run_job(engine.submit("bench", items))
        figures = indexed_image_queries(engine, 6)
        settings = load_settings(data_dir=tmp_path / "data", device="cpu")
        layer = asgi_layer(settings, engine, 20)  # raises unless every call answered 200
    assert figures["by_id_p50_ms"] > 0 and figures["by_image_bytes_p50_ms"] > 0 and figures["speedup"] > 0
    assert layer["search_us"] > 0 and layer["trivial_async_route_us"] > 0
