"""French lexicon and templates.

Grammar notes: colour adjectives follow the noun and agree in gender and number ("un cercle vert", "une étoile
verte", "des étoiles vertes"; "orange" is invariable); size adjectives precede it ("une petite étoile"). The
definite article elides before a vowel or mute h ("l'étoile", "l'hexagone") and "de" likewise ("combien
d'étoiles").
"""

from __future__ import annotations

import random

from ..content import Mention
from .base import Frame, Language, pick

# (masc. sg, fem. sg, masc. pl, fem. pl) per colour variant
COLOURS = {
    "red": (("rouge", "rouge", "rouges", "rouges"),),
    "orange": (("orange", "orange", "orange", "orange"),),
    "yellow": (("jaune", "jaune", "jaunes", "jaunes"),),
    "green": (("vert", "verte", "verts", "vertes"),),
    "blue": (("bleu", "bleue", "bleus", "bleues"),),
    "purple": (("violet", "violette", "violets", "violettes"),),
    "pink": (("rose", "rose", "roses", "roses"),),
    "black": (("noir", "noire", "noirs", "noires"),),
}
NOUNS = {  # (singular, plural, gender) variants
    "circle": (("cercle", "cercles", "m"), ("rond", "ronds", "m")),
    "square": (("carré", "carrés", "m"),),
    "triangle": (("triangle", "triangles", "m"),),
    "star": (("étoile", "étoiles", "f"),),
    "cross": (("croix", "croix", "f"),),
    "hexagon": (("hexagone", "hexagones", "m"),),
    "diamond": (("losange", "losanges", "m"),),
    None: (("forme", "formes", "f"), ("figure", "figures", "f"), ("objet", "objets", "m")),
    "object": (("objet", "objets", "m"), ("figure", "figures", "f")),
}
SIZES = {"small": (("petit", "petite", "petits", "petites"),), "large": (("grand", "grande", "grands", "grandes"),)}
POSITIONS = {  # (adverbial phrases, short canonical name)
    "top_left": (("en haut à gauche",), "en haut à gauche"),
    "top": (("en haut", "en haut au centre"), "en haut"),
    "top_right": (("en haut à droite",), "en haut à droite"),
    "left": (("à gauche", "sur la gauche"), "à gauche"),
    "center": (("au centre", "au milieu"), "au centre"),
    "right": (("à droite", "sur la droite"), "à droite"),
    "bottom_left": (("en bas à gauche",), "en bas à gauche"),
    "bottom": (("en bas", "en bas au centre"), "en bas"),
    "bottom_right": (("en bas à droite",), "en bas à droite"),
}
NUMBERS = {1: "une", 2: "deux", 3: "trois", 4: "quatre"}
_VOWEL_START = tuple("aeiouyéèêh")  # every h-word here (hexagone) has a mute h


def _elide(word: str, following: str) -> str:
    """ "le"/"la"/"de" + following word, with elision where French requires it."""
    if following.startswith(_VOWEL_START):
        return word[0] + "'" + following
    return f"{word} {following}"


