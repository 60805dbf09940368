"""The command line the two shapes-world trainers share: output, seed, resuming, threads and recipe overrides."""

from __future__ import annotations

import argparse
import json
from typing import Any


def training_parser(description: str, steps_help: str, stop_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help=steps_help)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state (or --state-dir)")
    parser.add_argument("--stop-after", type=int, help=stop_help)
    parser.add_argument("--state-dir", help="where the periodic training state goes (default OUT/train_state)")
    parser.add_argument("--keep-state", action="store_true", help="keep the training state after the export")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--recipe", default="{}", help="JSON object of Recipe fields to override")
    return parser


def run_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(recipe overrides, keyword arguments of `train` other than `recipe`) from the parsed command line."""
    overrides = json.loads(args.recipe)
    if args.steps is not None:
        overrides["steps"] = args.steps
    options = {"seed": args.seed, "resume": args.resume, "stop_after": args.stop_after,
               "state_dir": args.state_dir, "keep_state": args.keep_state, "threads": args.threads}  # fmt: skip
    return overrides, options
