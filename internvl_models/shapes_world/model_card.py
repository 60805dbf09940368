"""Write MODEL_CARD.md for the shipped shapes-world checkpoints from their training logs and evaluation reports.

    python -m internvl_models.shapes_world.model_card WEIGHTS_DIR

WEIGHTS_DIR holds `internvl-shapes/` (InternVL-C/G) and, once trained, `internvl-chat-shapes/`; each has the
`training_log.json` its trainer wrote and the `evaluation.json` its evaluator wrote. Nothing in the card is typed
by hand: re-training (`make train-shapes`) rewrites it, numbers included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import safe_open

RETRIEVAL_DIR, CHAT_DIR = "internvl-shapes", "internvl-chat-shapes"
LOG_FILE, EVAL_FILE, CARD_FILE = "training_log.json", "evaluation.json", "MODEL_CARD.md"
LANGUAGES = ("en", "zh", "ja", "de", "fr", "es")
# The floors of issue #4, the ones tests/models/shapes_world/ assert.
RETRIEVAL_FLOORS = {"R@1": 0.70, "R@5": 0.92, "gap_to_en": 0.05, "top1": 0.70}
CHAT_FLOORS = {"colour": 0.75, "shape": 0.75, "existence": 0.75, "count": 0.70, "position": 0.60,
               "multi_image": 0.70}  # fmt: skip
CHAT_IOU_RATE, CHAT_LOOK_GAIN = 0.40, 0.4
TIME_BUDGET_MIN = 45  # both models from scratch on 2 CPU cores


def host_summary() -> dict[str, Any]:
    """What the trainers record about the machine, so the card can say where its times were measured."""
    import torch  # only the trainers call this; the card itself needs no torch

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "torch": str(torch.__version__),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def parameter_count(directory: Path) -> int:
    total = 0
    with safe_open(directory / "model.safetensors", framework="np") as f:
        for key in f.keys():
            total += int(_numel(f.get_slice(key).get_shape()))
    return total


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _host_line(log: dict[str, Any]) -> str:
    host, note = log.get("host"), ""
    if not host:  # logs written before the trainers recorded it: the machine writing the card
        host, note = {**host_summary(), "torch_threads": "?"}, " (read when this card was written)"
    where = (
        host["cuda"] or f"{host['cpu_count']} CPU cores ({host['processor']}), {host['torch_threads']} torch threads"
    )
    return f"machine{note}: {where}; torch {host['torch']}"


def _curve(log: dict[str, Any], columns: Sequence[str]) -> list[str]:
    rows = [[row.get(c, "") for c in columns] for row in log["curve"]]
    return _table(columns, rows)


def _recipe(log: dict[str, Any]) -> list[str]:
    items = sorted(log["recipe"].items())
    return [
        "<details><summary>recipe (every field)</summary>",
        "",
        *_table(["field", "value"], items),
        "",
        "</details>",
    ]


def retrieval_misses(report: dict[str, Any]) -> list[str]:
    """Each floor of issue #4 that a head misses, in words (the card says so rather than leave it to the reader)."""
    out, floors = [], RETRIEVAL_FLOORS
    for head in ("c", "g"):
        ret, cls = report[f"internvl-{head}"]["retrieval"], report[f"internvl-{head}"]["classification"]
        for metric in ("R@1", "R@5"):
            if ret["min"][metric] < floors[metric]:
                out.append(f"{head.upper()} text->image {metric} {ret['min'][metric]} (floor {floors[metric]})")
        if ret["max_gap_to_en"]["R@1"] > floors["gap_to_en"]:
            out.append(f"{head.upper()} language gap {ret['max_gap_to_en']['R@1']} (floor {floors['gap_to_en']})")
        if cls["min"]["top1"] < floors["top1"]:
            out.append(f"{head.upper()} zero-shot top-1 {cls['min']['top1']} (floor {floors['top1']})")
    if report["internvl-g"]["retrieval"]["mean"]["R@1"] < report["internvl-c"]["retrieval"]["mean"]["R@1"]:
        out.append("G below C")
    return out


