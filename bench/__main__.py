"""Every benchmark in one command: `python -m bench` (or `internvl-search bench`).

    python -m bench                         # quick mode: every benchmark at a small size, a few minutes on a CPU
    python -m bench --full                  # the sizes RESULTS.md records (tens of minutes on a CPU)
    python -m bench --only encode,search    # a subset; --device cuda for the GPU figures
    python -m bench --json results.json     # also write every figure, with the machine, to a file

Each benchmark runs in its own process (a fresh allocator, thread pool and GPU context per figure set) as
`python -m bench.<name> ... --json`; its full output is kept, and a summary prints the figures the performance
goals are stated in, each next to the baseline it was measured against in the same run. The machine (CPU, cores,
load average before and after, GPU) is printed with them: on a shared machine the load changes absolute figures,
while ratios within one run stay meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.summary import SUMMARIES


@dataclass(frozen=True)
class Bench:
    name: str
    quick: list[str]
    full: list[str]
    device_flag: bool = True  # takes --device
    threads_flag: bool = False  # takes --threads (torch CPU threads)
    cuda_full: list[str] = field(default_factory=list)  # replaces `full` on a GPU


BENCHES = [
    Bench(
        "encode",
        quick=["--image-batch", "2", "--text-batch", "32", "--seconds", "1"],
        full=["--image-batch", "8", "--text-batch", "64", "--seconds", "3"],
        cuda_full=["--config", "14b", "--image-batch", "64", "--text-batch", "128", "--seconds", "3"],
        threads_flag=True,
    ),
    Bench(
        "ingest",
        quick=["--images", "64", "--batch", "16", "--seconds", "2"],
        full=["--images", "256", "--batch", "32", "--seconds", "5"],
    ),
    Bench(
        "search",
        quick=["--sizes", "100000", "--queries", "500"],
        full=["--sizes", "100000,1000000", "--queries", "1000"],
        device_flag=False,
    ),
    Bench(
        "api",
        quick=["--images", "50", "--requests", "60"],
        full=["--images", "200", "--requests", "300", "--vectors", "100000"],
    ),
    Bench(
        "chat",
        quick=["--config", "tiny", "--seconds", "1"],
        full=["--config", "small", "--seconds", "3"],
        threads_flag=True,
    ),
]


def machine() -> dict[str, object]:
    """What the figures were measured on; the load average says how shared the machine was."""
    cpu = platform.processor() or platform.machine()
    with_model = Path("/proc/cpuinfo")
    if with_model.is_file():
        for line in with_model.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def run_bench(bench: Bench, args: argparse.Namespace) -> dict[str, object]:
    """One benchmark in a subprocess; its JSON result, or an "error" entry (the other benchmarks still run)."""
    cuda = args.device.startswith("cuda")
    extra = (bench.cuda_full or bench.full) if args.full and cuda else bench.full if args.full else bench.quick
    command = [sys.executable, "-m", f"bench.{bench.name}", *extra, "--json"]
    if bench.device_flag:
        command += ["--device", args.device]
    if bench.threads_flag and args.threads:
        command += ["--threads", str(args.threads)]
    print(f"\n== {bench.name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s", "command": command[1:]}
    seconds = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {"error": f"exit status {done.returncode}", "stderr_tail": tail, "command": command[1:]}
    text = done.stdout
    try:
        result = json.loads(text[text.index("{") :])  # anything a library printed before the JSON is skipped
    except ValueError:
        return {"error": "no JSON in the output", "stdout_tail": text[-2000:], "command": command[1:]}
    return {"command": command[1:], "seconds": seconds, "result": result}


def print_summary(
    name: str, outcome: dict[str, object], summarise: Callable[[dict], list[tuple[str, str, str]]]
) -> None:
    if "error" in outcome:
        print(f"  FAILED: {outcome['error']}")
        for key in ("stderr_tail", "stdout_tail"):
            if key in outcome:
                print("  " + str(outcome[key]).replace("\n", "\n  "))
        return
    print(f"  ({outcome['seconds']} s)")
    try:
        rows = summarise(outcome["result"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        print(f"  (no summary: {exc!r}; the full result is in the JSON output)")
        return
    width = max((len(r[0]) for r in rows), default=0)
    for figure, value, against in rows:
        print(f"  {figure:<{width}}  {value:<24} {against}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the sizes RESULTS.md records (slow on a CPU)")
    parser.add_argument("--only", default=",".join(b.name for b in BENCHES), help="comma-separated benchmarks")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when torch sees one)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads for encode/chat (1 avoids spin-waits on a busy CPU)"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark before it is stopped")
    parser.add_argument("--json", dest="json_out", default=None, help="write every result to this file")
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = args.only.split(",")
    unknown = sorted(set(chosen) - {b.name for b in BENCHES})
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {[b.name for b in BENCHES]}")
    report: dict[str, object] = {"mode": "full" if args.full else "quick", "device": args.device, "machine": machine()}
    print(f"machine: {json.dumps(report['machine'])}\nmode: {report['mode']}, device: {args.device}")
    results = {}
    for bench in (b for b in BENCHES if b.name in chosen):
        results[bench.name] = run_bench(bench, args)
        print_summary(bench.name, results[bench.name], SUMMARIES[bench.name])
    report["results"] = results
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(f"\nload average before {report['machine']['load_average']}, after {report['load_average_after']}")  # type: ignore[index]
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.json_out}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
