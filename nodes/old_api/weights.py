"""Served ComfyUI_IPAdapter_plus node IDs: the weight-strategy nodes (IPAdapter Weights, Weights From Strategy, Combine Weights, Prompt Schedule From Weights Strategy).
Each class reads the old inputs (its definition in schema_weights.py) and hands them to this pack's nodes and core."""
from __future__ import annotations