RETRIEVAL_CURVE = ["step", "loss", "c", "g", "cls", "cls_aux", "aux_patch", "temperature_inv", "val_r1_c", "val_r1_g",
                   "elapsed_s"]  # fmt: skip


def retrieval_section(directory: Path) -> list[str]:
    log, report = _read(directory / LOG_FILE), _read(directory / EVAL_FILE)
    if log is None or report is None:
        return [f"## InternVL-C/G (`{RETRIEVAL_DIR}/`)", "", "Not trained yet (no training log or evaluation)."]
    config = json.loads((directory / "config.json").read_text())
    lines = [
        f"## InternVL-C/G (`{RETRIEVAL_DIR}/`)",
        "",
        f"InternVL-14B-224px layout and classes ({parameter_count(directory):,} parameters): "
        f"InternViT {config['vision_config']['num_hidden_layers']} layers x {config['vision_config']['hidden_size']}"
        f" at {config['vision_config']['image_size']} px, QLLaMA {config['qllama_config']['num_hidden_layers']} "
        f"layers x {config['qllama_config']['hidden_size']} with {config['qllama_config']['num_query_token']} "
        f"learnable queries, {config['clip_embed_dim']}-d embeddings.",
        "",
        f"Seed {log['seed']}; training time **{_minutes(log['wall_time_s'])}** (wall clock, scene rendering and "
        f"periodic validation included); {_host_line(log)}.",
        "",
        "### Held-out test scenes (500, all-object captions, a hit = the retrieved scene satisfies the caption)",
        "",
    ]
    rows = []
    for head in ("c", "g"):
        ret, cls = report[f"internvl-{head}"]["retrieval"], report[f"internvl-{head}"]["classification"]
        for language in LANGUAGES:
            rows.append([head.upper(), language, ret[language]["R@1"], ret[language]["R@5"], cls[language]["top1"]])
        rows.append([head.upper(), "**worst**", ret["min"]["R@1"], ret["min"]["R@5"], cls["min"]["top1"]])
    lines += _table(["head", "language", "text->image R@1", "R@5", "zero-shot top-1 (56 classes)"], rows)
    floors = RETRIEVAL_FLOORS
    misses = retrieval_misses(report)
    lines += [
        "",
        "**Below the floors:** " + "; ".join(misses) + "." if misses else "Every floor below is met.",
    ]
    lines += [
        "",
        f"Floors: R@1 >= {floors['R@1']}, R@5 >= {floors['R@5']}, every language within {floors['gap_to_en']} of "
        f"English, G >= C, zero-shot top-1 >= {floors['top1']} (asserted by "
        "`tests/models/shapes_world/test_trained_internvl.py`).",
        "",
        "### Learning curve (validation R@1, mean over the six languages, 200 validation scenes)",
        "",
        *_curve(log, RETRIEVAL_CURVE),
        "",
        *_recipe(log),
    ]
    return lines


def chat_misses(report: dict[str, Any]) -> list[str]:
    """The chat floors `report` (an evaluate_chat report) misses, one phrase each."""
    out = [f"{kind} {report['accuracy'][kind]} (floor {floor})" for kind, floor in CHAT_FLOORS.items()
           if report["accuracy"][kind] < floor]  # fmt: skip
    grounding = report["grounding"]
    if grounding["well_formed"] < 1.0:
        out.append(f"well-formed boxes {grounding['well_formed']:.0%} (floor 100%)")
    if grounding["iou_at_0.5"] < CHAT_IOU_RATE:
        out.append(f"boxes with IoU >= 0.5 {grounding['iou_at_0.5']:.0%} (floor {CHAT_IOU_RATE:.0%})")
    out += [f"{kind} gain over blank images {v['gain']} (floor {CHAT_LOOK_GAIN})"
            for kind, v in report["looks_at_image"].items() if v["gain"] < CHAT_LOOK_GAIN]  # fmt: skip
    return out


