"""German lexicon and templates.

Grammar notes: adjectives decline by article type, case and gender ("ein roter Kreis", "einen roten Kreis",
"eine rote Raute", "ein rotes Quadrat", "der rote Kreis", plural "rote Kreise"). Colours such as "rosa" and
"lila" do not decline ("ein rosa Kreis"). Templates pick the case through the slot name: {indef} nominative,
{indef_acc} accusative (after "zeigt", "es gibt"), {indef_dat} dative (after "von", "mit").
"""

from __future__ import annotations

import random

from ..content import Mention
from .base import Frame, Language, pick

# (stem, declines) variants per colour
COLOURS = {
    "red": (("rot", True),),
    "orange": (("orangefarben", True),),  # undeclined "orange" reads as an error to many
    "yellow": (("gelb", True),),
    "green": (("grün", True),),
    "blue": (("blau", True),),
    "purple": (("lila", False), ("violett", True)),
    "pink": (("rosa", False), ("pinkfarben", True)),
    "black": (("schwarz", True),),
}
NOUNS = {  # (singular, plural, gender) variants
    "circle": (("Kreis", "Kreise", "m"),),
    "square": (("Quadrat", "Quadrate", "n"),),
    "triangle": (("Dreieck", "Dreiecke", "n"),),
    "star": (("Stern", "Sterne", "m"),),
    "cross": (("Kreuz", "Kreuze", "n"),),
    "hexagon": (("Sechseck", "Sechsecke", "n"),),
    "diamond": (("Raute", "Rauten", "f"),),
    None: (("Form", "Formen", "f"), ("Figur", "Figuren", "f"), ("Objekt", "Objekte", "n")),
    "object": (("Objekt", "Objekte", "n"), ("Figur", "Figuren", "f")),  # "Welche Form hat die Form" is clumsy
}
SIZES = {"small": ("klein",), "large": ("groß",)}
# Articles and adjective endings by (article type, case) and gender.
ARTICLES = {
    ("indef", "nom"): {"m": "ein", "f": "eine", "n": "ein"},
    ("indef", "acc"): {"m": "einen", "f": "eine", "n": "ein"},
    ("indef", "dat"): {"m": "einem", "f": "einer", "n": "einem"},
    ("def", "nom"): {"m": "der", "f": "die", "n": "das"},
    ("def", "acc"): {"m": "den", "f": "die", "n": "das"},
    ("def", "dat"): {"m": "dem", "f": "der", "n": "dem"},
    ("none", "nom"): {"m": "", "f": "", "n": ""},
}
ENDINGS = {
    ("indef", "nom"): {"m": "er", "f": "e", "n": "es"},
    ("indef", "acc"): {"m": "en", "f": "e", "n": "es"},
    ("indef", "dat"): {"m": "en", "f": "en", "n": "en"},
    ("def", "nom"): {"m": "e", "f": "e", "n": "e"},
    ("def", "acc"): {"m": "en", "f": "e", "n": "e"},
    ("def", "dat"): {"m": "en", "f": "en", "n": "en"},
    ("none", "nom"): {"m": "er", "f": "e", "n": "es"},  # strong declension, no article
}
POSITIONS = {  # (adverbial phrases, short canonical name)
    "top_left": (("oben links", "links oben"), "oben links"),
    "top": (("oben", "oben in der Mitte"), "oben"),
    "top_right": (("oben rechts", "rechts oben"), "oben rechts"),
    "left": (("links", "auf der linken Seite"), "links"),
    "center": (("in der Mitte", "im Zentrum"), "Mitte"),
    "right": (("rechts", "auf der rechten Seite"), "rechts"),
    "bottom_left": (("unten links", "links unten"), "unten links"),
    "bottom": (("unten", "unten in der Mitte"), "unten"),
    "bottom_right": (("unten rechts", "rechts unten"), "unten rechts"),
}
NUMBERS = {1: "eine", 2: "zwei", 3: "drei", 4: "vier"}


def _adjective(stem: str, declines: bool, ending: str) -> str:
    return stem + ending if declines else stem


