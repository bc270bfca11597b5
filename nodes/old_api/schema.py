"""The ComfyUI_IPAdapter_plus node definitions this pack serves, as data: each node's INPUT_TYPES exactly as the old
pack declares it (names, order, types, combo values, defaults, ranges; no tooltips, as there), RETURN_TYPES,
RETURN_NAMES (None where the old node declares none: ComfyUI then names the outputs by type), CATEGORY, FUNCTION and
display name. Recorded from the old pack's IPAdapterPlus.py (API facts, no code).

Two combos are lists of files: ``IPADAPTER_FILES`` (the ipadapter folders, as in the old pack) and ``FACE_MODEL_NAMES``
(the old pack lists only buffalo_l and antelopev2; this pack serves those two first, then every other face model
folder found on disk, as IPA Load Face Models does). They are resolved when ComfyUI asks for the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IPADAPTER_FILES = "<files in the ipadapter folders>"
FACE_MODEL_NAMES = "<buffalo_l, antelopev2, then the face model folders found>"

WEIGHT_TYPES = ["linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
                "style and composition", "style transfer precise", "composition precise"]
COMBINE_EMBEDS = ["concat", "add", "subtract", "average", "norm average"]
EMBEDS_SCALING = ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]
SIMPLE_WEIGHT_TYPES = ["standard", "prompt is more important", "style transfer"]
UNIFIED_PRESETS = ["LIGHT - SD1.5 only (low strength)", "STANDARD (medium strength)", "VIT-G (medium strength)",
                   "PLUS (high strength)", "PLUS FACE (portraits)", "FULL FACE - SD1.5 only (portraits stronger)"]
COMBINE_METHODS = ["concat", "add", "subtract", "average", "norm average", "max", "min"]
PREP_INTERPOLATIONS = ["LANCZOS", "BICUBIC", "HAMMING", "BILINEAR", "BOX", "NEAREST"]
PREP_CROPS = ["top", "bottom", "left", "right", "center", "pad"]


def _float(default: float, lo: float, hi: float, step: float) -> tuple:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step})


START_AT = _float(0.0, 0.0, 1.0, 0.001)
END_AT = _float(1.0, 0.0, 1.0, 0.001)
_APPLY_OPTIONAL = {"image_negative": ("IMAGE",), "attn_mask": ("MASK",), "clip_vision": ("CLIP_VISION",)}
_EMBEDS_INPUTS = {  # IPAdapterEmbeds and IPAdapterEmbedsBatch
    "required": {"model": ("MODEL",), "ipadapter": ("IPADAPTER",), "pos_embed": ("EMBEDS",),
                 "weight": _float(1.0, -1, 3, 0.05), "weight_type": (WEIGHT_TYPES,), "start_at": START_AT,
                 "end_at": END_AT, "embeds_scaling": (EMBEDS_SCALING,)},
    "optional": {"neg_embed": ("EMBEDS",), "attn_mask": ("MASK",), "clip_vision": ("CLIP_VISION",)}}
_FACEID_INPUTS = {  # IPAdapterFaceID and IPAAdapterFaceIDBatch
    "required": {"model": ("MODEL",), "ipadapter": ("IPADAPTER",), "image": ("IMAGE",),
                 "weight": _float(1.0, -1, 3, 0.05), "weight_faceidv2": _float(1.0, -1, 5.0, 0.05),
                 "weight_type": (WEIGHT_TYPES,), "combine_embeds": (COMBINE_EMBEDS,), "start_at": START_AT,
                 "end_at": END_AT, "embeds_scaling": (EMBEDS_SCALING,)},
    "optional": {**_APPLY_OPTIONAL, "insightface": ("INSIGHTFACE",)}}


@dataclass(frozen=True)
class OldNode:
    display: str
    category: str
    function: str
    inputs: dict[str, dict[str, tuple]]
    return_types: tuple[str, ...]
    return_names: tuple[str, ...] | None = None
    output_node: bool = False


OLD_NODES: dict[str, OldNode] = {
    "IPAdapterUnifiedLoader": OldNode(
        "IPAdapter Unified Loader", "ipadapter", "load_models",
        {"required": {"model": ("MODEL",), "preset": (UNIFIED_PRESETS,)},
         "optional": {"ipadapter": ("IPADAPTER",)}},
        ("MODEL", "IPADAPTER"), ("model", "ipadapter")),
    "IPAdapterModelLoader": OldNode(
        "IPAdapter Model Loader", "ipadapter/loaders", "load_ipadapter_model",
        {"required": {"ipadapter_file": (IPADAPTER_FILES,)}}, ("IPADAPTER",)),
    "IPAdapterInsightFaceLoader": OldNode(
        "IPAdapter InsightFace Loader", "ipadapter/loaders", "load_insightface",
        {"required": {"provider": (["CPU", "CUDA", "ROCM"],), "model_name": (FACE_MODEL_NAMES,)}},
        ("INSIGHTFACE",)),
    "IPAdapter": OldNode(
        "IPAdapter", "ipadapter", "apply_ipadapter",
        {"required": {"model": ("MODEL",), "ipadapter": ("IPADAPTER",), "image": ("IMAGE",),
                      "weight": _float(1.0, -1, 3, 0.05), "start_at": START_AT, "end_at": END_AT,
                      "weight_type": (SIMPLE_WEIGHT_TYPES,)},
         "optional": {"attn_mask": ("MASK",)}},
        ("MODEL",)),
    "IPAdapterAdvanced": OldNode(
        "IPAdapter Advanced", "ipadapter", "apply_ipadapter",
        {"required": {"model": ("MODEL",), "ipadapter": ("IPADAPTER",), "image": ("IMAGE",),
                      "weight": _float(1.0, -1, 5, 0.05), "weight_type": (WEIGHT_TYPES,),
                      "combine_embeds": (COMBINE_EMBEDS,), "start_at": START_AT, "end_at": END_AT,
                      "embeds_scaling": (EMBEDS_SCALING,)},
         "optional": dict(_APPLY_OPTIONAL)},
        ("MODEL",)),
    "IPAdapterBatch": OldNode(
        "IPAdapter Batch (Adv.)", "ipadapter", "apply_ipadapter",
        {"required": {"model": ("MODEL",), "ipadapter": ("IPADAPTER",), "image": ("IMAGE",),
                      "weight": _float(1.0, -1, 5, 0.05), "weight_type": (WEIGHT_TYPES,), "start_at": START_AT,
                      "end_at": END_AT, "embeds_scaling": (EMBEDS_SCALING,),
                      "encode_batch_size": ("INT", {"default": 0, "min": 0, "max": 4096})},
         "optional": dict(_APPLY_OPTIONAL)},
        ("MODEL",)),
    "IPAdapterFaceID": OldNode(
        "IPAdapter FaceID", "ipadapter/faceid", "apply_ipadapter", _FACEID_INPUTS, ("MODEL", "IMAGE"),
        ("MODEL", "face_image")),
    "IPAAdapterFaceIDBatch": OldNode(  # sic: the old pack's ID
        "IPAdapter FaceID Batch", "ipadapter/faceid", "apply_ipadapter", _FACEID_INPUTS, ("MODEL", "IMAGE"),
        ("MODEL", "face_image")),
    "IPAdapterEmbeds": OldNode(
        "IPAdapter Embeds", "ipadapter/embeds", "apply_ipadapter",
        _EMBEDS_INPUTS,
        ("MODEL",)),
    "IPAdapterEmbedsBatch": OldNode(
        "IPAdapter Embeds Batch", "ipadapter/embeds", "apply_ipadapter",
        _EMBEDS_INPUTS,
        ("MODEL",)),
    "IPAdapterEncoder": OldNode(
        "IPAdapter Encoder", "ipadapter/embeds", "encode",
        {"required": {"ipadapter": ("IPADAPTER",), "image": ("IMAGE",), "weight": _float(1.0, -1.0, 3.0, 0.01)},
         "optional": {"mask": ("MASK",), "clip_vision": ("CLIP_VISION",)}},
        ("EMBEDS", "EMBEDS"), ("pos_embed", "neg_embed")),
    "IPAdapterCombineEmbeds": OldNode(
        "IPAdapter Combine Embeds", "ipadapter/embeds", "batch",
        {"required": {"embed1": ("EMBEDS",), "method": (COMBINE_METHODS,)},
         "optional": {f"embed{i}": ("EMBEDS",) for i in range(2, 6)}},
        ("EMBEDS",)),
    "IPAdapterNoise": OldNode(
        "IPAdapter Noise", "ipadapter/utils", "make_noise",
        {"required": {"type": (["fade", "dissolve", "gaussian", "shuffle"],), "strength": _float(1.0, 0, 1, 0.05),
                      "blur": ("INT", {"default": 0, "min": 0, "max": 32, "step": 1})},
         "optional": {"image_optional": ("IMAGE",)}},
        ("IMAGE",)),
    "PrepImageForClipVision": OldNode(
        "Prep Image For ClipVision", "ipadapter/utils", "prep_image",
        {"required": {"image": ("IMAGE",), "interpolation": (PREP_INTERPOLATIONS,), "crop_position": (PREP_CROPS,),
                      "sharpening": _float(0.0, 0, 1, 0.05)}},
        ("IMAGE",)),
}


PARTS = ("schema_apply", "schema_params", "schema_weights")  # more old definitions, one file per group of nodes


def _load_parts() -> None:
    """Add each part's ``nodes(schema)`` to OLD_NODES. The parts are plain files beside this one, loaded by path so
    that this module stays importable on its own (without ComfyUI or the pack), as the core tests load it."""
    import importlib.util
    import os
    import sys

    me = sys.modules[__name__]
    here = os.path.dirname(os.path.abspath(__file__))
    for part in PARTS:
        spec = importlib.util.spec_from_file_location(f"{__name__}_{part}", os.path.join(here, f"{part}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for node_id, node in module.nodes(me).items():
            if node_id in OLD_NODES:
                raise ValueError(f"{part}.py: {node_id} is already defined")
            OLD_NODES[node_id] = node


_load_parts()


def input_types(node_id: str, resolve: dict[str, Any]) -> dict:
    """The node's INPUT_TYPES, with the file-list placeholders replaced by ``resolve[placeholder]()``."""
    out: dict[str, dict] = {}
    for section, inputs in OLD_NODES[node_id].inputs.items():
        out[section] = {}
        for name, spec in inputs.items():
            kind = spec[0]
            if isinstance(kind, str) and kind in resolve:
                spec = (list(resolve[kind]()),) + tuple(spec[1:])
            elif isinstance(kind, list):
                spec = (list(kind),) + tuple(spec[1:])
            out[section][name] = spec
    return out
