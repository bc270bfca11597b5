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
