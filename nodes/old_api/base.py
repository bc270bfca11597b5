"""What every served ComfyUI_IPAdapter_plus wrapper shares: the result switch, the IPADAPTER socket's value, the
class decorator that gives a class its old definition (schema.py) and registers it, and the small helpers the apply
wrappers use (CLIP vision lookup, combine_embeds, the old FLOAT-list weights, install).

Sockets: IPADAPTER carries an :class:`OldAdapter` (this pack's LoadedAdapter, plus the CLIP vision and face models
where a unified loader found them), EMBEDS carries this pack's ImageTokens (the uncond inside), INSIGHTFACE this
pack's FaceModels. Results default to the old pack's (compatibility "ComfyUI_IPAdapter_plus": no middle-block term,
black-image uncond, RGB face crop for FaceID Plus); ``IPA_OLD_API=reference`` (read once, at import) gives this
pack's reference behaviour instead.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import folder_paths

from ...ip_adapter_core.combine import combine_tokens
from ...ip_adapter_core.embeds import ImageTokens
from ...ip_adapter_core.errors import InputError
from ...ip_adapter_core.plan import OLD_PACK
from ..common import reports
from ..folders import FOLDER, face_model_names
from ..patch.face import CLIP_CROP_COLORS
from ..patch.host import LoadedAdapter
from ..patch.install import install
from . import schema

_log = logging.getLogger("comfyui-ipa")
SWITCH = "IPA_OLD_API"
REFERENCE = "reference"
SERVED: dict[str, type] = {}  # node ID -> class, filled by @old_node as the wrapper modules are imported


def _mode(value: str) -> str:
    value = value.strip()
    if value in ("", OLD_PACK, "old"):
        return OLD_PACK
    if value != REFERENCE:
        _log.warning("IPA: %s=%r is not 'reference' or '%s'; using '%s'.", SWITCH, value, OLD_PACK, OLD_PACK)
        return OLD_PACK
    return REFERENCE


MODE = _mode(os.environ.get(SWITCH, ""))
COMPATIBILITY = OLD_PACK if MODE == OLD_PACK else "this pack"
UNCOND = "black image" if MODE == OLD_PACK else "reference"
FACE_CROP = CLIP_CROP_COLORS[1] if MODE == OLD_PACK else CLIP_CROP_COLORS[0]


@dataclasses.dataclass(eq=False)
class OldAdapter:
    """What an old IPADAPTER socket carries here."""
    adapter: LoadedAdapter
    clip_vision: Any = None
    face_models: Any = None


def _resolve() -> dict:
    return {schema.IPADAPTER_FILES: lambda: folder_paths.get_filename_list(FOLDER),
            schema.FACE_MODEL_NAMES: face_model_names}


def old_node(node_id: str):
    """Class decorator: the old node's INPUT_TYPES, outputs, category, function and display name from schema.py;
    the class's ``run`` becomes the old FUNCTION (errors reported naming the node), and the class is registered in
    :data:`SERVED`."""
    old = schema.OLD_NODES[node_id]

    def make(cls):
        cls.INPUT_TYPES = classmethod(lambda c: schema.input_types(node_id, _resolve()))
        cls.RETURN_TYPES, cls.CATEGORY, cls.FUNCTION = old.return_types, old.category, old.function
        if old.return_names is not None:
            cls.RETURN_NAMES = old.return_names
        if old.output_node:
            cls.OUTPUT_NODE = True
        cls.DISPLAY_NAME = old.display
        cls.NODE_ID = node_id
        cls.DESCRIPTION = (f"{old.display} of ComfyUI_IPAdapter_plus (node ID {node_id}), served by this pack for "
                           f"clients and saved graphs built for it; see the help page 'old_api'.")
        setattr(cls, old.function, reports(old.display)(cls.run))
        if node_id in SERVED:
            raise ValueError(f"old node ID {node_id} is served twice")
        SERVED[node_id] = cls
        return cls

    return make


def combined(tokens: ImageTokens, method: str, where: str) -> ImageTokens:
    """The old combine_embeds on the tokens (the old pack combined the CLIP embeddings: close, not equal)."""
    if method == "concat":
        return tokens
    return dataclasses.replace(tokens, cond=combine_tokens(tokens.cond, method, None, where=where))


def clip_of(ipadapter: OldAdapter, clip_vision: Any, where: str) -> Any:
    clip = clip_vision if clip_vision is not None else ipadapter.clip_vision
    if clip is None:
        raise InputError(f"{where}: missing CLIP vision: connect 'clip_vision' (or load the adapter with "
                         "'IPAdapter Unified Loader').")
    return clip


def weight_controls(weight: Any, unfold: bool, where: str) -> dict:
    """The plan controls of an old ``weight`` input: a number, or the list of per-frame weights IPAdapter Weights
    sends into that FLOAT socket. As the old pack: a list gives latent i the weight i (the last one repeated) on
    the batch nodes (unfold), and its first entry elsewhere."""
    if isinstance(weight, (list, tuple)):
        if not weight or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weight):
            raise InputError(f"{where}: input 'weight': expected a number or a list of numbers (IPAdapter Weights' "
                             f"'weights'), got {weight!r:.200}.")
        if not unfold:
            return {"weight": float(weight[0])}
        return {"weight": 1.0, "frame_weights": ", ".join(repr(float(w)) for w in weight)}
    return {"weight": weight}


def apply_tokens(model, ipadapter: OldAdapter, tokens, plan, where: str, notes: list[str] | None = None):
    """(the patched clone of ``model``,): the old apply nodes' single MODEL output."""
    return (install(model, ipadapter.adapter, tokens, plan, where=where, notes=notes),)
