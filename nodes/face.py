"""FaceID nodes: IPA_FaceModelLoader (face detector + recogniser, onnxruntime), IPA_EncodeFace (IMAGE -> IPA_EMBEDS
plus the aligned face crops) and IPA_ApplyFaceID (the common case in one node, with the adapter's own LoRA)."""
from __future__ import annotations

from typing import Any

import torch

from ..ip_adapter_core.embeds import ImageTokens
from ..ip_adapter_core.errors import InputError
from .common import (ADAPTER_IN, ATTN_MASK, CATEGORY, EMBEDS, EMBEDS_SCALING, END_AT, MODEL_IN, START_AT,
                     UNFOLD_BATCH, WEIGHT, WEIGHT_TYPE, reports)
from .folders import face_folders, face_model_names
from .patch.face import (CLIP_CROP_COLORS, DET_SIZE_CHOICES, FACE_SELECT, NO_FACE, PROVIDERS, FaceEncoder,
                         FaceModels, det_sizes_of, encode_faces, load_face_models)
from .patch.host import LoadedAdapter
from .patch.install import install, plan_for

FACE_MODELS = "IPA_FACE_MODELS"
FACE_MODELS_IN = (FACE_MODELS, {"tooltip": "The face detector and recogniser from 'IPA Load Face Models'."})
FACE_CLIP_IN = ("CLIP_VISION", {"tooltip": "FaceID Plus / Plus v2 only: the CLIP vision encoder (ViT-H) that reads "
                                           "the aligned face. Not used by FaceID, portrait and portrait unnorm."})
WEIGHT_FACEIDV2 = ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                             "tooltip": "FaceID Plus v2 only: the strength of the v2 shortcut (the face ID tokens "
                                        "added to the CLIP branch's); 1 = the reference. Ignored by other adapters."})
LORA_STRENGTH = ("FLOAT", {"default": 1.0, "min": -1.0, "max": 2.0, "step": 0.05,
                           "tooltip": "Strength of the LoRA inside FaceID / FaceID Plus adapter files, applied "
                                      "through ComfyUI's weight patching (no separate _lora file needed; 0 = off, "
                                      "1 = the reference). Portrait adapters have none."})
FACE_OPTIONS = {
    "face_select": (list(FACE_SELECT), {
        "default": "best",
        "tooltip": "Which face of each image: 'best' = the detector's most confident (the reference), 'largest' "
                   "= the biggest box, 'index' = face_index in confidence order."}),
    "face_index": ("INT", {"default": 0, "min": 0, "max": 99, "tooltip": "For face_select 'index': 0 = the most "
                                                                          "confident face, 1 = the next, ..."}),
    "no_face": (list(NO_FACE), {
        "default": "error",
        "tooltip": "An image without a face: 'error' stops the run naming the image; 'skip' leaves the image out "
                   "(with no face in any image the model is returned unchanged); 'zero embedding' keeps it with "
                   "the uncond's embedding (keeps frame order for videos)."}),
    "det_size": (list(DET_SIZE_CHOICES), {
        "default": DET_SIZE_CHOICES[0],
        "tooltip": "Face detection resolution. '640 down to 320' = try 640, then smaller sizes until a face is "
                   "found (the old pack's retries: finds faces that fill the picture). A number = that size only."}),
    "clip_crop_colors": (list(CLIP_CROP_COLORS), {
        "default": CLIP_CROP_COLORS[0],
        "tooltip": "FaceID Plus only: the colour order of the aligned face the CLIP branch reads. 'reference (BGR)' "
                   "= the official code (channels swapped, as the adapters were trained); 'ComfyUI_IPAdapter_plus "
                   "(RGB)' = the old pack."}),
}


def _face_encoder(face_models: FaceModels, clip_vision: Any, weight_faceidv2: float, face_select: str,
                  face_index: int, no_face: str, det_size: str, clip_crop_colors: str) -> FaceEncoder:
    return FaceEncoder(faces=face_models, clip_vision=clip_vision, face_select=face_select, face_index=int(face_index),
                       no_face=no_face, det_sizes=det_sizes_of(det_size), v2_scale=float(weight_faceidv2),
                       crop_colors=clip_crop_colors)


def _notes(adapter: LoadedAdapter, notes: list[str]) -> list[str]:
    return [adapter.spec.describe()] + notes


class IPAFaceModelLoader:
    DISPLAY_NAME = "IPA Load Face Models"
    CATEGORY = CATEGORY
    RETURN_TYPES = (FACE_MODELS,)
    RETURN_NAMES = ("face_models",)
    OUTPUT_TOOLTIPS = ("The face detector + recogniser, loaded once and shared.",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads the face models FaceID adapters need (insightface's buffalo_l ONNX files, run with "
                   "onnxruntime; the insightface package is not needed). Looks in models/insightface/models/<name>/ "
                   "(where the older IPAdapter nodes keep them), models/insightface/<name>/ and every insightface "
                   "folder of extra_model_paths.yaml; the files are recognised by their contents, not their names.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (face_model_names(), {"tooltip": "The face model set: buffalo_l (what FaceID adapters "
                                                           "were trained with) or another folder of ONNX files."}),
            "provider": (list(PROVIDERS), {"default": "CPU", "tooltip": "onnxruntime execution provider. CUDA "
                                                                        "needs onnxruntime-gpu; CPU is fast enough "
                                                                        "for a few images."})}}

    @reports(DISPLAY_NAME)
    def load(self, model_name: str, provider: str = "CPU"):
        models = load_face_models(face_folders(), model_name, provider, where=self.DISPLAY_NAME)
        return {"ui": {"text": [models.description]}, "result": (models,)}


