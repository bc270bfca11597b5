"""IP-Adapter for ComfyUI: image prompts on SD1.5 / SDXL models. See README.md.

ComfyUI imports this file once per folder in custom_nodes/ (under the folder's path as module name). When the pack
is there twice (two clones, or a folder and a symlink to it), only the first copy registers its nodes, HTTP routes,
model folders and web extension; every later copy registers nothing and says in the log which copy is active.
Imported any other way (pytest collecting the tests below this folder, under any folder name), it registers
nothing unless it is a package in a Python that can import ComfyUI.
"""
import importlib.util
import logging
import os
import sys
import types

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

_HERE = os.path.dirname(os.path.abspath(__file__))
# ComfyUI's load_custom_node names a folder's module after its path, "." replaced by "_x_" (0.3.x to 0.33).
_BY_COMFYUI = __name__ == os.path.dirname(__file__).replace(".", "_x_")
_REGISTRY = "comfyui_ipa_loaded_copies"  # a sys.modules entry every copy of the pack in this process shares


def _copies() -> list:
    """The folders of the copies ComfyUI loaded in this process, first = active (each appended once loaded)."""
    registry = sys.modules.get(_REGISTRY)
    if registry is None:
        registry = sys.modules[_REGISTRY] = types.ModuleType(_REGISTRY)
        registry.copies = []
    return registry.copies


_log = logging.getLogger("comfyui-ipa")
_first = (_copies() or [None])[0] if _BY_COMFYUI else None
if _first is not None:
    same = os.path.realpath(_first) == os.path.realpath(_HERE)
    _log.warning("IPA: this pack is already loaded from %s; the copy at %s is %s and is not loaded (no nodes, "
                 "routes or web extension from it). Keep one of the two folders in custom_nodes/.",
                 _first, _HERE, "the same folder (a link)" if same else "another copy")
    WEB_DIRECTORY = None
elif __package__ and importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_folder
    from .nodes.web_api import register as register_routes

    register_folder()
    register_routes()
    if _BY_COMFYUI:
        _copies().append(_HERE)
        _log.info("IPA: active copy %s (%d nodes)", _HERE, len(NODE_CLASS_MAPPINGS))

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
