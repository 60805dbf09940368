"""The shapes world: a deterministic, fully labelled synthetic image-text world for training and testing tiny
InternVL-architecture models where no real weights can be downloaded.

Scenes hold 1-4 coloured shapes; captions, queries, zero-shot prompts and questions come in six languages
(en, zh, ja, de, fr, es), each with structured content so correctness can be checked without parsing text.
"""

from .answers import answer_matches, box_iou, interpret, normalise, parse_boxes
from .captions import (
    Caption,
    classification_prompts,
    classification_templates,
    describe_scene,
    query_caption,
    query_for,
    scene_captions,
)
from .content import CaptionContent, Mention, caption_matches, scene_satisfies
from .corpus import Pair, iter_pairs, iter_qa, iter_texts, write_demo_corpus
from .languages import get_language, list_languages
from .questions import QA, QUESTION_KINDS, grounding_answer, make_question
from .render import preview_grid, render_scene
from .scene import SPLITS, Scene, SceneObject, generate_scene, split_of, split_seeds
from .tokenizer_training import CHAT_SPECIAL_TOKENS, train_tokenizer
from .vocab import COLOURS, LANGUAGES, POSITIONS, SHAPES, SIZES

__all__ = [
    "CHAT_SPECIAL_TOKENS",
    "COLOURS",
    "LANGUAGES",
    "POSITIONS",
    "QA",
    "QUESTION_KINDS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Caption",
    "CaptionContent",
    "Mention",
    "Pair",
    "Scene",
    "SceneObject",
    "answer_matches",
    "box_iou",
    "caption_matches",
    "classification_prompts",
    "classification_templates",
    "describe_scene",
    "generate_scene",
    "get_language",
    "grounding_answer",
    "interpret",
    "iter_pairs",
    "iter_qa",
    "iter_texts",
    "list_languages",
    "make_question",
    "normalise",
    "parse_boxes",
    "preview_grid",
    "query_caption",
    "query_for",
    "render_scene",
    "scene_captions",
    "scene_satisfies",
    "split_of",
    "split_seeds",
    "train_tokenizer",
    "write_demo_corpus",
]
