"""The table of ComfyUI_IPAdapter_plus node definitions the tests keep (typed in from the old pack's source, never
generated from this pack's code): tests/host/old_pack_api.json, then its parts old_pack_api_<group>.json (one per
group of nodes), merged in that order. "_about" / "_served" entries are notes, merged too."""
from __future__ import annotations

import glob
import json
import os

HOST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "host")


def load_table() -> dict:
    table: dict = {}
    files = [os.path.join(HOST, "old_pack_api.json")] + sorted(glob.glob(os.path.join(HOST, "old_pack_api_*.json")))
    for path in files:
        with open(path, encoding="utf-8") as f:
            part = json.load(f)
        for key, value in part.items():
            if key == "_served":
                table.setdefault(key, {}).update(value)
            elif key == "_about":
                table.setdefault(key, value)
            elif key in table:
                raise ValueError(f"{os.path.basename(path)}: {key} is already in the table")
            else:
                table[key] = value
    return table


def served_ids(table: dict) -> list[str]:
    return [k for k in table if not k.startswith("_")]
