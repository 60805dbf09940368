"""Errors raised by the model library. Messages name the valid options so a caller can fix the input."""


class ModelError(Exception):
    """Base class of every error this library raises on purpose."""


class UnknownModelError(ModelError):
    """A registry name (encoder, chat model, preset) that does not exist."""


class CheckpointError(ModelError):
    """A checkpoint that cannot be found, parsed, or does not match the architecture it claims."""


class InputError(ModelError):
    """Input the model cannot take: an undecodable image, an empty text list, a wrong tensor shape."""
