"""IPA_Apply, IPA_ApplySimple, IPA_ApplyAdvanced: a clone of the MODEL with the image term on every cross-attention
site."""
from __future__ import annotations

from typing import Any

import torch

from ..ip_adapter_core.attention import check_scaling
from ..ip_adapter_core.compat import check_model, check_range
from ..ip_adapter_core.embeds import ImageTokens
from ..ip_adapter_core.errors import InputError
from ..ip_adapter_core.frames import parse_frame_weights
from ..ip_adapter_core.masks import prepare_mask
from ..ip_adapter_core.schedule import make_schedule
from ..ip_adapter_core.weighting import check_weight_type, parse_layer_weights, site_weights, swapped_sites
from .common import (ADAPTER_IN, ATTN_MASK, CATEGORY, CLIP_VISION_IN, COMPATIBILITY, COMPATIBILITY_MODES, EMBEDS_IN,
                     EMBEDS_SCALING, END_AT, FRAME_WEIGHTS, IMAGE_IN, LAYER_WEIGHTS, MODEL_IN, SCHEDULE_VALUES, START_AT,
                     PRECISE_BOOST, UNFOLD_BATCH, WEIGHT, WEIGHT_COMPOSITION, WEIGHT_SCHEDULE, WEIGHT_TYPE, reports)
from .encode import encode
from .patch.attn2 import AdapterRun, install
from .patch.host import LoadedAdapter, model_context_dim, model_sites, percent_to_sigma


def apply_adapter(model: Any, adapter: LoadedAdapter, tokens: ImageTokens, *, weight: float, start_at: float,
                  end_at: float, where: str, weight_type: str = "linear", embeds_scaling: str = "V only",
                  layer_weights: str = "", weight_composition: float = 1.0,
                  attn_mask: torch.Tensor | None = None, weight_schedule: str = "constant",
                  schedule_values: str = "", unfold_batch: bool = False, frame_weights: str = "",
                  compatibility: str = "this pack", precise_boost: float = 1.0) -> Any:
    """Check everything cheap first, then return a patched clone of ``model`` (the input is never changed).

    weight_type / layer_weights / weight_composition become one weight per site and embeds_scaling a K'/V' scaling
    (ip_adapter_core.weighting, ip_adapter_core.attention.scale_kv); both are folded into the per-site K'/V' cache.
    The defaults give ``weight`` on every site with "V only", i.e. IPA Apply. attn_mask: a MASK (any size, values
    clamped to 0..1) that multiplies the image term per query position (ip_adapter_core.masks). weight_schedule /
    schedule_values: a per-step factor over start_at..end_at (ip_adapter_core.schedule); "constant" = none.
    unfold_batch: image i drives latent i; frame_weights: per-latent factors on the weight (ip_adapter_core.frames).
    precise_boost: the precise types' factor on the layers they work against (ip_adapter_core.weighting).
    compatibility "ComfyUI_IPAdapter_plus": the middle-block sites get no term, as with the old pack on current
    ComfyUI. Sites whose weight is 0 (on every frame) get no patch at all; the others keep their checkpoint layer.
    """
    mask = None if attn_mask is None else prepare_mask(attn_mask, where=where)
    schedule = make_schedule(weight_schedule, schedule_values)
    frame_factors = parse_frame_weights(frame_weights)
    check_compatibility(compatibility)
    check_range(start_at, end_at, where=where)
    check_scaling(embeds_scaling)
    check_weight_type(weight_type)
    sites = model_sites(model)
    check_model(adapter.spec, sites, model_context_dim(model), adapter_name=adapter.name, where=f"{where}, input 'model'")
    tokens.check_fits(adapter.spec, adapter.adapter_id, adapter.name, where=f"{where}, input 'embeds'")
    factors = parse_layer_weights(layer_weights, sites)
    weights = site_weights(weight_type, sites, weight=weight, weight_composition=weight_composition,
                           layer_weights=factors, precise_boost=precise_boost)
    if compatibility == "ComfyUI_IPAdapter_plus":
        weights = tuple(0.0 if s.block == "middle" else w for s, w in zip(sites, weights))
    run = AdapterRun(adapter, tokens, weight=weight, sigma_start=percent_to_sigma(model, start_at),
                     sigma_end=percent_to_sigma(model, end_at), full_range=start_at <= 0.0 and end_at >= 1.0,
                     site_weights=weights, scaling=embeds_scaling, swap_sites=swapped_sites(weight_type, sites),
                     mask=mask, schedule=schedule, start_at=start_at, end_at=end_at, unfold=unfold_batch,
                     frame_weights=frame_factors)
    # Weight 0 makes K' or V' (every scaling mode, swapped or not) zero, so the term is exactly 0: no patch there.
    silent = frame_factors is not None and all(f == 0 for f in frame_factors)
    return install(model, run, [(i, s.key) for i, s in enumerate(sites) if weights[i] != 0 and not silent])


