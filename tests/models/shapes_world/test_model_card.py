"""The shipped MODEL_CARD.md is exactly what the card generator makes of the shipped training logs and evaluation
reports: no number in it is typed by hand (test_trained_*.py check those reports against fresh evaluations)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from internvl_models.shapes_world.model_card import CARD_FILE, CHAT_DIR, RETRIEVAL_DIR, render_card

WEIGHTS = Path(__file__).resolve().parents[3] / "internvl_models" / "shapes_world" / "weights"


def test_card_matches_the_shipped_logs_and_reports() -> None:
    if not (WEIGHTS / CARD_FILE).is_file():
        pytest.skip(f"no model card shipped at {WEIGHTS / CARD_FILE}")
    assert (WEIGHTS / CARD_FILE).read_text(encoding="utf-8") == render_card(WEIGHTS), "run: make train-shapes (or "
    "python -m internvl_models.shapes_world.model_card " + str(WEIGHTS) + ")"


@pytest.mark.parametrize("name", [RETRIEVAL_DIR, CHAT_DIR])
def test_training_time_fits_the_budget(name: str) -> None:
    """Issue #4: both models from scratch in <= 45 minutes on 2 CPU cores, recorded by the trainers themselves."""
    logs = {n: WEIGHTS / n / "training_log.json" for n in (RETRIEVAL_DIR, CHAT_DIR)}
    if not logs[name].is_file():
        pytest.skip(f"{logs[name]} not shipped")
    log = json.loads(logs[name].read_text())
    assert log["host"]["cuda"] is None and log["host"]["torch_threads"] <= 2, log["host"]
    total = sum(json.loads(p.read_text())["wall_time_s"] for p in logs.values() if p.is_file())
    assert total <= 45 * 60, total
