"""English lexicon and templates."""

from __future__ import annotations

import random

from ..content import Mention
from .base import Frame, Language, pick

COLOURS = {
    "red": ("red",),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "pink": ("pink",),
    "black": ("black",),
}
NOUNS = {  # (singular, plural) variants
    "circle": (("circle", "circles"),),
    "square": (("square", "squares"),),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
    "hexagon": (("hexagon", "hexagons"),),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
    None: (("shape", "shapes"), ("object", "objects")),  # when the shape is not said
    "object": (("object", "objects"),),  # shape questions: "what shape is the red object?"
}
SIZES = {"small": ("small", "little"), "large": ("large", "big")}
POSITIONS = {  # (adverbial phrases, short canonical name)
    "top_left": (("in the top left", "in the top left corner", "at the top left"), "top left"),
    "top": (("at the top", "at the top center"), "top"),
    "top_right": (("in the top right", "in the top right corner", "at the top right"), "top right"),
    "left": (("on the left", "on the left side"), "left"),
    "center": (("in the center", "in the middle"), "center"),
    "right": (("on the right", "on the right side"), "right"),
    "bottom_left": (("in the bottom left", "in the bottom left corner", "at the bottom left"), "bottom left"),
    "bottom": (("at the bottom", "at the bottom center"), "bottom"),
    "bottom_right": (("in the bottom right", "in the bottom right corner", "at the bottom right"), "bottom right"),
}
NUMBERS = {0: ("zero", "none"), 1: ("one",), 2: ("two",), 3: ("three",), 4: ("four",), 5: ("five",)}


class English(Language):
    code = "en"
    name = "English"

    list_frames = (
        Frame("{list}.", "{list}."),
        Frame("A picture of {list}.", "A picture of {list}."),
        Frame("An image showing {list}.", "An image showing {list}."),
        Frame("There is {list}.", "There are {count}: {list}."),  # not "there are a red star and ..."
        Frame("An image with {count}: {list}.", "An image with {count}: {list}."),
    )
    items = {"default": ("{indef} {pos}", "{indef} ({pos_short})")}
    sentences = ("{pos}, there is {indef}.", "There is {indef} {pos}.", "{indef} is {pos}.")
    sentence_intros = (Frame("", ""), Frame("", ""), Frame("There is {count}.", "There are {count}."))
    query_templates = ("{indef}", "{bare}", "a picture of {indef}", "an image with {indef}", "{indef}.")
    classification_templates = (
        "a photo of {indef}.",
        "a picture of {indef}.",
        "a drawing of {indef}.",
        "an image containing {indef}.",
        "{indef} on a plain background.",
    )
    questions = {
        "colour": ("What colour is {def}?", "What color is {def}?", "Which colour does {def} have?"),
        "shape": ("What shape is {def}?", "What is the shape of {def}?"),
        "count": ("How many {plural} are there?", "How many {plural} are in the image?", "Count the {plural}."),
        "position": ("Where is {def}?", "Where is {def} located?", "In which part of the image is {def}?"),
        # The last three are the service's relevance prompt (indexer/chat.py, "Does this image show: {query}?")
        # around a search query or an /v1/ask question: chat rerank and "not found" ask the model exactly that.
        "existence": (
            "Is there {indef}?",
            "Is there {indef} in the image?",
            "Does the image contain {indef}?",
            "Does this image show: {indef}?",
            "Does this image show: Which image shows {indef}?",
            "Does this image show: Which picture contains {indef}?",
        ),
        "grounding": (
            "Please provide the bounding box coordinate of the region this sentence describes: <ref>{bare}</ref>",
            "Where is the <ref>{bare}</ref>? Give its bounding box.",
            "Locate the <ref>{bare}</ref> in the image.",
        ),
        "multi_image": (
            "Which image shows {indef}?",
            "In which image is there {indef}?",
            "Which picture contains {indef}?",
        ),
    }

    colour_answers = {c: words for c, words in COLOURS.items()}
    shape_answers = {
        "circle": ("circle", "round", "a circle"),
        "square": ("square", "a square"),
        "triangle": ("triangle", "a triangle"),
        "star": ("star", "a star"),
        "cross": ("cross", "a cross", "plus", "plus sign", "a plus sign"),
        "hexagon": ("hexagon", "a hexagon"),
        "diamond": ("diamond", "a diamond", "rhombus", "a rhombus"),
    }
    position_answers = {
        "top_left": ("top left", "upper left", "top-left", "left top", "top left corner"),
        "top": ("top", "top center", "top centre", "top middle", "upper middle", "upper center"),
        "top_right": ("top right", "upper right", "top-right", "right top", "top right corner"),
        "left": ("left", "middle left", "center left", "left side", "centre left"),
        "center": ("center", "centre", "middle", "the center", "the middle"),
        "right": ("right", "middle right", "center right", "right side", "centre right"),
        "bottom_left": ("bottom left", "lower left", "bottom-left", "left bottom", "bottom left corner"),
        "bottom": ("bottom", "bottom center", "bottom centre", "bottom middle", "lower middle"),
        "bottom_right": ("bottom right", "lower right", "bottom-right", "right bottom", "bottom right corner"),
    }
    yes_answers = ("yes", "yes there is", "yeah", "true")
    no_answers = ("no", "no there is not", "no there isn't", "false")
    number_words = NUMBERS
    ordinal_words = {1: ("first", "image one"), 2: ("second", "image two"), 3: ("third",), 4: ("fourth",)}
    answer_prefixes = ("it is", "it's", "its", "the answer is", "in the", "at the", "on the", "the", "an", "a")

    def forms(self, mention: Mention, rng: random.Random | None = None, *, object_noun: bool = False) -> dict[str, str]:
        noun_key = mention.shape if mention.shape or not object_noun else "object"
        singular, plural = NOUNS[noun_key][0] if rng is None else rng.choice(NOUNS[noun_key])
        adjectives = []
        if mention.size is not None:
            adjectives.append(pick(SIZES[mention.size], rng))
        if mention.colour is not None:
            adjectives.append(pick(COLOURS[mention.colour], rng))
        core = " ".join([*adjectives, singular])
        core_plural = " ".join([*adjectives, plural])
        where = "" if mention.position is None else " " + pick(POSITIONS[mention.position][0], rng)
        article = "an" if core[0] in "aeiou" else "a"  # no word of this lexicon starts with a silent h or "u" sound
        return {
            "indef": f"{article} {core}{where}",
            "def": f"the {core}{where}",
            "bare": f"{core}{where}",
            "plural": f"{core_plural}{where}",
        }

    def position_forms(self, position: str, rng: random.Random | None = None) -> dict[str, str]:
        phrases, short = POSITIONS[position]
        return {"pos": pick(phrases, rng), "pos_short": short}

    def count_forms(self, n: int) -> dict[str, str]:
        return {"count": f"{NUMBERS[n][0]} shape" + ("" if n == 1 else "s")}
