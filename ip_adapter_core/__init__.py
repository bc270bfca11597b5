"""Pure-torch IP-Adapter core: file reading, variant detection, projections, site tables and the attention term.

Nothing in this package imports ComfyUI; the host layer (``nodes/``) passes in what it needs.
"""
from .errors import (
    CorruptFileError,
    IncompatibleError,
    InputError,
    IPAdapterError,
    NotAnIPAdapterError,
    UnsupportedAdapterError,
)
from .spec import AdapterSpec, detect_spec

__all__ = [
    "AdapterSpec",
    "CorruptFileError",
    "IPAdapterError",
    "IncompatibleError",
    "InputError",
    "NotAnIPAdapterError",
    "UnsupportedAdapterError",
    "detect_spec",
]