class French(Language):
    code = "fr"
    name = "Français"

    list_frames = (
        Frame("Il y a {list}.", "Il y a {list}."),
        Frame("Une image avec {list}.", "Une image avec {list}."),
        Frame("L'image montre {list}.", "L'image montre {list}."),
        Frame("On voit {list}.", "On voit {list}."),
        Frame("Une image contenant {count} : {list}.", "Une image contenant {count} : {list}."),
    )
    items = {"default": ("{indef} {pos}", "{indef} ({pos_short})")}
    sentences = ("{pos}, il y a {indef}.", "{indef} se trouve {pos}.", "Il y a {indef} {pos}.")
    sentence_intros = (Frame("", ""), Frame("L'image contient {count}.", "L'image contient {count}."))
    list_and = " et "
    query_templates = ("{indef}", "{bare}", "une image avec {indef}", "une photo {de_indef}")
    classification_templates = (
        "une photo {de_indef}.",
        "une image {de_indef}.",
        "un dessin {de_indef}.",
        "{indef} sur un fond uni.",
    )
    questions = {
        "colour": ("De quelle couleur est {def} ?", "Quelle est la couleur {de_def} ?"),
        "shape": ("Quelle forme a {def} ?", "Quelle est la forme {de_def} ?"),
        "count": ("Combien {de_plural} y a-t-il ?", "Combien {de_plural} voit-on sur l'image ?"),
        "position": ("Où se trouve {def} ?", "Où est {def} ?"),
        "existence": (
            "Y a-t-il {indef} ?",
            "Est-ce qu'il y a {indef} dans l'image ?",
            "L'image contient-elle {indef} ?",
        ),
        "grounding": (
            "Donne la boîte englobante de la région décrite par : <ref>{bare}</ref>",
            "Localise dans l'image : <ref>{bare}</ref>. Donne sa boîte englobante.",
        ),
        "multi_image": ("Quelle image montre {indef} ?", "Dans quelle image y a-t-il {indef} ?"),
    }

    colour_answers = {c: (v[0][0], *v[0][1:]) for c, v in COLOURS.items()}
    shape_answers = {
        "circle": ("cercle", "un cercle", "rond", "un rond"),
        "square": ("carré", "un carré"),
        "triangle": ("triangle", "un triangle"),
        "star": ("étoile", "une étoile"),
        "cross": ("croix", "une croix", "plus", "signe plus"),
        "hexagon": ("hexagone", "un hexagone"),
        "diamond": ("losange", "un losange", "rhombus"),
    }
    position_answers = {
        "top_left": ("en haut à gauche", "haut gauche", "en haut a gauche", "coin supérieur gauche"),
        "top": ("en haut", "haut", "en haut au centre", "en haut au milieu"),
        "top_right": ("en haut à droite", "haut droite", "coin supérieur droit"),
        "left": ("à gauche", "gauche", "sur la gauche", "au centre à gauche"),
        "center": ("au centre", "centre", "au milieu", "milieu"),
        "right": ("à droite", "droite", "sur la droite", "au centre à droite"),
        "bottom_left": ("en bas à gauche", "bas gauche", "coin inférieur gauche"),
        "bottom": ("en bas", "bas", "en bas au centre", "en bas au milieu"),
        "bottom_right": ("en bas à droite", "bas droite", "coin inférieur droit"),
    }
    yes_answers = ("oui", "oui il y en a", "oui il y a")
    no_answers = ("non", "non il n'y en a pas")
    number_words = {0: ("zéro", "aucun", "aucune"), 1: ("un", "une"), 2: ("deux",), 3: ("trois",), 4: ("quatre",)}
    ordinal_words = {
        1: ("première", "premier"),
        2: ("deuxième", "seconde", "second"),
        3: ("troisième",),
        4: ("quatrième",),
    }
    answer_prefixes = ("c'est", "il est", "elle est", "la réponse est", "le", "la", "l'", "un", "une")

    def forms(self, mention: Mention, rng: random.Random | None = None, *, object_noun: bool = False) -> dict[str, str]:
        noun_key = mention.shape if mention.shape or not object_noun else "object"
        singular, plural, gender = NOUNS[noun_key][0] if rng is None else rng.choice(NOUNS[noun_key])
        g = 0 if gender == "m" else 1
        size = None if mention.size is None else SIZES[mention.size][0]
        colour = (
            None
            if mention.colour is None
            else (COLOURS[mention.colour][0] if rng is None else rng.choice(COLOURS[mention.colour]))
        )
        where = "" if mention.position is None else " " + pick(POSITIONS[mention.position][0], rng)
        sg_words = ([size[g]] if size else []) + [singular] + ([colour[g]] if colour else [])
        pl_words = ([size[g + 2]] if size else []) + [plural] + ([colour[g + 2]] if colour else [])
        core, core_pl = " ".join(sg_words) + where, " ".join(pl_words) + where
        indef = ("un " if gender == "m" else "une ") + core
        definite = _elide("le" if gender == "m" else "la", core)
        return {
            "indef": indef,
            "def": definite,
            "bare": core,
            "plural": core_pl,
            "de_plural": _elide("de", core_pl),
            "de_indef": "d'" + indef,  # "une photo d'une étoile"
            # "de" + "le" contracts to "du"; "de la" and "de l'" stay as they are.
            "de_def": "du " + core if definite.startswith("le ") else "de " + definite,
        }

    def position_forms(self, position: str, rng: random.Random | None = None) -> dict[str, str]:
        phrases, short = POSITIONS[position]
        return {"pos": pick(phrases, rng), "pos_short": short}

    def count_forms(self, n: int) -> dict[str, str]:
        return {"count": f"{NUMBERS[n]} forme" + ("" if n == 1 else "s")}
