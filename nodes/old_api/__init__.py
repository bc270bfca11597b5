"""The ComfyUI_IPAdapter_plus node IDs, served by this pack when that pack is not installed (schema.py and its
schema_*.py parts: the old definitions as data; base.py: what the wrappers share; wrappers.py, apply.py, params.py,
weights.py: one thin class per ID over this pack's nodes; register.py: whether to serve, and the served classes)."""
from .register import old_api_mappings, served_classes

__all__ = ["old_api_mappings", "served_classes"]
