"""Find the ComfyUI this pack runs in: COMFYUI_PATH, the ComfyUI whose custom_nodes/ holds this folder, or ~/ComfyUI."""
from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_comfyui(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "comfy"))


def find_comfyui() -> tuple[str | None, str]:
    """(path, how it was found) or (None, why none was found)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        if _is_comfyui(env):
            return os.path.abspath(env), "COMFYUI_PATH"
        return None, f"COMFYUI_PATH={env} is not a ComfyUI folder (no main.py + comfy/)"
    parent = os.path.dirname(REPO)
    if os.path.basename(parent) == "custom_nodes" and _is_comfyui(os.path.dirname(parent)):
        return os.path.dirname(parent), "the ComfyUI whose custom_nodes/ holds this pack"
    home = os.path.expanduser("~/ComfyUI")
    if _is_comfyui(home):
        return home, "~/ComfyUI"
    return None, ("no ComfyUI found: COMFYUI_PATH is unset, this pack is not inside a ComfyUI custom_nodes/ folder, "
                  "and ~/ComfyUI does not exist")
