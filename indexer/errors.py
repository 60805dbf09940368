"""Errors raised by the engine on purpose.

`app/errors.py` maps each class to one HTTP status, so the class says *what kind* of failure it is and the message
says what to do about it (valid options, the command to run). Nothing here knows about HTTP.
"""


class IndexerError(Exception):
    """Base class of every error the engine raises on purpose."""


class NotFound(IndexerError):
    """A collection, image or job that does not exist."""


class Conflict(IndexerError):
    """The request clashes with existing state: a duplicate name, a model-fingerprint mismatch, a bad state change."""


class SpaceChanged(Conflict):
    """The collection switched encoders between encoding a query and searching with it; encode it again."""


class InvalidInput(IndexerError):
    """Input the engine refuses: an unknown option, a malformed filter, vectors of the wrong shape."""


class Busy(IndexerError):
    """The engine cannot take the request now; the caller should retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = float(retry_after_s)


class SchemaNotCurrent(IndexerError):
    """The database schema revision differs from the one this code was written for."""

    def __init__(self, message: str, current: tuple[str, ...], expected: tuple[str, ...]) -> None:
        super().__init__(message)
        self.current = current
        self.expected = expected


class CorruptData(IndexerError):
    """A file on disk (embedding shard, saved index) is truncated or does not match its checksum."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class ChatUnavailable(IndexerError):
    """No chat model can answer: none configured, its weights cannot be loaded, or the chat server is unreachable."""


class UpstreamError(IndexerError):
    """The remote chat server answered with an error or with something that is not an OpenAI-style response."""


class UpstreamTimeout(UpstreamError):
    """The remote chat server did not answer within the configured time."""


class StorageFull(IndexerError):
    """The disk holding the data directory or the catalog is full (or over quota). Nothing the request would have
    added was acknowledged; free space and retry."""


# Text of the storage-full errors that reach us wrapped by a database driver rather than as an OSError.
_FULL_MESSAGES = ("database or disk is full", "no space left on device", "disk quota exceeded", "could not extend file")


def storage_full_reason(exc: BaseException) -> str | None:
    """A one-line reason when `exc` (or an exception it wraps) means the disk is full; None otherwise."""
    import errno

    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the storage device ({current.strerror})"
        text = str(current).lower()
        for message in _FULL_MESSAGES:
            if message in text:
                return f"no space left on the storage device ({message})"
        # SQLAlchemy keeps the driver's exception in `orig`; Python chains keep the rest.
        orig = getattr(current, "orig", None)
        pending += [orig if isinstance(orig, BaseException) else None, current.__cause__, current.__context__]
    return None
