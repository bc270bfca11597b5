"""Whether to serve the ComfyUI_IPAdapter_plus node IDs: only when that pack is not installed.

The old pack counts as installed when a folder in any of ComfyUI's custom_nodes paths
(``folder_paths.get_folder_paths("custom_nodes")``, extra_model_paths.yaml included) holds ``IPAdapterPlus.py``, or
its module is already imported. Then none of its IDs is registered here and nothing changes; otherwise every ID in
served_classes() is. Either way the log says so once per process.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

_log = logging.getLogger("comfyui-ipa")
MARKER = "IPAdapterPlus.py"
_SAID = "comfyui_ipa_old_api_logged"
MODULES = ("wrappers", "apply", "params", "weights")  # the wrapper modules; each class registers itself (base.SERVED)  # a sys.modules entry: log once even if the pack is imported twice


def old_pack_location() -> str | None:
    """The folder (or module name) of an installed ComfyUI_IPAdapter_plus, or None."""
    for name in list(sys.modules):
        last = name.replace("_x_", ".").rsplit(".", 1)[-1]
        if last == "IPAdapterPlus" or last.lower() == "comfyui_ipadapter_plus":
            return f"module {name}"
    try:
        import folder_paths

        roots = folder_paths.get_folder_paths("custom_nodes")
    except (ImportError, KeyError):
        roots = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            folder = os.path.join(root, entry)
            if entry.endswith(".disabled") or not os.path.isdir(folder):
                continue
            if os.path.isfile(os.path.join(folder, MARKER)):
                return folder
    return None


def _say(msg: str, *args) -> None:
    if _SAID not in sys.modules:
        sys.modules[_SAID] = type(sys)(_SAID)
        _log.info(msg, *args)


def old_api_mappings() -> tuple[dict, dict]:
    """(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS) of the served old IDs, or ({}, {}) when the old pack is
    installed."""
    where = old_pack_location()
    if where is not None:
        _say("IPA: ComfyUI_IPAdapter_plus is installed (%s): its node IDs are left to it, none served by this pack.",
             where)
        return {}, {}
    from .base import MODE, SWITCH

    WRAPPERS = served_classes()
    _say("IPA: ComfyUI_IPAdapter_plus is not installed; this pack serves its node IDs %s (results: %s; set %s="
         "reference for this pack's reference behaviour).", ", ".join(WRAPPERS),
         "the old pack's" if MODE != "reference" else "this pack's reference", SWITCH)
    return dict(WRAPPERS), {node_id: cls.DISPLAY_NAME for node_id, cls in WRAPPERS.items()}


def served_classes() -> dict:
    """Node ID -> class of every served old ID, in the old definitions' order (schema.OLD_NODES)."""
    from . import base, schema

    for name in MODULES:
        importlib.import_module(f".{name}", __package__)
    missing = [node_id for node_id in schema.OLD_NODES if node_id not in base.SERVED]
    if missing:
        raise ValueError(f"old definitions without a wrapper class: {missing}")
    return {node_id: base.SERVED[node_id] for node_id in schema.OLD_NODES}
