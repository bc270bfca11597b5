"""Typed errors. Every one is a ValueError whose message says what was found, what was expected and how to fix it."""


class IPAdapterError(ValueError):
    """Base class of every error this package raises on bad input."""


class NotAnIPAdapterError(IPAdapterError):
    """The file is readable but holds something else (a LoRA, a UNet, a CLIP vision model, ...)."""


class CorruptFileError(IPAdapterError):
    """The file is truncated, malformed or refuses safe loading."""


class UnsupportedAdapterError(IPAdapterError):
    """A known IP-Adapter family that this package does not implement yet (FaceID, Flux, SD3.5, ...)."""


class IncompatibleError(IPAdapterError):
    """Adapter, base model, CLIP vision encoder or embeds do not belong together."""


class InputError(IPAdapterError):
    """A node input is out of its domain (empty image batch, start_at > end_at, ...)."""


def check_choice(value, choices, *, input_name: str | None = None, what: str = "value", where: str | None = None):
    """InputError unless ``value`` is one of ``choices``: "[where: ][input 'name': ]unknown <what> 'x'; expected one
    of 'a', 'b'." (one wording for every combo-like input). Returns ``value``."""
    if value not in choices:
        prefix = "".join([f"{where}: " if where else "", f"input '{input_name}': " if input_name else ""])
        raise InputError(f"{prefix}unknown {what} {value!r}; expected one of {', '.join(repr(c) for c in choices)}.")
    return value