def chat_section(directory: Path) -> list[str]:
    log, report = _read(directory / LOG_FILE), _read(directory / EVAL_FILE)
    if log is None or report is None:
        return [f"## Chat model (`{CHAT_DIR}/`)", "", "Not trained yet (no training log or evaluation)."]
    config = json.loads((directory / "config.json").read_text())
    llm = config["llm_config"]
    lines = [
        f"## Chat model (`{CHAT_DIR}/`)",
        "",
        f"InternVL2.5 `internvl_chat` layout ({parameter_count(directory):,} parameters): the InternViT of the "
        f"C/G model, pixel shuffle ({config['downsample_ratio']}), `mlp1`, and a {llm['num_hidden_layers']}-layer "
        f"{llm['architectures'][0]} of width {llm['hidden_size']}; template `{config['template']}`.",
        "",
        f"Seed {log['seed']}; training time **{_minutes(log['wall_time_s'])}**; vision tower from "
        f"`{Path(str(log.get('vision_init', '?'))).name}`; {_host_line(log)}.",
        "",
        f"### Held-out test questions ({report['questions']}, greedy decoding through the public inference path)",
        "",
    ]
    accuracy = report["accuracy"]
    rows = [[kind, accuracy[kind], CHAT_FLOORS.get(kind, "")] for kind in sorted(accuracy)]
    lines += _table(["kind", "accuracy", "floor"], rows)
    grounding, looks = report["grounding"], report["looks_at_image"]
    misses = chat_misses(report)
    lines += [
        "",
        "**Below the floors:** " + "; ".join(misses) + "." if misses else "Every floor of the chat model is met.",
        "",
        f"Grounding: {grounding['well_formed']:.0%} of boxes well formed, IoU >= 0.5 for "
        f"{grounding['iou_at_0.5']:.0%} (floor 40%), mean IoU {grounding['mean_iou']}.",
        "",
        "Looking at the image (same questions, every image replaced by its empty background):",
        "",
        *_table(
            ["kind", "real images", "blank images", "gain (floor 0.4)"],
            [[k, v["real"], v["blank"], v["gain"]] for k, v in looks.items()],
        ),  # fmt: skip
        "",
        "Per language: " + ", ".join(f"{k} {v}" for k, v in report["language_accuracy"].items()) + ".",
        "",
        "### Learning curve",
        "",
        *_curve(log, sorted({k for row in log["curve"] for k in row}, key=lambda k: (k not in ("stage", "step"), k))),
        "",
        *_recipe(log),
    ]
    return lines


def _total_time(weights: Path) -> list[str]:
    """The line on both trainings' wall time against issue #4's budget, once both logs exist."""
    logs = [_read(weights / name / LOG_FILE) for name in (RETRIEVAL_DIR, CHAT_DIR)]
    if any(log is None for log in logs):
        return []
    total = sum(log["wall_time_s"] for log in logs)  # type: ignore[index]
    return ["", f"Both trainings from scratch: **{_minutes(total)}** of wall clock (budget {TIME_BUDGET_MIN} min)."]


def render_card(weights: Path) -> str:
    """The card's markdown, from what lies in `weights` (its two checkpoint directories)."""
    lines = [
        "# Shapes-world models",
        "",
        "Tiny models of the real InternVL architectures, trained from scratch on this project's synthetic shapes "
        "world (`internvl_models/shapes_world/`): seeded scenes of 1-4 shapes (7 shapes, 8 colours, 2 sizes, a 3x3 "
        "grid of positions) on noisy backgrounds, captions and questions generated from templates in English, "
        "Chinese, Japanese, German, French and Spanish. Training, validation and test scenes come from disjoint "
        "seed streams. They exist so that `make run` and the tests show the service doing its real job without "
        "downloading weights; they know nothing beyond this world.",
        "",
        "Re-train both and rewrite this card: `make train-shapes` (same seed -> same weights and metrics on CPU).",
        *_total_time(weights),
        "",
        *retrieval_section(weights / RETRIEVAL_DIR),
        "",
        *chat_section(weights / CHAT_DIR),
        "",
    ]
    return "\n".join(lines)


def write_card(weights: Path) -> Path:
    out = weights / CARD_FILE
    out.write_text(render_card(weights), encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="directory holding internvl-shapes/ and internvl-chat-shapes/")
    print(write_card(Path(parser.parse_args(argv).weights)))


if __name__ == "__main__":
    main()
