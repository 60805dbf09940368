"""Spanish lexicon and templates.

Grammar notes: colour and size adjectives follow the noun and agree in gender and number ("un círculo rojo",
"una estrella roja", "dos cruces rojas"); "naranja" and "rosa" are used invariably; the question word agrees
with the noun counted ("¿cuántos círculos…?", "¿cuántas estrellas…?").
"""

from __future__ import annotations

import random

from ..content import Mention
from .base import Frame, Language, pick

# (masc. sg, fem. sg, masc. pl, fem. pl) per colour variant
COLOURS = {
    "red": (("rojo", "roja", "rojos", "rojas"),),
    "orange": (("naranja", "naranja", "naranja", "naranja"),),
    "yellow": (("amarillo", "amarilla", "amarillos", "amarillas"),),
    "green": (("verde", "verde", "verdes", "verdes"),),
    "blue": (("azul", "azul", "azules", "azules"),),
    "purple": (("morado", "morada", "morados", "moradas"), ("violeta", "violeta", "violeta", "violeta")),
    "pink": (("rosa", "rosa", "rosa", "rosa"),),
    "black": (("negro", "negra", "negros", "negras"),),
}
NOUNS = {  # (singular, plural, gender) variants
    "circle": (("círculo", "círculos", "m"),),
    "square": (("cuadrado", "cuadrados", "m"),),
    "triangle": (("triángulo", "triángulos", "m"),),
    "star": (("estrella", "estrellas", "f"),),
    "cross": (("cruz", "cruces", "f"),),
    "hexagon": (("hexágono", "hexágonos", "m"),),
    "diamond": (("rombo", "rombos", "m"),),
    None: (("figura", "figuras", "f"), ("forma", "formas", "f"), ("objeto", "objetos", "m")),
    "object": (("objeto", "objetos", "m"), ("figura", "figuras", "f")),  # "qué forma tiene la forma" is clumsy
}
SIZES = {
    "small": (("pequeño", "pequeña", "pequeños", "pequeñas"),),
    "large": (("grande", "grande", "grandes", "grandes"),),
}
POSITIONS = {  # (adverbial phrases, short canonical name)
    "top_left": (("arriba a la izquierda", "en la esquina superior izquierda"), "arriba a la izquierda"),
    "top": (("arriba", "en la parte superior"), "arriba"),
    "top_right": (("arriba a la derecha", "en la esquina superior derecha"), "arriba a la derecha"),
    "left": (("a la izquierda",), "a la izquierda"),
    "center": (("en el centro", "en el medio"), "en el centro"),
    "right": (("a la derecha",), "a la derecha"),
    "bottom_left": (("abajo a la izquierda", "en la esquina inferior izquierda"), "abajo a la izquierda"),
    "bottom": (("abajo", "en la parte inferior"), "abajo"),
    "bottom_right": (("abajo a la derecha", "en la esquina inferior derecha"), "abajo a la derecha"),
}
NUMBERS = {1: "una", 2: "dos", 3: "tres", 4: "cuatro"}


