"""Start-up of the command line: how long `internvl-search` takes for commands that run no model (`--help`,
`version`, `config show`), against the interpreter alone and against importing torch, which those commands should
not pay for (the encoders import it when one is created). Each command is a fresh process, run in interleaved
turns; the figure is the median wall time.

    python -m bench.startup
    python -m bench.startup --turns 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "internvl-search")
BASELINES = {
    "python_alone": [sys.executable, "-c", "pass"],
    "import_torch": [sys.executable, "-c", "import torch"],
}
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


def measure(turns: int) -> dict[str, object]:
    runs = {**BASELINES, **COMMANDS}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for command in runs.values():  # warm the page cache: the first start reads every library from disk
        wall_time(command)
    for _ in range(turns):
        for name, command in runs.items():
            times[name].append(wall_time(command))
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "turns": turns,
        "median_s": {name: round(value, 3) for name, value in median.items()},
        "vs_import_torch": {name: round(median[name] / median["import_torch"], 2) for name in COMMANDS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=5, help="interleaved turns of every command (the median wins)")
    args = parser.parse_args()
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    print(json.dumps({"benchmark": "startup", **measure(args.turns)}))


if __name__ == "__main__":
    main()
