"""The two node sets of the migration: the ComfyUI_IPAdapter_plus nodes' inputs (and the ones with no counterpart),
this pack's target nodes' inputs and defaults, and the value tables between them. Pure data; plans.py turns an old
node into a conversion plan, migrate_workflow.py applies the plans to UI- and API-format workflows.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # migration/ is one level below the repo
COMPAT = "ComfyUI_IPAdapter_plus"
W = "widget"  # marks a widget input in the schemas below

# ---------------------------------------------------------------------------------------------- schemas

# Old nodes: inputs in INPUT_TYPES order (required, then optional); widget inputs are (name, W).
_OLD_APPLY_TAIL = [("image_negative", "IMAGE"), ("attn_mask", "MASK"), ("clip_vision", "CLIP_VISION")]
_HEAD = [("model", "MODEL"), ("ipadapter", "IPADAPTER")]
_RANGE = [("start_at", W), ("end_at", W)]
OLD_INPUTS: dict[str, list[tuple[str, str]]] = {
    "IPAdapterUnifiedLoader": [("model", "MODEL"), ("preset", W), ("ipadapter", "IPADAPTER")],
    "IPAdapterUnifiedLoaderCommunity": [("model", "MODEL"), ("preset", W), ("ipadapter", "IPADAPTER")],
    "IPAdapterModelLoader": [("ipadapter_file", W)],
    "IPAdapter": [*_HEAD, ("image", "IMAGE"), ("weight", W), *_RANGE, ("weight_type", W), ("attn_mask", "MASK")],
    "IPAdapterAdvanced": [*_HEAD, ("image", "IMAGE"), ("weight", W), ("weight_type", W), ("combine_embeds", W),
                          *_RANGE, ("embeds_scaling", W), *_OLD_APPLY_TAIL],
    "IPAdapterBatch": [*_HEAD, ("image", "IMAGE"), ("weight", W), ("weight_type", W), *_RANGE,
                       ("embeds_scaling", W), ("encode_batch_size", W), *_OLD_APPLY_TAIL],
    "IPAdapterStyleComposition": [*_HEAD, ("image_style", "IMAGE"), ("image_composition", "IMAGE"),
                                  ("weight_style", W), ("weight_composition", W), ("expand_style", W),
                                  ("combine_embeds", W), *_RANGE, ("embeds_scaling", W), *_OLD_APPLY_TAIL],
    "IPAdapterTiled": [*_HEAD, ("image", "IMAGE"), ("weight", W), ("weight_type", W), ("combine_embeds", W),
                       *_RANGE, ("sharpening", W), ("embeds_scaling", W), *_OLD_APPLY_TAIL],
    "IPAdapterEmbeds": [*_HEAD, ("pos_embed", "EMBEDS"), ("weight", W), ("weight_type", W), *_RANGE,
                        ("embeds_scaling", W), ("neg_embed", "EMBEDS"), ("attn_mask", "MASK"),
                        ("clip_vision", "CLIP_VISION")],
    "IPAdapterMS": [*_HEAD, ("image", "IMAGE"), ("weight", W), ("weight_faceidv2", W), ("weight_type", W),
                    ("combine_embeds", W), *_RANGE, ("embeds_scaling", W), ("layer_weights", W), *_OLD_APPLY_TAIL,
                    ("insightface", "INSIGHTFACE")],
    "IPAdapterPreciseStyleTransfer": [*_HEAD, ("image", "IMAGE"), ("weight", W), ("style_boost", W),
                                      ("combine_embeds", W), *_RANGE, ("embeds_scaling", W), *_OLD_APPLY_TAIL],
    "IPAdapterPreciseComposition": [*_HEAD, ("image", "IMAGE"), ("weight", W), ("composition_boost", W),
                                    ("combine_embeds", W), *_RANGE, ("embeds_scaling", W), *_OLD_APPLY_TAIL],
    "IPAdapterEncoder": [("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("weight", W), ("mask", "MASK"),
                         ("clip_vision", "CLIP_VISION")],
    "IPAdapterCombineEmbeds": [("embed1", "EMBEDS"), ("method", W), *[(f"embed{i}", "EMBEDS") for i in range(2, 6)]],
    "IPAdapterNoise": [("type", W), ("strength", W), ("blur", W), ("image_optional", "IMAGE")],
    "PrepImageForClipVision": [("image", "IMAGE"), ("interpolation", W), ("crop_position", W), ("sharpening", W)],
    "IPAdapterSaveEmbeds": [("embeds", "EMBEDS"), ("filename_prefix", W)],
    "IPAdapterRegionalConditioning": [("image", "IMAGE"), ("image_weight", W), ("prompt_weight", W),
                                      ("weight_type", W), *_RANGE, ("mask", "MASK"), ("positive", "CONDITIONING"),
                                      ("negative", "CONDITIONING")],
    "IPAdapterCombineParams": [(f"params_{i}", "IPADAPTER_PARAMS") for i in range(1, 6)],
    "IPAdapterFromParams": [*_HEAD, ("ipadapter_params", "IPADAPTER_PARAMS"), ("combine_embeds", W),
                            ("embeds_scaling", W), ("image_negative", "IMAGE"), ("clip_vision", "CLIP_VISION")],
}
OLD_INPUTS["IPAdapterFaceID"] = [*_HEAD, ("image", "IMAGE"), ("weight", W), ("weight_faceidv2", W), ("weight_type", W),
                                 ("combine_embeds", W), *_RANGE, ("embeds_scaling", W), *_OLD_APPLY_TAIL,
                                 ("insightface", "INSIGHTFACE")]
OLD_INPUTS["IPAAdapterFaceIDBatch"] = OLD_INPUTS["IPAdapterFaceID"]  # sic: the old pack's class name
OLD_INPUTS["IPAdapterUnifiedLoaderFaceID"] = [("model", "MODEL"), ("preset", W), ("lora_strength", W), ("provider", W),
                                              ("ipadapter", "IPADAPTER")]
OLD_INPUTS["IPAdapterInsightFaceLoader"] = [("provider", W), ("model_name", W)]
for _name in ("IPAdapterEmbedsBatch",):
    OLD_INPUTS[_name] = OLD_INPUTS["IPAdapterEmbeds"]
for _name in ("IPAdapterPreciseStyleTransfer", "IPAdapterPreciseComposition"):
    OLD_INPUTS[_name + "Batch"] = OLD_INPUTS[_name]

# Old nodes with no counterpart: the reason shown in the report.
UNSUPPORTED = {
    "IPAdapterFaceIDKolors": "Kolors FaceID (and Kolors) is not supported by this pack",
    "IPAdapterClipVisionEnhancer": "no ClipVision Enhancer in this pack (use IPA Prep Image or IPA Apply (tiled))",
    "IPAdapterClipVisionEnhancerBatch": "no ClipVision Enhancer in this pack",
    "IPAdapterFromParams": "regional params are not converted automatically: rebuild them with IPA Regional Apply",
    "IPAdapterRegionalConditioning": "converted only together with the IPAdapter from Params node it feeds",
    "IPAdapterCombineParams": "converted only together with the IPAdapter from Params node it feeds",
    "IPAdapterWeights": "no per-frame weight generator: type the factors into IPA Apply (advanced)'s frame_weights",
    "IPAdapterWeightsFromStrategy": "no weights strategies in this pack",
    "IPAdapterPromptScheduleFromWeightsStrategy": "no weights strategies in this pack",
    "IPAdapterCombineWeights": "no weight lists in this pack: use frame_weights",
    "IPAdapterLoadEmbeds": ".ipadpt files are pickled raw CLIP outputs; encode the image again with IPA Encode "
                           "Image and save it with IPA Save Embeds",
    "IPAdapterStyleCompositionBatch": "IPA Style & Composition has no unfold (image i -> latent i) mode",
    "IPAdapterTiledBatch": "IPA Apply (tiled) has no unfold (image i -> latent i) mode",
}
OLD_TYPES = set(OLD_INPUTS) | set(UNSUPPORTED)


@dataclass(frozen=True)
class Target:
    """A node of this pack as the converter writes it: inputs in order, widget defaults, outputs."""
    display: str
    inputs: tuple[tuple[str, str], ...]  # (name, socket type) or (name, W)
    defaults: dict[str, Any]
    outputs: tuple[tuple[str, str], ...]

    def widgets(self) -> list[str]:
        return [n for n, kind in self.inputs if kind == W]


_APPLY_RANGE = (("start_at", W), ("end_at", W))
TARGETS: dict[str, Target] = {
    "IPA_UnifiedLoader": Target("IPA Unified Loader", (("model", "MODEL"), ("preset", W), ("ipadapter_file", W),
                                                       ("clip_vision_file", W)),
                                {"preset": "standard", "ipadapter_file": "auto", "clip_vision_file": "auto"},
                                (("model", "MODEL"), ("ipadapter", "IPA_ADAPTER"), ("clip_vision", "CLIP_VISION"))),
    "IPA_ModelLoader": Target("IPA Load Adapter", (("ipadapter_file", W),), {}, (("IPA_ADAPTER", "IPA_ADAPTER"),)),
    "IPA_Encode": Target("IPA Encode Image", (("ipadapter", "IPA_ADAPTER"), ("clip_vision", "CLIP_VISION"),
                                              ("image", "IMAGE"), ("encode_batch_size", W), ("uncond", W),
                                              ("negative_image", "IMAGE")),
                         {"encode_batch_size": 0, "uncond": "reference"}, (("IPA_EMBEDS", "IPA_EMBEDS"),)),
    "IPA_ApplyAdvanced": Target(
        "IPA Apply (advanced)",
        (("model", "MODEL"), ("ipadapter", "IPA_ADAPTER"), ("weight", W), ("weight_type", W), *_APPLY_RANGE,
         ("embeds_scaling", W), ("image", "IMAGE"), ("clip_vision", "CLIP_VISION"), ("embeds", "IPA_EMBEDS"),
         ("layer_weights", W), ("weight_composition", W), ("attn_mask", "MASK"), ("weight_schedule", W),
         ("schedule_values", W), ("unfold_batch", W), ("frame_weights", W), ("compatibility", W),
         ("precise_boost", W), ("uncond_term", W)),
        {"weight": 1.0, "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only",
         "layer_weights": "", "weight_composition": 1.0, "weight_schedule": "constant", "schedule_values": "",
         "unfold_batch": False, "frame_weights": "", "compatibility": "this pack", "precise_boost": 1.0,
         "uncond_term": True},
        (("model", "MODEL"),)),
    "IPA_CombineEmbeds": Target("IPA Combine Embeds", (("embeds", "IPA_EMBEDS"), ("method", W), ("image_weights", W)),
                                {"method": "concat", "image_weights": ""}, (("IPA_EMBEDS", "IPA_EMBEDS"),)),
    "IPA_NoiseImage": Target("IPA Noise Image", (("width", W), ("height", W), ("batch", W), ("seed", W), ("type", W),
                                                 ("strength", W), ("image", "IMAGE")),
                             {"width": 224, "height": 224, "batch": 1, "seed": 0, "type": "fade", "strength": 1.0},
                             (("IMAGE", "IMAGE"),)),
    "IPA_PrepImage": Target("IPA Prep Image", (("image", "IMAGE"), ("crop", W), ("interpolation", W),
                                               ("sharpening", W), ("clip_vision", "CLIP_VISION"), ("size", W)),
                            {"crop": "center", "interpolation": "bicubic", "sharpening": 0.0, "size": 224},
                            (("IMAGE", "IMAGE"),)),
    "IPA_SaveEmbeds": Target("IPA Save Embeds", (("embeds", "IPA_EMBEDS"), ("filename_prefix", W)),
                             {"filename_prefix": "ipa_embeds"}, ()),
    "IPA_StyleComposition": Target(
        "IPA Style & Composition",
        (("model", "MODEL"), ("ipadapter", "IPA_ADAPTER"), ("clip_vision", "CLIP_VISION"), ("image_style", "IMAGE"),
         ("image_composition", "IMAGE"), ("weight_style", W), ("weight_composition", W), ("expand_style", W),
         *_APPLY_RANGE, ("embeds_scaling", W), ("attn_mask", "MASK"), ("negative_image", "IMAGE")),
        {"weight_style": 1.0, "weight_composition": 1.0, "expand_style": False, "start_at": 0.0, "end_at": 1.0,
         "embeds_scaling": "V only"},
        (("model", "MODEL"),)),
    "IPA_RegionalApply": Target(
        "IPA Regional Apply",
        (("model", "MODEL"), ("ipadapter", "IPA_ADAPTER"), ("clip_vision", "CLIP_VISION"), ("image_1", "IMAGE"),
         ("mask_1", "MASK"), ("weight_1", W), *_APPLY_RANGE,
         *[(f"{name}_{i}", kind) for i in range(2, 5) for name, kind in (("image", "IMAGE"), ("mask", "MASK"),
                                                                          ("weight", W))],
         ("positive", "CONDITIONING"), *[(f"prompt_{i}", "CONDITIONING") for i in range(1, 5)],
         ("prompt_strength", W)),
        {**{f"weight_{i}": 1.0 for i in range(1, 5)}, "start_at": 0.0, "end_at": 1.0, "prompt_strength": 1.0},
        (("model", "MODEL"), ("positive", "CONDITIONING"))),
    "ConditioningSetMask": Target(  # core: what the old regional node did to its prompts
        "Conditioning (Set Mask)", (("conditioning", "CONDITIONING"), ("mask", "MASK"), ("strength", W),
                                    ("set_cond_area", W)),
        {"strength": 1.0, "set_cond_area": "default"}, (("CONDITIONING", "CONDITIONING"),)),
    "IPA_ApplyTiled": Target(
        "IPA Apply (tiled)",
        (("model", "MODEL"), ("ipadapter", "IPA_ADAPTER"), ("clip_vision", "CLIP_VISION"), ("image", "IMAGE"),
         ("weight", W), *_APPLY_RANGE, ("attn_mask", "MASK"), ("tile_overlap", W), ("short_side_tiles", W),
         ("interpolation", W), ("sharpening", W)),
        {"weight": 1.0, "start_at": 0.0, "end_at": 1.0, "tile_overlap": 0.0, "short_side_tiles": 0,
         "interpolation": "bicubic", "sharpening": 0.0},
        (("model", "MODEL"), ("tiles", "IMAGE"), ("masks", "MASK"))),
}
_FACE_OPTIONS = (("face_select", W), ("face_index", W), ("no_face", W), ("det_size", W), ("clip_crop_colors", W))
TARGETS["IPA_ApplyFaceID"] = Target(
    "IPA Apply FaceID",
    (("model", "MODEL"), ("ipadapter", "IPA_ADAPTER"), ("face_models", "IPA_FACE_MODELS"), ("image", "IMAGE"),
     ("weight", W), ("weight_faceidv2", W), ("weight_type", W), *_APPLY_RANGE, ("embeds_scaling", W),
     ("lora_strength", W), ("clip_vision", "CLIP_VISION"), ("attn_mask", "MASK"), ("unfold_batch", W),
     *_FACE_OPTIONS),
    {"weight": 1.0, "weight_faceidv2": 1.0, "weight_type": "linear", "start_at": 0.0, "end_at": 1.0,
     "embeds_scaling": "V only", "lora_strength": 1.0, "unfold_batch": False, "face_select": "best", "face_index": 0,
     "no_face": "error", "det_size": "640 down to 320", "clip_crop_colors": "reference (BGR)"},
    (("model", "MODEL"), ("face_image", "IMAGE")))
TARGETS["IPA_FaceModelLoader"] = Target("IPA Load Face Models", (("model_name", W), ("provider", W)),
                                        {"model_name": "buffalo_l", "provider": "CPU"},
                                        (("face_models", "IPA_FACE_MODELS"),))
SEED_WIDGETS = {("IPA_NoiseImage", "seed")}  # the editor stores a control_after_generate value after these

UNIFIED_PRESETS = {
    "LIGHT - SD1.5 only (low strength)": "light", "STANDARD (medium strength)": "standard",
    "VIT-G (medium strength)": "vit-G", "PLUS (high strength)": "plus", "PLUS FACE (portraits)": "plus face",
    "FULL FACE - SD1.5 only (portraits stronger)": "full face", "Composition": "composition",
}
FACEID_PRESETS = {
    "FACEID": "faceid", "FACEID PLUS - SD1.5 only": "faceid plus", "FACEID PLUS V2": "faceid plus v2",
    "FACEID PORTRAIT (style transfer)": "faceid portrait",
    "FACEID PORTRAIT UNNORM - SDXL only (strong)": "faceid portrait unnorm",
}
OLD_CLIP_CROP = "ComfyUI_IPAdapter_plus (RGB)"  # the old pack fed CLIP the RGB face crop
SIMPLE_WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}
INTERPOLATIONS = {"LANCZOS": "lanczos", "BICUBIC": "bicubic", "BILINEAR": "bilinear", "NEAREST": "nearest",
                  "BOX": "area", "HAMMING": "bilinear"}


def available_nodes() -> set[str]:
    """Node IDs this pack registers (the keys of ``_NODES`` in nodes/__init__.py, read without importing it)."""
    path = os.path.join(REPO, "nodes", "__init__.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_NODES" for t in node.targets):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return set()