class Spanish(Language):
    code = "es"
    name = "Español"

    list_frames = (
        Frame("Hay {list}.", "Hay {list}."),
        Frame("Una imagen con {list}.", "Una imagen con {list}."),
        Frame("En la imagen se ve {list}.", "En la imagen se ven {list}."),
        Frame("La imagen muestra {list}.", "La imagen muestra {list}."),
        Frame("Una imagen con {count}: {list}.", "Una imagen con {count}: {list}."),
    )
    items = {"default": ("{indef} {pos}", "{indef} ({pos_short})")}
    sentences = ("{pos} hay {indef}.", "Hay {indef} {pos}.", "{indef} está {pos}.")
    sentence_intros = (Frame("", ""), Frame("La imagen contiene {count}.", "La imagen contiene {count}."))
    list_and = " y "  # never "e": no list element starts with an /i/ sound (they all start with un/una)
    query_templates = ("{indef}", "{bare}", "una imagen con {indef}", "una foto de {indef}")
    classification_templates = (
        "una foto de {indef}.",
        "una imagen de {indef}.",
        "un dibujo de {indef}.",
        "{indef} sobre un fondo liso.",
    )
    questions = {
        "colour": ("¿De qué color es {def}?", "¿Qué color tiene {def}?"),
        "shape": ("¿Qué forma tiene {def}?", "¿Cuál es la forma {de_def}?"),
        "count": ("¿{cuantos} {plural} hay?", "¿{cuantos} {plural} hay en la imagen?"),
        "position": ("¿Dónde está {def}?", "¿En qué parte de la imagen está {def}?"),
        "existence": ("¿Hay {indef}?", "¿Hay {indef} en la imagen?", "¿La imagen contiene {indef}?"),
        "grounding": (
            "Indica el cuadro delimitador de la región que describe esta frase: <ref>{bare}</ref>",
            "Localiza en la imagen: <ref>{bare}</ref>. Da su cuadro delimitador.",
        ),
        "multi_image": ("¿Qué imagen muestra {indef}?", "¿En qué imagen hay {indef}?"),
    }

    colour_answers = {c: (v[0][0], *v[0][1:], *(w for alt in v[1:] for w in alt)) for c, v in COLOURS.items()}
    shape_answers = {
        "circle": ("círculo", "un círculo", "redondo", "circular"),
        "square": ("cuadrado", "un cuadrado"),
        "triangle": ("triángulo", "un triángulo"),
        "star": ("estrella", "una estrella"),
        "cross": ("cruz", "una cruz", "signo más"),
        "hexagon": ("hexágono", "un hexágono"),
        "diamond": ("rombo", "un rombo", "diamante"),
    }
    position_answers = {
        p: (short, *phrases, short.removeprefix("a la ").removeprefix("en el "))
        for p, (phrases, short) in POSITIONS.items()
    }
    yes_answers = ("sí", "si", "sí hay")
    no_answers = ("no", "no hay")
    number_words = {
        0: ("cero", "ninguno", "ninguna"),
        1: ("uno", "una", "un"),
        2: ("dos",),
        3: ("tres",),
        4: ("cuatro",),
    }
    ordinal_words = {
        1: ("primera", "primero"),
        2: ("segunda", "segundo"),
        3: ("tercera", "tercero"),
        4: ("cuarta", "cuarto"),
    }
    answer_prefixes = ("es", "está", "la respuesta es", "el", "la", "un", "una")

    def forms(self, mention: Mention, rng: random.Random | None = None, *, object_noun: bool = False) -> dict[str, str]:
        noun_key = mention.shape if mention.shape or not object_noun else "object"
        singular, plural, gender = NOUNS[noun_key][0] if rng is None else rng.choice(NOUNS[noun_key])
        g = 0 if gender == "m" else 1
        adjectives = []
        if mention.colour is not None:
            adjectives.append(COLOURS[mention.colour][0] if rng is None else rng.choice(COLOURS[mention.colour]))
        if mention.size is not None:
            adjectives.append(SIZES[mention.size][0])
        where = "" if mention.position is None else " " + pick(POSITIONS[mention.position][0], rng)
        core = " ".join([singular, *(a[g] for a in adjectives)]) + where
        core_pl = " ".join([plural, *(a[g + 2] for a in adjectives)]) + where
        definite = ("el " if gender == "m" else "la ") + core
        return {
            "indef": ("un " if gender == "m" else "una ") + core,
            "def": definite,
            "bare": core,
            "plural": core_pl,
            "cuantos": "Cuántos" if gender == "m" else "Cuántas",
            "de_def": "del " + core if gender == "m" else "de " + definite,  # de + el contracts to del
        }

    def position_forms(self, position: str, rng: random.Random | None = None) -> dict[str, str]:
        phrases, short = POSITIONS[position]
        return {"pos": pick(phrases, rng), "pos_short": short}

    def count_forms(self, n: int) -> dict[str, str]:
        return {"count": f"{NUMBERS[n]} figura" + ("" if n == 1 else "s")}