def check_compatibility(compatibility: str) -> None:
    """InputError unless ``compatibility`` is one of COMPATIBILITY_MODES."""
    if compatibility not in COMPATIBILITY_MODES:
        raise InputError(f"input 'compatibility': unknown mode {compatibility!r}; expected one of "
                         f"{', '.join(repr(m) for m in COMPATIBILITY_MODES)}.")


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
        if attn_mask is not None:
            prepare_mask(attn_mask, where=where)  # a bad mask fails before the image is encoded
        tokens = image_tokens(ipadapter, image, clip_vision, embeds, start_at, end_at, where=where)
        return (apply_adapter(model, ipadapter, tokens, weight=weight, start_at=start_at, end_at=end_at, where=where,
                              attn_mask=attn_mask),)


def image_tokens(ipadapter: LoadedAdapter, image: torch.Tensor | None, clip_vision: Any, embeds: ImageTokens | None,
                 start_at: float, end_at: float, *, where: str, uncond: str = "reference") -> ImageTokens:
    """The tokens of an apply node's optional image / clip_vision / embeds inputs (cheap checks before encoding);
    ``uncond``: the uncond mode when the image is encoded here (nodes/encode.py)."""
    if (image is None) == (embeds is None):
        raise InputError(f"{where}: connect exactly one of 'image' (with 'clip_vision') or 'embeds'; "
                         f"got {'both' if embeds is not None else 'neither'}.")
    check_range(start_at, end_at, where=where)
    return embeds if embeds is not None else encode(ipadapter, clip_vision, image, where=where, uncond=uncond)


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
        check_range(start_at, end_at, where=where)
        tokens = encode(ipadapter, clip_vision, image, where=where)
        return (apply_adapter(model, ipadapter, tokens, weight=weight, start_at=start_at, end_at=end_at, where=where),)


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
                         "precise_boost": PRECISE_BOOST},
        }

    @reports(DISPLAY_NAME)
    def run(self, model: Any, ipadapter: LoadedAdapter, weight: float, weight_type: str, start_at: float,
            end_at: float, embeds_scaling: str, image: torch.Tensor | None = None, clip_vision: Any = None,
            embeds: ImageTokens | None = None, layer_weights: str = "", weight_composition: float = 1.0,
            attn_mask: torch.Tensor | None = None, weight_schedule: str = "constant", schedule_values: str = "",
            unfold_batch: bool = False, frame_weights: str = "", compatibility: str = "this pack",
            precise_boost: float = 1.0):
        where = self.DISPLAY_NAME
        if attn_mask is not None:
            prepare_mask(attn_mask, where=where)
        make_schedule(weight_schedule, schedule_values)
        check_scaling(embeds_scaling)  # bad text fails before the image is encoded
        check_weight_type(weight_type)
        parse_layer_weights(layer_weights, model_sites(model))
        parse_frame_weights(frame_weights)
        check_compatibility(compatibility)
        uncond = "black image" if compatibility == "ComfyUI_IPAdapter_plus" else "reference"
        tokens = image_tokens(ipadapter, image, clip_vision, embeds, start_at, end_at, where=where, uncond=uncond)
        return (apply_adapter(model, ipadapter, tokens, weight=weight, start_at=start_at, end_at=end_at, where=where,
                              weight_type=weight_type, embeds_scaling=embeds_scaling, layer_weights=layer_weights,
                              weight_composition=weight_composition, attn_mask=attn_mask,
                              weight_schedule=weight_schedule, schedule_values=schedule_values,
                              unfold_batch=unfold_batch, frame_weights=frame_weights,
                              compatibility=compatibility, precise_boost=precise_boost),)