class German(Language):
    code = "de"
    name = "Deutsch"

    list_frames = (
        Frame("Auf dem Bild ist {list}.", "Auf dem Bild sind {list}.", "nom"),
        Frame("Zu sehen ist {list}.", "Zu sehen sind {list}.", "nom"),
        Frame("Das Bild zeigt {list}.", "Das Bild zeigt {list}.", "acc"),
        Frame("Es gibt {list}.", "Es gibt {list}.", "acc"),
        Frame("Ein Bild mit {count_dat}: {list}.", "Ein Bild mit {count_dat}: {list}.", "nom"),
    )
    items = {
        "nom": ("{indef} {pos}", "{indef} ({pos_short})"),
        "acc": ("{indef_acc} {pos}", "{indef_acc} ({pos_short})"),
    }
    sentences = (
        "{pos} ist {indef}.",
        "{pos} befindet sich {indef}.",
        "{pos} sieht man {indef_acc}.",
        "{indef} ist {pos}.",
    )
    sentence_intros = (Frame("", ""), Frame("Das Bild enthält {count}.", "Das Bild enthält {count}."))
    list_and = " und "
    query_templates = ("{indef}", "{bare}", "ein Bild mit {indef_dat}", "ein Foto von {indef_dat}")
    classification_templates = (
        "ein Foto von {indef_dat}.",
        "ein Bild mit {indef_dat}.",
        "eine Zeichnung von {indef_dat}.",
        "{indef} auf einfarbigem Hintergrund.",
    )
    questions = {
        "colour": ("Welche Farbe hat {def}?", "Welche Farbe hat {def} auf dem Bild?"),
        "shape": ("Welche Form hat {def}?", "Was für eine Form hat {def}?"),
        "count": ("Wie viele {plural} gibt es?", "Wie viele {plural} sind auf dem Bild?"),
        "position": ("Wo ist {def}?", "Wo befindet sich {def}?"),
        "existence": ("Gibt es {indef_acc}?", "Ist auf dem Bild {indef}?", "Enthält das Bild {indef_acc}?"),
        "grounding": (
            "Gib den Begrenzungsrahmen der Region an, die dieser Ausdruck beschreibt: <ref>{bare}</ref>",
            "Finde im Bild: <ref>{bare}</ref>. Nenne die Koordinaten des Rahmens.",
        ),
        "multi_image": ("Welches Bild zeigt {indef_acc}?", "Auf welchem Bild ist {indef}?"),
    }

    colour_answers = {
        "red": ("rot",),
        "orange": ("orange", "orangefarben"),
        "yellow": ("gelb",),
        "green": ("grün",),
        "blue": ("blau",),
        "purple": ("lila", "violett"),
        "pink": ("rosa", "pink", "pinkfarben"),
        "black": ("schwarz",),
    }
    shape_answers = {
        "circle": ("Kreis", "rund", "ein Kreis", "kreisförmig"),
        "square": ("Quadrat", "ein Quadrat", "Viereck"),
        "triangle": ("Dreieck", "ein Dreieck"),
        "star": ("Stern", "ein Stern", "sternförmig"),
        "cross": ("Kreuz", "ein Kreuz", "Plus", "Pluszeichen"),
        "hexagon": ("Sechseck", "ein Sechseck", "Hexagon"),
        "diamond": ("Raute", "eine Raute", "Rhombus"),
    }
    position_answers = {p: (short, *phrases, f"{short} im Bild") for p, (phrases, short) in POSITIONS.items()}
    position_answers["center"] = ("Mitte", "in der Mitte", "im Zentrum", "Zentrum", "mittig")
    yes_answers = ("ja", "ja gibt es", "jawohl")
    no_answers = ("nein", "nein gibt es nicht")
    number_words = {
        0: ("null", "keine", "keins"),
        1: ("eins", "ein", "eine", "einer"),
        2: ("zwei",),
        3: ("drei",),
        4: ("vier",),
    }
    ordinal_words = {
        1: ("erste", "ersten"),
        2: ("zweite", "zweiten"),
        3: ("dritte", "dritten"),
        4: ("vierte", "vierten"),
    }
    answer_prefixes = ("es ist", "sie ist", "er ist", "die antwort ist", "der", "die", "das", "ein", "eine")

    def _phrase(self, noun: tuple[str, str, str], adjectives: list[tuple[str, bool]], article: str, case: str) -> str:
        singular, _plural, gender = noun
        ending = ENDINGS[(article, case)][gender]
        words = [ARTICLES[(article, case)][gender]] + [_adjective(s, d, ending) for s, d in adjectives] + [singular]
        return " ".join(w for w in words if w)

    def forms(self, mention: Mention, rng: random.Random | None = None, *, object_noun: bool = False) -> dict[str, str]:
        noun_key = mention.shape if mention.shape or not object_noun else "object"
        noun = NOUNS[noun_key][0] if rng is None else rng.choice(NOUNS[noun_key])
        adjectives: list[tuple[str, bool]] = []
        if mention.size is not None:
            adjectives.append((pick(SIZES[mention.size], rng), True))
        if mention.colour is not None:
            adjectives.append(COLOURS[mention.colour][0] if rng is None else rng.choice(COLOURS[mention.colour]))
        where = "" if mention.position is None else " " + pick(POSITIONS[mention.position][0], rng)
        slots = {
            name: self._phrase(noun, adjectives, article, case) + where
            for name, (article, case) in {
                "indef": ("indef", "nom"),
                "indef_acc": ("indef", "acc"),
                "indef_dat": ("indef", "dat"),
                "def": ("def", "nom"),
                "def_acc": ("def", "acc"),
                "def_dat": ("def", "dat"),
                "bare": ("none", "nom"),
            }.items()
        }
        # Plural without article (after "wie viele"): strong ending -e for every gender.
        slots["plural"] = " ".join([*(_adjective(s, d, "e") for s, d in adjectives), noun[1]]) + where
        return slots

    def position_forms(self, position: str, rng: random.Random | None = None) -> dict[str, str]:
        phrases, short = POSITIONS[position]
        return {"pos": pick(phrases, rng), "pos_short": short}

    def count_forms(self, n: int) -> dict[str, str]:
        noun = "Form" if n == 1 else "Formen"
        return {"count": f"{NUMBERS[n]} {noun}", "count_dat": f"{'einer' if n == 1 else NUMBERS[n]} {noun}"}
