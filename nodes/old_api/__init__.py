"""The ComfyUI_IPAdapter_plus node IDs, served by this pack when that pack is not installed (schema.py: the old
definitions as data; wrappers.py: one thin class per ID over this pack's nodes; register.py: whether to serve)."""
from .register import old_api_mappings

__all__ = ["old_api_mappings"]
