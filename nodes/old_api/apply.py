"""Served ComfyUI_IPAdapter_plus node IDs: Tiled (+ Batch), Style & Composition (+ Batch), Precise Style Transfer / Composition (+ Batch), Mad Scientist.
Each class reads the old inputs (its definition in schema_apply.py) and hands them to this pack's nodes and core."""
from __future__ import annotations
