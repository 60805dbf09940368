"""Registry of the shapes-world languages (one module per language; add a module and a line here)."""

from __future__ import annotations

from .base import Frame, Language, capitalise
from .de import German
from .en import English
from .es import Spanish
from .fr import French
from .ja import Japanese
from .zh import Chinese

_LANGUAGES: dict[str, Language] = {
    lang.code: lang for lang in (English(), Chinese(), Japanese(), German(), French(), Spanish())
}


def get_language(code: str) -> Language:
    """The language object for an ISO 639-1 code ("en", "zh", "ja", "de", "fr", "es")."""
    try:
        return _LANGUAGES[code]
    except KeyError:
        raise ValueError(f"Unknown language {code!r}. Available: {sorted(_LANGUAGES)}") from None


def list_languages() -> list[str]:
    return list(_LANGUAGES)


__all__ = ["Frame", "Language", "capitalise", "get_language", "list_languages"]
