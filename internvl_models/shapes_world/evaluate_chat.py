"""Held-out evaluation of a shapes-world chat checkpoint through the public inference path.

    python -m internvl_models.shapes_world.evaluate_chat DIR [--n 420] [--seed 0] [--split test]

The checkpoint is loaded with `load_chat_model` and `transformers.AutoTokenizer`; each question becomes the prompt
`build_query` makes (the checkpoint's template, its tiles per image from `image_to_tiles`), the model generates
greedily until the template's stop token, and the decoded response (official clean-up: special tokens skipped,
cut at the stop token) is scored with `answer_matches`. Reported: accuracy per question kind and per language,
grounding box well-formedness and IoU >= 0.5 rate, and the "looks at the image" check, i.e. colour / shape
accuracy with the real images minus the accuracy when every image is replaced by its own background with no
shapes on it.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image

from ..chat import InternVLChat, load_chat_model
from ..chat_model import config_tiles
from ..conversation import clean_response, get_template
from ..tiling import IMG_CONTEXT, build_query
from .answers import answer_matches, box_iou, parse_boxes
from .corpus import iter_qa
from .questions import QA
from .render import render_background

BLANK_KINDS = ("colour", "shape")
# A well-formed grounding answer: the InternVL markup with four integer coordinates in the 0-1000 frame.
_GROUNDING_RE = re.compile(r"^<ref>[^<]+</ref><box>\[\[(\d+), (\d+), (\d+), (\d+)\]\]</box>$")


class ChatRunner:
    """A checkpoint behind one method: (images, user turn) pairs -> responses, batched, greedy."""

    def __init__(self, directory: str | Path, *, device: str = "cpu", max_new_tokens: int = 48) -> None:
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
        image_token = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        self.model: InternVLChat = load_chat_model(directory, device=device, image_token_id=image_token)
        self.template = get_template(self.model.config.template)
        self.stop_id = self.tokenizer.convert_tokens_to_ids(self.template.stop_token)
        self.max_new_tokens = max_new_tokens

    def _tiles(self, image: Image.Image) -> torch.Tensor:
        return config_tiles(self.model.config, image)

    def query(self, prompt: str, tiles: Sequence[int]) -> str:
        return build_query(
            self.template,
            prompt,
            num_image_token=self.model.num_image_token,
            num_patches_list=list(tiles),
            system_message=self.model.config.system_message,
        )

    @torch.inference_mode()
    def answer(self, items: Sequence[tuple[Sequence[Image.Image], str]]) -> list[str]:
        """`prompt` already holds one `<image>` per image (QA.prompt() does); one left-padded batch."""
        pixels, queries = [], []
        for images, prompt in items:
            tiles = [self._tiles(im) for im in images]
            pixels += tiles
            queries.append(self.query(prompt, [len(t) for t in tiles]))
        self.tokenizer.padding_side = "left"
        encoded = self.tokenizer(queries, return_tensors="pt", padding=True, add_special_tokens=True)
        device = next(self.model.parameters()).device
        generated = self.model.generate(
            torch.cat(pixels).to(device, dtype=next(self.model.parameters()).dtype),
            encoded["input_ids"].to(device),
            encoded["attention_mask"].to(device),
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.stop_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        texts = self.tokenizer.batch_decode(generated.tolist(), skip_special_tokens=True)
        return [clean_response(self.template, text) for text in texts]


def blank_images(qa: QA) -> list[Image.Image]:
    """Each image of `qa` as its bare background: same size and colours, no shapes."""
    out = []
    for scene in qa.scenes:
        pixels = render_background(scene.background, scene.size).clip(0, 255).round().astype("uint8")
        out.append(Image.fromarray(pixels, "RGB"))
    return out


def well_formed_box(answer: str) -> bool:
    match = _GROUNDING_RE.match(answer.strip())
    if not match:
        return False
    x1, y1, x2, y2 = (int(v) for v in match.groups())
    return 0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000


def _rate(values: Sequence[bool]) -> float:
    return round(sum(values) / len(values), 4) if values else float("nan")


def score(questions: Sequence[QA], responses: Sequence[str]) -> dict[str, Any]:
    """Accuracy per kind, per language and per kind x language; grounding box statistics."""
    by_kind, by_language, by_both = defaultdict(list), defaultdict(list), defaultdict(list)
    boxes_ok, ious = [], []
    for qa, response in zip(questions, responses, strict=True):
        ok = answer_matches(response, qa.answer, qa.kind, qa.language)
        by_kind[qa.kind].append(ok)
        by_language[qa.language].append(ok)
        by_both[f"{qa.kind}/{qa.language}"].append(ok)
        if qa.kind == "grounding":
            boxes_ok.append(well_formed_box(response))
            predicted = parse_boxes(response)
            ious.append(box_iou(predicted[0], qa.value) if predicted else 0.0)
    return {
        "accuracy": {k: _rate(v) for k, v in by_kind.items()},
        "language_accuracy": {k: _rate(v) for k, v in by_language.items()},
        "kind_language_accuracy": {k: _rate(v) for k, v in sorted(by_both.items())},
        "grounding": {
            "well_formed": _rate(boxes_ok),
            "iou_at_0.5": _rate([iou >= 0.5 for iou in ious]),
            "mean_iou": round(sum(ious) / len(ious), 4) if ious else float("nan"),
        },
        "questions": len(questions),
    }


def run_all(runner: ChatRunner, items: Sequence[tuple[Sequence[Image.Image], str]], batch_size: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(items), batch_size):
        out += runner.answer(items[start : start + batch_size])
    return out


def evaluate_chat(
    directory: str | Path,
    *,
    n: int = 420,
    seed: int = 0,
    split: str = "test",
    batch_size: int = 32,
    device: str = "cpu",
    examples: int = 0,
) -> dict[str, Any]:
    """The JSON report of `n` held-out questions (kinds and languages balanced by `iter_qa`) plus the blank-image
    re-run of their colour and shape questions."""
    runner = ChatRunner(directory, device=device)
    questions = list(iter_qa(split, n, seed=seed))
    responses = run_all(runner, [(qa.images, qa.prompt()) for qa in questions], batch_size)
    report = score(questions, responses)
    looked = [(qa, r) for qa, r in zip(questions, responses, strict=True) if qa.kind in BLANK_KINDS]
    blank = run_all(runner, [(blank_images(qa), qa.prompt()) for qa, _ in looked], batch_size)
    report["looks_at_image"] = {}
    for kind in BLANK_KINDS:
        pairs = [(qa, r, b) for (qa, r), b in zip(looked, blank, strict=True) if qa.kind == kind]
        real = _rate([answer_matches(r, qa.answer, kind, qa.language) for qa, r, _ in pairs])
        empty = _rate([answer_matches(b, qa.answer, kind, qa.language) for qa, _, b in pairs])
        report["looks_at_image"][kind] = {"real": real, "blank": empty, "gain": round(real - empty, 4)}
    report["examples"] = [
        {"kind": qa.kind, "language": qa.language, "question": qa.question, "gold": qa.answer, "response": r}
        for qa, r in list(zip(questions, responses, strict=True))[:examples]
    ]
    report.update(split=split, seed=seed, checkpoint=str(directory))
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="chat checkpoint directory")
    parser.add_argument("--n", type=int, default=420, help="held-out questions (kinds and languages balanced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--examples", type=int, default=14, help="question/response pairs to include")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = evaluate_chat(
        args.checkpoint,
        n=args.n,
        seed=args.seed,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        examples=args.examples,
    )
    text = json.dumps(report, indent=1, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
