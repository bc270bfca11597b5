"""Find the ComfyUI this pack runs in (COMFYUI_PATH, the ComfyUI whose custom_nodes/ holds this folder, or ~/ComfyUI),
and import it: ``import_comfyui`` is the one place that puts a ComfyUI folder on sys.path (tests, bench and stand-ins)."""
from __future__ import annotations

import os
import sys

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


def import_comfyui(path: str, *, cpu: bool = False) -> str:
    """Make the ComfyUI at ``path`` importable the way its main.py is: the folder first on sys.path, so ``comfy``,
    ``folder_paths`` and the top-level ``nodes`` are ComfyUI's (never this repository's own ``nodes/`` package, which
    is on sys.path too when the repo root is). Fails if a module named ``nodes`` was already imported from elsewhere.
    ``cpu``: force the CPU (``comfy.cli_args.args.cpu``, and the CPU state if comfy.model_management is already
    imported); otherwise nothing of ComfyUI is imported here (a caller may still set its command line first, e.g.
    ``comfy.options.enable_args_parsing()``). Returns ``path``."""
    path = os.path.abspath(path)
    if sys.path[0] != path:
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    other = sys.modules.get("nodes")
    if other is not None and not os.path.abspath(getattr(other, "__file__", "") or "").startswith(path):
        raise RuntimeError(f"a module named 'nodes' was imported from {other.__file__} before ComfyUI's; "
                           "ComfyUI needs its nodes.py under that name")
    if cpu:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        mm = sys.modules.get("comfy.model_management")
        if mm is not None:
            mm.cpu_state = mm.CPUState.CPU
    return path


def is_pack_copy(path: str) -> bool:
    """Whether ``path`` is a folder holding this pack (any folder name): its pyproject names the project
    comfyui-ipa and it has the core package."""
    try:
        with open(os.path.join(path, "pyproject.toml"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return False
    return 'name = "comfyui-ipa"' in text and os.path.isdir(os.path.join(path, "ip_adapter_core"))


def installed_copies(comfyui: str) -> list[str]:
    """The entries of ``<comfyui>/custom_nodes`` that hold this pack (folders or links to them); ComfyUI's loader
    skips names ending in .disabled and takes the rest in os.listdir order."""
    root = os.path.join(comfyui, "custom_nodes")
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return [os.path.join(root, n) for n in names
            if not n.endswith(".disabled") and os.path.isdir(os.path.join(root, n))
            and is_pack_copy(os.path.join(root, n))]


def comfyui_version(path: str) -> str:
    """The version a ComfyUI tree states in comfyui_version.py (read as text, nothing imported)."""
    import re

    try:
        with open(os.path.join(path, "comfyui_version.py"), encoding="utf-8") as f:
            found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read())
    except OSError:
        found = None
    return found.group(1) if found else "unknown version"


def host_skip_reason(why: str) -> str:
    """The one line the tests print (header, each skip, summary) when no ComfyUI is found."""
    return f"ComfyUI host tests SKIPPED: {why}. Set COMFYUI_PATH to a ComfyUI checkout."
