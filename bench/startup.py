"""Start-up: how long `internvl-search` takes for commands that run no model (`--help`, `version`, `config show`),
and `serve` until `/healthz` answers (a fresh data directory each time), against the interpreter alone and against
importing torch, which the commands should not pay for (the encoders import it when one is created) and the server
does. Each command is a fresh process, run in interleaved turns; the figure is the median wall time.

    python -m bench.startup
    python -m bench.startup --turns 9
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CLI = str(Path(sys.executable).parent / "internvl-search")
BASELINES = {
    "python_alone": [sys.executable, "-c", "pass"],
    "import_torch": [sys.executable, "-c", "import torch"],
}
SERVE_READY_LIMIT_S = 300  # a server that neither answers nor exits stops the benchmark instead of hanging it
COMMANDS = {
    "help": [CLI, "--help"],
    "version": [CLI, "version"],
    "config_show": [CLI, "config", "show"],
}


def wall_time(command: list[str]) -> float:
    """Seconds from start to exit of one fresh process (its output discarded; a failure stops the benchmark)."""
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True, timeout=300)
    return time.perf_counter() - start


def serve_ready_time() -> float:
    """Seconds from starting `internvl-search serve` (empty data directory, free port) to a 200 from /healthz."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "INTERNVL_SEARCH_DATA_DIR": data_dir}
        start = time.perf_counter()
        server = subprocess.Popen([CLI, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"internvl-search serve exited with status {server.returncode}")
                if time.perf_counter() - start > SERVE_READY_LIMIT_S:
                    raise RuntimeError(f"internvl-search serve did not answer /healthz in {SERVE_READY_LIMIT_S} s")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                        if answer.status == 200:
                            return time.perf_counter() - start
                except OSError:
                    time.sleep(0.02)
        finally:
            server.terminate()
            server.wait(timeout=30)


def measure(turns: int, warm: int = 1) -> dict[str, object]:
    runs = {name: functools.partial(wall_time, command) for name, command in {**BASELINES, **COMMANDS}.items()}
    runs["serve_ready"] = serve_ready_time
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(warm):  # warm the page cache: the first start reads every library from disk
        for run in runs.values():
            run()
    for _ in range(turns):
        for name, run in runs.items():
            times[name].append(run())
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "turns": turns,
        "median_s": {name: round(value, 3) for name, value in median.items()},
        "vs_import_torch": {
            name: round(median[name] / median["import_torch"], 2) for name in [*COMMANDS, "serve_ready"]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=5, help="interleaved turns of every command (the median wins)")
    parser.add_argument("--warm", type=int, default=1, help="untimed turns first (the page cache), default 1")
    args = parser.parse_args()
    if args.turns < 1 or args.warm < 0:
        parser.error("--turns must be at least 1 and --warm at least 0")
    print(json.dumps({"benchmark": "startup", **measure(args.turns, args.warm)}))


if __name__ == "__main__":
    main()
