"""Served ComfyUI_IPAdapter_plus node IDs: Regional Conditioning, Combine Params, From Params, Save / Load Embeds, the FaceID and community unified loaders.
Each class reads the old inputs (its definition in schema_params.py) and hands them to this pack's nodes and core."""
from __future__ import annotations
