"""`python -m bench` runs a benchmark in its own process, keeps its JSON and prints the summary figures; a failing
or overrunning benchmark is reported without stopping the others. (The figures themselves are not checked here:
speed is measured by the benchmarks, never asserted by tests.)"""

from __future__ import annotations

import json
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