class IPAEncodeFace:
    DISPLAY_NAME = "IPA Encode Face"
    CATEGORY = CATEGORY
    RETURN_TYPES = (EMBEDS, "IMAGE")
    RETURN_NAMES = ("embeds", "face_image")
    OUTPUT_TOOLTIPS = ("Face tokens for this FaceID adapter; feed them to any 'IPA Apply' node.",
                       "The aligned face crop of each image: the face that was used.")
    FUNCTION = "run"
    DESCRIPTION = ("FaceID: finds the face in each image, embeds it with the face recogniser (and, for FaceID "
                   "Plus, CLIP vision on the aligned face) and projects it with the adapter. The embeds work with "
                   "every apply node (weight types, masks, schedules, regional, re-weight, save/load).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ipadapter": ADAPTER_IN, "face_models": FACE_MODELS_IN,
                             "image": ("IMAGE", {"tooltip": "Picture(s) with a face. Several images are used "
                                                            "together (portrait adapters: one face per image)."})},
                "optional": {"clip_vision": FACE_CLIP_IN, "weight_faceidv2": WEIGHT_FACEIDV2, **FACE_OPTIONS}}

    @reports(DISPLAY_NAME)
    def run(self, ipadapter: LoadedAdapter, face_models: FaceModels, image: torch.Tensor, clip_vision: Any = None,
            weight_faceidv2: float = 1.0, face_select: str = "best", face_index: int = 0, no_face: str = "error",
            det_size: str = DET_SIZE_CHOICES[0], clip_crop_colors: str = CLIP_CROP_COLORS[0]):
        where = self.DISPLAY_NAME
        encoder = _face_encoder(face_models, clip_vision, weight_faceidv2, face_select, face_index, no_face, det_size,
                                clip_crop_colors)
        tokens, crops, notes = encode_faces(ipadapter, encoder, image, where=where)
        if tokens is None:
            raise InputError(f"{where}: no face in any of the {image.shape[0]} images, and no_face 'skip' left "
                             f"none to encode.")
        return {"ui": {"text": _notes(ipadapter, notes)}, "result": (tokens, crops)}


class IPAApplyFaceID:
    DISPLAY_NAME = "IPA Apply FaceID"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "IMAGE")
    RETURN_NAMES = ("model", "face_image")
    OUTPUT_TOOLTIPS = ("A copy of the model that follows the face (with the adapter's LoRA).",
                       "The aligned face crop of each image: the face that was used.")
    FUNCTION = "run"
    DESCRIPTION = ("FaceID in one node: finds the face, embeds it, adds the face prompt to a copy of the model and "
                   "applies the LoRA inside the adapter file. For every other control, use 'IPA Encode Face' "
                   "and any apply node.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": MODEL_IN, "ipadapter": ADAPTER_IN, "face_models": FACE_MODELS_IN,
                             "image": ("IMAGE", {"tooltip": "Picture(s) with a face."}),
                             "weight": WEIGHT, "weight_faceidv2": WEIGHT_FACEIDV2, "weight_type": WEIGHT_TYPE,
                             "start_at": START_AT, "end_at": END_AT, "embeds_scaling": EMBEDS_SCALING,
                             "lora_strength": LORA_STRENGTH},
                "optional": {"clip_vision": FACE_CLIP_IN, "attn_mask": ATTN_MASK, "unfold_batch": UNFOLD_BATCH,
                             **FACE_OPTIONS}}

    @reports(DISPLAY_NAME)
    def run(self, model: Any, ipadapter: LoadedAdapter, face_models: FaceModels, image: torch.Tensor, weight: float,
            weight_faceidv2: float, weight_type: str, start_at: float, end_at: float, embeds_scaling: str,
            lora_strength: float, clip_vision: Any = None, attn_mask: torch.Tensor | None = None,
            unfold_batch: bool = False, face_select: str = "best", face_index: int = 0, no_face: str = "error",
            det_size: str = DET_SIZE_CHOICES[0], clip_crop_colors: str = CLIP_CROP_COLORS[0]):
        where = self.DISPLAY_NAME
        plan = plan_for(model, ipadapter, where=where, weight=weight, weight_type=weight_type, start_at=start_at,
                        end_at=end_at, embeds_scaling=embeds_scaling, attn_mask=attn_mask, unfold_batch=unfold_batch,
                        lora_strength=lora_strength)
        encoder = _face_encoder(face_models, clip_vision, weight_faceidv2, face_select, face_index, no_face, det_size,
                                clip_crop_colors)
        tokens, crops, notes = encode_faces(ipadapter, encoder, image, where=where)
        if tokens is None:
            return {"ui": {"text": _notes(ipadapter, notes + ["no face in any image: the model is unchanged"])},
                    "result": (model, crops)}
        patched = install(model, ipadapter, tokens, plan, where=where, notes=notes)
        return {"ui": {"text": _notes(ipadapter, notes)}, "result": (patched, crops)}


__all__ = ["IPAFaceModelLoader", "IPAEncodeFace", "IPAApplyFaceID", "FACE_MODELS", "ImageTokens"]
