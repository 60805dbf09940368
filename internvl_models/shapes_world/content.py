"""Structured meaning of captions and queries, and the check of that meaning against a scene.

Every generated caption carries a `CaptionContent` next to its text, so retrieval tests can decide whether an
image is a correct hit for a query without parsing any language: `scene_satisfies(scene, content)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scene import Scene, SceneObject


@dataclass(frozen=True)
class Mention:
    """What a phrase says about one object; None means "not said" (any value matches)."""

    colour: str | None = None
    shape: str | None = None
    position: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return all(
            want is None or want == have
            for want, have in (
                (self.colour, obj.colour),
                (self.shape, obj.shape),
                (self.position, obj.position),
                (self.size, obj.size),
            )
        )

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class CaptionContent:
    """The objects a caption describes. `complete` means it describes every object of the scene (so the object
    count must match too); a query-style caption ("a red star") is not complete."""

    mentions: tuple[Mention, ...]
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        return {"mentions": [m.to_dict() for m in self.mentions], "complete": self.complete}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionContent:
        return cls(tuple(Mention(**m) for m in data["mentions"]), bool(data["complete"]))


def mention_from_object(obj: SceneObject, *, position: bool = True, size: bool = False) -> Mention:
    return Mention(obj.colour, obj.shape, obj.position if position else None, obj.size if size else None)


def _assign(mentions: Sequence[Mention], objects: Sequence[SceneObject], used: frozenset[int]) -> bool:
    """Backtracking search for a one-to-one assignment of mentions to objects (scenes hold at most 4)."""
    if not mentions:
        return True
    first, rest = mentions[0], mentions[1:]
    return any(
        i not in used and first.matches(obj) and _assign(rest, objects, used | {i}) for i, obj in enumerate(objects)
    )


def scene_satisfies(scene: Scene, content: CaptionContent) -> bool:
    """True when every described object is present (distinct objects for distinct mentions) and, for a complete
    description, the scene holds no other object."""
    if content.complete and len(content.mentions) != len(scene.objects):
        return False
    return _assign(content.mentions, scene.objects, frozenset())


def caption_matches(scene: Scene, query: Any) -> bool:
    """`scene_satisfies` for a Caption, a CaptionContent, a Mention or a list of Mentions (a parsed query)."""
    if isinstance(query, Mention):
        query = CaptionContent((query,), complete=False)
    elif isinstance(query, (list, tuple)):
        query = CaptionContent(tuple(query), complete=False)
    content = getattr(query, "content", query)
    if not isinstance(content, CaptionContent):
        raise TypeError(f"cannot match a {type(query).__name__}; pass a Caption, CaptionContent or Mention(s)")
    return scene_satisfies(scene, content)
