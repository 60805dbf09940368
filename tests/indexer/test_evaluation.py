"""Built-in evaluation: metrics checked against a hand computation, the shapes-world numbers reproduced from exported
files, and unusable evaluation data refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer import InvalidInput
from indexer.evaluation import (
    EvalData,
    compare,
    evaluate,
    headline,
    load_classification_set,
    load_retrieval_set,
)
from internvl_models.encoder import Encoder, EncoderInfo

SHIPPED = Path(__file__).resolve().parents[2] / "internvl_models" / "shapes_world" / "weights" / "internvl-shapes"

# The colour words the hand-made encoder below reads, as RGB directions.
WORDS = {
    "red": (1, 0, 0), "rot": (1, 0, 0), "green": (0, 1, 0), "grün": (0, 1, 0), "blue": (0, 0, 1),
    "blau": (0, 0, 1), "yellow": (1, 1, 0), "cyan": (0, 1, 1), "magenta": (1, 0, 1),
}  # fmt: skip


class ColourEncoder(Encoder):
    """An encoder whose outputs can be worked out by hand: an image is its mean RGB colour, a text the sum of the
    colour words it contains. Everything else (batching, normalisation) is the real `Encoder` base class."""

    def __init__(self) -> None:
        info = EncoderInfo(name="colour", dim=3, fingerprint="colour", image_size=1, logit_scale=1.0)
        super().__init__(info, device=torch.device("cpu"), dtype=torch.float32, image_batch_size=2)

    def preprocess_image(self, image: Image.Image, purpose: str = "retrieval") -> torch.Tensor:
        return torch.tensor(np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))).view(3, 1, 1)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.flatten(1)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        rows = [np.sum([WORDS[w] for w in text.split() if w in WORDS] or [(0, 0, 0)], axis=0) for text in texts]
        return torch.tensor(np.array(rows, dtype=np.float32))


def _png(path: Path, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), rgb).save(path)


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """3 classes with images, 3 more without; two images in a folder that does not match their colour."""
    root = tmp_path / "labelled"
    for name, rgb in {
        "red/r1.png": (255, 0, 0), "red/r2.png": (250, 10, 0), "red/r3.png": (0, 255, 0),
        "green/g1.png": (0, 255, 0),
        "blue/b1.png": (0, 0, 255), "blue/b2.png": (255, 0, 0), "blue/b3.png": (255, 255, 0),
    }.items():  # fmt: skip
        _png(root / name, rgb)
    spec = {
        "classes": ["red", "green", "blue", "yellow", "cyan", "magenta"],
        "names": {"red": {"de": "rot"}, "green": {"de": "grün"}, "blue": {"de": "blau"}, "yellow": {"de": "yellow"},
                  "cyan": {"de": "cyan"}, "magenta": {"de": "magenta"}},
        "templates": {"en": ["{label}"], "de": ["ein {label} Bild", "{label}"]},
    }  # fmt: skip
    (root / "classes.json").write_text(json.dumps(spec))
    return root


def test_classification_matches_a_hand_computation(labelled: Path) -> None:
    """Predictions by hand (cosine with the class colours; ties keep class order):
    red/: r1 red, r2 red, r3 green (red ranks 4th: green, yellow, cyan, red, ...);
    green/: g1 green; blue/: b1 blue, b2 red (blue 5th), b3 yellow (blue 6th: yellow, red, green, cyan, magenta).
    top-1 4/7; top-5 6/7 (only b3 misses); per-class recall red 2/3, green 1, blue 1/3 -> mean 2/3."""
    report = evaluate(ColourEncoder(), EvalData(classification=str(labelled)), [labelled.parent])
    result = report["classification"]
    assert (result["n_images"], result["n_classes"]) == (7, 6)
    assert set(result["languages"]) == {"en", "de"}
    for language in ("en", "de"):  # the same colours under German names and another ensemble
        metrics = result["languages"][language]
        assert metrics["top1"] == pytest.approx(4 / 7)
        assert metrics["top5"] == pytest.approx(6 / 7)
        assert metrics["mean_per_class_recall"] == pytest.approx(2 / 3)
    assert result["mean"]["top1"] == pytest.approx(4 / 7)


def test_top5_is_absent_below_five_classes(tmp_path: Path) -> None:
    for name, rgb in {"red/a.png": (255, 0, 0), "green/b.png": (255, 0, 0)}.items():
        _png(tmp_path / "two" / name, rgb)
    result = evaluate(ColourEncoder(), EvalData(classification=str(tmp_path / "two")), [tmp_path])["classification"]
    assert result["languages"]["en"] == {"top1": 0.5, "top5": None, "mean_per_class_recall": 0.5}


def test_retrieval_matches_a_hand_computation(tmp_path: Path) -> None:
    """en: images R, G, B; captions "red"->R, "green"->G, "blue"->G (wrong), "magenta"->B.
    text->image: red 1st, green 1st, blue: G ranks 3rd, magenta: B 2nd (tie with R, manifest order) -> R@1 2/4.
    image->text: R has "red" 1st, G has "green" 1st, B's only caption "magenta" is 2nd after "blue" -> R@1 2/3.
    de (gallery R, G): "rot"->R 1st, "blau"->G 2nd (all zero, tie) -> R@1 1/2 both ways."""
    for name, rgb in {"r.png": (255, 0, 0), "g.png": (0, 255, 0), "b.png": (0, 0, 255)}.items():
        _png(tmp_path / "ret" / name, rgb)
    lines = [
        {"image": "r.png", "captions": ["red"], "language": "en"},
        {"image": "g.png", "captions": ["green", "blue"], "language": "en"},
        {"image": "b.png", "captions": {"en": ["magenta"]}},
        {"image": "r.png", "captions": {"de": "rot"}},
        {"image": "g.png", "captions": {"de": ["blau"]}},
    ]
    manifest = tmp_path / "ret" / "captions.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = evaluate(ColourEncoder(), EvalData(retrieval=str(manifest)), [tmp_path])["retrieval"]
    en, de = result["languages"]["en"], result["languages"]["de"]
    assert (en["n_images"], en["n_captions"], de["n_images"], de["n_captions"]) == (3, 4, 2, 2)
    assert en["text_to_image"] == {"R@1": 0.5, "R@5": 1.0, "R@10": 1.0}
    assert en["image_to_text"]["R@1"] == pytest.approx(2 / 3) and en["image_to_text"]["R@5"] == 1.0
    assert de["text_to_image"]["R@1"] == 0.5 and de["image_to_text"]["R@1"] == 0.5
    assert result["mean"]["image_to_text"]["R@1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert headline({"retrieval": result})["retrieval.text_to_image.R@1"] == 0.5


def test_comparison_is_side_by_side() -> None:
    a = {"classification": {"mean": {"top1": 0.5, "top5": None}}}
    b = {"classification": {"mean": {"top1": 0.75, "top5": 0.9}}}
    assert compare(a, b) == {"classification.top1": {"a": 0.5, "b": 0.75, "delta": 0.25}}


def test_shapes_world_classification_is_reproduced_from_exported_files(tmp_path: Path) -> None:
    """The exported labelled folder gives the generic evaluation exactly the top-1 that the shapes world's own
    evaluation computes in memory (same scenes, PNG pixels, the 56 classes and the same prompt ensembles). Its
    retrieval counts only the paired image as a hit, so it is at most the shapes world's semantic R@k (where any
    scene satisfying the caption counts)."""
    if not (SHIPPED / "model.safetensors").is_file():
        pytest.skip(f"no shipped checkpoint at {SHIPPED}")
    from internvl_models.registry import create_encoder
    from internvl_models.shapes_world.eval_sets import write_caption_manifest, write_classification_folder
    from internvl_models.shapes_world.evaluate import evaluate_classification, evaluate_retrieval

    n, languages = 24, ("zh",)  # small: every class prompt goes through the text tower twice
    encoder = create_encoder("internvl-c", SHIPPED, device="cpu")
    folder = write_classification_folder(tmp_path / "cls", n, languages)
    manifest = write_caption_manifest(tmp_path / "ret", n, languages)
    ours = evaluate(encoder, EvalData(str(folder), str(manifest)), [tmp_path])
    theirs = evaluate_classification(encoder, n, languages)
    semantic = evaluate_retrieval(encoder, n, languages)
    assert ours["classification"]["n_classes"] == theirs["n_classes"] == 56
    for language in languages:
        assert round(ours["classification"]["languages"][language]["top1"], 4) == theirs[language]["top1"]
        exact = ours["retrieval"]["languages"][language]["text_to_image"]
        for k in ("R@1", "R@5"):  # the shapes world reports 4 decimals
            assert round(exact[k], 4) <= semantic[language][k]
        assert exact["R@1"] > 0.5  # far above chance (1/40): the pairing is right


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "needs at least 2 classes"),
        (lambda root: (root / "classes.json").write_text("[1, 2]"), "JSON object"),
        (lambda root: (root / "classes.json").write_text('{"classes": ["x"]}'), "every class folder"),
    ],
)
def test_unusable_labelled_folders_are_refused(tmp_path: Path, setup, message: str) -> None:  # noqa: ANN001
    root = tmp_path / "bad"
    _png(root / "red" / "a.png", (255, 0, 0))
    setup(root)
    with pytest.raises(InvalidInput, match=message):
        load_classification_set(str(root), [tmp_path])


def test_paths_outside_the_roots_and_bad_manifests_are_refused(tmp_path: Path, labelled: Path) -> None:
    with pytest.raises(InvalidInput, match="outside the allowed roots"):
        load_classification_set(str(labelled), [tmp_path / "elsewhere"])
    with pytest.raises(InvalidInput, match="no name or prompts in language 'fr'"):
        load_classification_set(str(labelled), [tmp_path], languages=["fr"])
    manifest = tmp_path / "m.jsonl"
    for text, message in [
        ("not json", "line 1: not JSON"),
        ('{"captions": ["a"]}', "needs an 'image'"),
        ('{"image": "a.png", "captions": []}', "captions must be non-empty"),
        ('{"image": "a.png", "captions": "a red"}', "'captions' must be a list"),
    ]:
        manifest.write_text(text + "\n")
        with pytest.raises(InvalidInput, match=message):
            load_retrieval_set(str(manifest), [tmp_path])
    manifest.write_text('{"image": "missing.png", "captions": ["red"]}\n')
    with pytest.raises(InvalidInput, match="evaluation image .*missing.png: no such file"):
        evaluate(ColourEncoder(), EvalData(retrieval=str(manifest)), [tmp_path])
