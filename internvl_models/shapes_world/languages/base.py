"""What every language of the shapes world provides, and the template machinery they share.

A language turns a `Mention` (colour / shape / position / size, each optional) into a dict of noun-phrase
*forms* — indefinite, definite, bare, plural, and whatever cases its grammar needs — and fills templates whose
slots name those forms ("Where is {def}?"). Agreement (gender, case, number, articles, measure words) therefore
lives in one `forms` method per language; templates only pick a form. Answer tables give the canonical short
answer first, then accepted synonyms, for normalised exact-match scoring.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from ..content import Mention


@dataclass(frozen=True)
class Frame:
    """A caption sentence around a list of objects: `one`/`many` by object count, `items` names the item group
    (a grammatical case, say) whose templates realise each list element."""

    one: str
    many: str
    items: str = "default"


def capitalise(text: str) -> str:
    """Upper-case the first letter, skipping leading punctuation such as Spanish "¿" and markup such as
    "<ref>" (whose spelling the chat tokenizer relies on)."""
    in_tag = False
    for i, ch in enumerate(text):
        if ch == "<":
            in_tag = True
        elif ch == ">":
            in_tag = False
        elif ch.isalpha() and not in_tag:
            return text[:i] + ch.upper() + text[i + 1 :]
    return text


def pick(options: Sequence[str], rng: random.Random | None) -> str:
    """First option (canonical) without an rng, else a seeded choice."""
    return options[0] if rng is None else rng.choice(options)


class Language(ABC):
    """Lexicon, templates and answer tables for one language. Subclasses fill in the class variables."""

    code: ClassVar[str]
    name: ClassVar[str]

    # --- text generation --------------------------------------------------------------------------------------
    list_frames: ClassVar[tuple[Frame, ...]]
    items: ClassVar[dict[str, tuple[str, ...]]]  # item templates per group; slots: item_forms()
    sentences: ClassVar[tuple[str, ...]]  # one sentence per object; slots: item_forms()
    sentence_intros: ClassVar[tuple[Frame, ...]]  # optional count sentence before the per-object sentences
    sentence_separator: ClassVar[str] = " "
    query_templates: ClassVar[tuple[str, ...]]  # short search / classification style captions
    classification_templates: ClassVar[tuple[str, ...]]  # zero-shot prompt ensemble ("a photo of {indef}.")
    questions: ClassVar[dict[str, tuple[str, ...]]]  # question kind -> templates; slots: forms()
    list_separator: ClassVar[str] = ", "
    list_and: ClassVar[str] = " and "

    # --- answers: canonical form first, then accepted synonyms ------------------------------------------------
    colour_answers: ClassVar[dict[str, tuple[str, ...]]]
    shape_answers: ClassVar[dict[str, tuple[str, ...]]]
    position_answers: ClassVar[dict[str, tuple[str, ...]]]
    yes_answers: ClassVar[tuple[str, ...]]
    no_answers: ClassVar[tuple[str, ...]]
    number_words: ClassVar[dict[int, tuple[str, ...]]]  # digits are always accepted as well
    ordinal_words: ClassVar[dict[int, tuple[str, ...]]]  # "second" -> 2, for multi-image answers
    answer_prefixes: ClassVar[tuple[str, ...]] = ()  # fillers stripped before lookup ("it is", "the")
    answer_suffixes: ClassVar[tuple[str, ...]] = ()  # e.g. Japanese "です", Chinese "的"

    @abstractmethod
    def forms(self, mention: Mention, rng: random.Random | None = None, *, object_noun: bool = False) -> dict[str, str]:
        """Every noun-phrase form of `mention` (position included as a modifier when set). With an rng, lexical
        synonyms are drawn from it; without, the canonical words are used. An unsaid shape becomes a generic
        noun ("shape", "object"); `object_noun` restricts it to object-like nouns, for "what shape is …?"."""

    @abstractmethod
    def position_forms(self, position: str, rng: random.Random | None = None) -> dict[str, str]:
        """Slots for a coarse position in captions: at least "pos" (adverbial) and "pos_short"."""

    @abstractmethod
    def count_forms(self, n: int) -> dict[str, str]:
        """Slots naming "n shapes" in the language (e.g. "count"), used by caption frames."""

    # --- shared machinery -------------------------------------------------------------------------------------
    def join(self, parts: Sequence[str]) -> str:
        if len(parts) == 1:
            return parts[0]
        return self.list_separator.join(parts[:-1]) + self.list_and + parts[-1]

    def item_forms(self, mention: Mention, rng: random.Random | None) -> dict[str, str]:
        """Forms of an object *without* its position, plus the position slots, for caption items."""
        slots = self.forms(replace(mention, position=None), rng)
        if mention.position is not None:
            slots.update(self.position_forms(mention.position, rng))
        return slots

    def caption(self, mentions: Sequence[Mention], rng: random.Random) -> str:
        """A caption describing all `mentions` (each with a position), in a randomly chosen style."""
        if rng.random() < 0.55:
            frame = rng.choice(self.list_frames)
            template = rng.choice(self.items[frame.items])
            parts = [template.format_map(self.item_forms(m, rng)) for m in mentions]
            sentence = frame.one if len(mentions) == 1 else frame.many
            return capitalise(sentence.format_map({"list": self.join(parts), **self.count_forms(len(mentions))}))
        sentences = [capitalise(rng.choice(self.sentences).format_map(self.item_forms(m, rng))) for m in mentions]
        intro = rng.choice(self.sentence_intros)
        lead = (intro.one if len(mentions) == 1 else intro.many).format_map(self.count_forms(len(mentions)))
        return self.sentence_separator.join(([capitalise(lead)] if lead else []) + sentences)

    def query(self, mention: Mention, rng: random.Random) -> str:
        """A short search-style caption ("a red star") for one mention."""
        return capitalise_if_sentence(rng.choice(self.query_templates).format_map(self.forms(mention, rng)))

    def classification_prompts(self, mention: Mention) -> list[str]:
        """The zero-shot prompt ensemble for one class, in canonical wording."""
        forms = self.forms(mention)
        return [t.format_map(forms) for t in self.classification_templates]

    def question(self, kind: str, mention: Mention, rng: random.Random) -> str:
        return self.question_with_forms(kind, mention, rng)[0]

    def question_with_forms(self, kind: str, mention: Mention, rng: random.Random) -> tuple[str, dict[str, str]]:
        """The question and the forms it was filled with (a grounding answer repeats the same <ref> phrase)."""
        if kind not in self.questions:
            raise ValueError(f"Unknown question kind {kind!r}. Available: {sorted(self.questions)}")
        forms = self.forms(mention, rng, object_noun=kind == "shape")
        return capitalise(rng.choice(self.questions[kind]).format_map(forms)), forms

    def answer(self, kind: str, value: object) -> str:
        """Canonical short answer for a question kind and its structured value."""
        if kind == "colour":
            return self.colour_answers[str(value)][0]
        if kind == "shape":
            return self.shape_answers[str(value)][0]
        if kind == "position":
            return self.position_answers[str(value)][0]
        if kind == "existence":
            return (self.yes_answers if value else self.no_answers)[0]
        if kind == "count":
            return str(value)
        if kind == "multi_image":
            return f"Image-{value}"
        raise ValueError(f"no canonical answer for kind {kind!r}")


def capitalise_if_sentence(text: str) -> str:
    """Queries are lower-case phrases ("a red star") unless the template makes a sentence (ends with a stop)."""
    return capitalise(text) if text.rstrip().endswith((".", "。")) else text
