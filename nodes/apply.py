"""IPA_Apply, IPA_ApplySimple, IPA_ApplyAdvanced: a clone of the MODEL with the image term on every cross-attention
site."""
from __future__ import annotations

from typing import Any

import torch

from ..ip_adapter_core.embeds import ImageTokens
from ..ip_adapter_core.errors import InputError
from .common import (ADAPTER_IN, ATTN_MASK, CATEGORY, CLIP_VISION_IN, COMPATIBILITY, EMBEDS_IN, EMBEDS_SCALING, END_AT,
                     FRAME_WEIGHTS, IMAGE_IN, LAYER_WEIGHTS, MODEL_IN, PRECISE_BOOST, SCHEDULE_VALUES, START_AT,
                     UNCOND_TERM, UNFOLD_BATCH, WEIGHT, WEIGHT_COMPOSITION, WEIGHT_SCHEDULE, WEIGHT_TYPE, reports)
from .patch import encoder
from .patch.host import LoadedAdapter
from .patch.install import install, plan_for


def image_tokens(ipadapter: LoadedAdapter, image: torch.Tensor | None, clip_vision: Any, embeds: ImageTokens | None,
                 *, where: str, uncond: str = "reference") -> ImageTokens:
    """The tokens of an apply node's optional image / clip_vision / embeds inputs; ``uncond``: the uncond mode when
    the image is encoded here (nodes/patch/encoder.py)."""
    if (image is None) == (embeds is None):
        raise InputError(f"{where}: connect exactly one of 'image' (with 'clip_vision') or 'embeds'; "
                         f"got {'both' if embeds is not None else 'neither'}.")
    return embeds if embeds is not None else encoder.encode(ipadapter, clip_vision, image, where=where, uncond=uncond)


class IPAApply:
    DISPLAY_NAME = "IPA Apply"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model that attends to the image prompt.",)
    FUNCTION = "run"
    DESCRIPTION = ("Adds an image prompt to a model: either embeds from 'IPA Encode Image', or an image plus a CLIP "
                   "vision encoder. Chain several to combine adapters.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": MODEL_IN, "ipadapter": ADAPTER_IN, "weight": WEIGHT, "start_at": START_AT, "end_at": END_AT},
            "optional": {"image": IMAGE_IN, "clip_vision": CLIP_VISION_IN, "embeds": EMBEDS_IN,
                         "attn_mask": ATTN_MASK},
        }

    @reports(DISPLAY_NAME)
    def run(self, model: Any, ipadapter: LoadedAdapter, weight: float, start_at: float, end_at: float,
            image: torch.Tensor | None = None, clip_vision: Any = None, embeds: ImageTokens | None = None,
            attn_mask: torch.Tensor | None = None):
        where = self.DISPLAY_NAME
        plan = plan_for(model, ipadapter, where=where, weight=weight, start_at=start_at, end_at=end_at,
                        attn_mask=attn_mask)  # bad controls fail before the image is encoded
        tokens = image_tokens(ipadapter, image, clip_vision, embeds, where=where)
        return (install(model, ipadapter, tokens, plan, where=where),)


class IPAApplySimple:
    DISPLAY_NAME = "IPA Apply (simple)"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model that attends to the image prompt.",)
    FUNCTION = "run"
    DESCRIPTION = "The common case in one node: model + adapter + CLIP vision + image -> model with the image prompt."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": MODEL_IN, "ipadapter": ADAPTER_IN, "clip_vision": CLIP_VISION_IN, "image": IMAGE_IN,
                             "weight": WEIGHT, "start_at": START_AT, "end_at": END_AT}}

    @reports(DISPLAY_NAME)
    def run(self, model: Any, ipadapter: LoadedAdapter, clip_vision: Any, image: torch.Tensor, weight: float,
            start_at: float, end_at: float):
        where = self.DISPLAY_NAME
        plan = plan_for(model, ipadapter, where=where, weight=weight, start_at=start_at, end_at=end_at)
        tokens = encoder.encode(ipadapter, clip_vision, image, where=where)
        return (install(model, ipadapter, tokens, plan, where=where),)


class IPAApplyAdvanced:
    DISPLAY_NAME = "IPA Apply (advanced)"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model that attends to the image prompt.",)
    FUNCTION = "run"
    DESCRIPTION = ("IPA Apply with per-layer control: weight types (style transfer, composition, ease curves, ...), "
                   "embeds scaling and per-layer weights; for batches and animation, image i -> latent i (unfold) "
                   "and per-frame weights, AnimateDiff context windows included; a compatibility mode for "
                   "workflows migrated from ComfyUI_IPAdapter_plus. All of it is folded into the cached image "
                   "keys/values, so a step costs the same as with IPA Apply.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": MODEL_IN, "ipadapter": ADAPTER_IN, "weight": WEIGHT, "weight_type": WEIGHT_TYPE,
                         "start_at": START_AT, "end_at": END_AT, "embeds_scaling": EMBEDS_SCALING},
            "optional": {"image": IMAGE_IN, "clip_vision": CLIP_VISION_IN, "embeds": EMBEDS_IN,
                         "layer_weights": LAYER_WEIGHTS, "weight_composition": WEIGHT_COMPOSITION,
                         "attn_mask": ATTN_MASK, "weight_schedule": WEIGHT_SCHEDULE,
                         "schedule_values": SCHEDULE_VALUES, "unfold_batch": UNFOLD_BATCH,
                         "frame_weights": FRAME_WEIGHTS, "compatibility": COMPATIBILITY,
                         "precise_boost": PRECISE_BOOST, "uncond_term": UNCOND_TERM},
        }

    @reports(DISPLAY_NAME)
    def run(self, model: Any, ipadapter: LoadedAdapter, weight: float, weight_type: str, start_at: float,
            end_at: float, embeds_scaling: str, image: torch.Tensor | None = None, clip_vision: Any = None,
            embeds: ImageTokens | None = None, layer_weights: str = "", weight_composition: float = 1.0,
            attn_mask: torch.Tensor | None = None, weight_schedule: str = "constant", schedule_values: str = "",
            unfold_batch: bool = False, frame_weights: str = "", compatibility: str = "this pack",
            precise_boost: float = 1.0, uncond_term: bool = True):
        where = self.DISPLAY_NAME
        plan = plan_for(model, ipadapter, where=where, weight=weight, start_at=start_at, end_at=end_at,
                        weight_type=weight_type, embeds_scaling=embeds_scaling, layer_weights=layer_weights,
                        weight_composition=weight_composition, attn_mask=attn_mask, weight_schedule=weight_schedule,
                        schedule_values=schedule_values, unfold_batch=unfold_batch, frame_weights=frame_weights,
                        compatibility=compatibility, precise_boost=precise_boost, uncond_term=uncond_term)
        tokens = image_tokens(ipadapter, image, clip_vision, embeds, where=where, uncond=plan.encode_uncond)
        return (install(model, ipadapter, tokens, plan, where=where),)
