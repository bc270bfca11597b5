"""Shared input definitions and error reporting for the node classes."""
from __future__ import annotations

import functools
from typing import Callable

from ..ip_adapter_core.attention import EMBEDS_SCALINGS
from ..ip_adapter_core.errors import IPAdapterError
from ..ip_adapter_core.plan import COMPATIBILITY_MODES
from ..ip_adapter_core.prep import INTERPOLATIONS
from ..ip_adapter_core.schedule import SCHEDULES
from ..ip_adapter_core.weighting import WEIGHT_TYPES

CATEGORY = "ip-adapter"
ADAPTER = "IPA_ADAPTER"
EMBEDS = "IPA_EMBEDS"

WEIGHT = ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                    "tooltip": "Strength of the image prompt. 0 = no effect, 1 = as trained; negative pushes away from the image."})
START_AT = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                      "tooltip": "Fraction of the sampling schedule where the image prompt starts (0 = first step). "
                                 "Converted to a sigma the way ComfyUI converts ControlNet percents."})
END_AT = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                    "tooltip": "Fraction of the sampling schedule where the image prompt stops (1 = last step)."})
MODEL_IN = ("MODEL", {"tooltip": "The diffusion model (SD1.5 or SDXL family) to add the image prompt to. It is cloned, never changed."})
ADAPTER_IN = (ADAPTER, {"tooltip": "An IP-Adapter from 'IPA Load Adapter'."})
CLIP_VISION_IN = ("CLIP_VISION", {"tooltip": "The CLIP vision encoder the adapter was trained with (from the core 'Load CLIP Vision' node); "
                                             "the adapter's help page lists which one."})
IMAGE_IN = ("IMAGE", {"tooltip": "Reference image(s). Several images are used together (their tokens share one attention). "
                                 "Alpha is dropped and gray images are expanded to RGB."})
EMBEDS_IN = (EMBEDS, {"tooltip": "Image tokens from 'IPA Encode Image', made with the same adapter."})
WEIGHT_TYPE = (list(WEIGHT_TYPES), {
    "default": "linear",
    "tooltip": "How the weight is spread over the model's layers: 'linear' = the same everywhere (IPA Apply); "
               "ease curves and weak/strong block types scale it per layer; 'style transfer' / 'composition' "
               "use only the style / layout layers; the 'precise' types also push the other layers away from the "
               "image. The help page has the full table."})
EMBEDS_SCALING = (list(EMBEDS_SCALINGS), {
    "default": "V only",
    "tooltip": "Where the weight goes inside the image attention. 'V only' = the official scale (IPA Apply); "
               "'K+V' also sharpens/flattens the attention; 'w/ C penalty' weakens narrow layers (x C/1280); "
               "'K+mean(V) w/ C penalty' scales only the mean of the values, which keeps weights > 1 from burning."})
LAYER_WEIGHTS = ("STRING", {
    "default": "", "multiline": True,
    "tooltip": "Optional per-layer weights, replacing the weight type's curve (the precise types' swap still "
               "applies): 'target:value' entries separated by commas or lines. target = SpatialTransformer index "
               "('3:1.0, 6:0.5', numbered like the incumbent's Mad Scientist node), checkpoint layer ('N29:0.5') "
               "or site key ('output.1.3:0.8', 'output.1:0.8'); or a plain list, one value per SpatialTransformer (per "
               "block on Flux: 19 values). Unlisted layers get 0; values are multiplied by weight. Empty = use "
               "weight_type."})
WEIGHT_COMPOSITION = ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                                "tooltip": "Weight of the composition (layout) layers for weight_type 'style and "
                                           "composition'; ignored by every other type."})

ATTN_MASK = ("MASK", {"tooltip": "Optional: where the image prompt acts. White (1) = full strength, black (0) = none, "
                                 "grays in between; the text prompt is not masked. Any size: it is stretched to the "
                                 "latent (same aspect ratio recommended). A batch of masks is used one per latent when "
                                 "its size equals the latent batch, otherwise the first mask is used for every latent."})

WEIGHT_SCHEDULE = (list(SCHEDULES), {
    "default": "constant",
    "tooltip": "How the weight changes from step to step over start_at..end_at: 'constant' = the same every step; "
               "'linear in' / 'ease in' fade in from 0 to full, 'linear out' / 'ease out' fade out from full to 0, "
               "'ease in-out' rises to full halfway and falls back to 0; 'custom' uses schedule_values. Progress is "
               "counted in steps. The help page has the exact curves."})
SCHEDULE_VALUES = ("STRING", {
    "default": "",
    "tooltip": "For weight_schedule 'custom' only: factors from the first to the last step of start_at..end_at, "
               "separated by commas, e.g. '1, 0.8, 0.2'; spread evenly over the steps and linearly interpolated, "
               "then multiplied by weight. Ignored by the other schedules."})

UNFOLD_BATCH = ("BOOLEAN", {
    "default": False,
    "tooltip": "For batches and animation: image i of the reference batch drives latent i (frame i) only; with "
               "fewer images than latents the last image is repeated, extra images are ignored. Off = every "
               "reference image is used together on every latent. AnimateDiff context windows pick their frames."})
FRAME_WEIGHTS = ("STRING", {
    "default": "", "multiline": True,
    "tooltip": "Optional per-latent (per-frame) factors on the weight, separated by commas, spaces or lines, e.g. "
               "'1, 0.5, 0': latent i uses entry i, later latents the last entry; 0 = that frame is left exactly "
               "as without the adapter. Works with unfold_batch on or off. Empty = 1 for every frame."})
COMPATIBILITY = (list(COMPATIBILITY_MODES), {
    "default": "this pack",
    "tooltip": "'this pack' = the reference implementation. 'ComfyUI_IPAdapter_plus' = reproduce the old "
               "IPAdapter_plus nodes for workflows migrated from them: no image prompt on the middle block (the old "
               "pack's middle-block patch never ran on current ComfyUI) and, when this node encodes the image "
               "itself, a black image as the negative image prompt."})
# IPA Prep Image's and IPA Apply (tiled)'s (which resizes its tiles with the same prep_image)
INTERPOLATION = (list(INTERPOLATIONS), {
    "default": "bicubic",
    "tooltip": "Resize filter. bicubic = what CLIP vision preprocessing uses; lanczos = sharper; bilinear = softer; "
               "area = box average; nearest = no filtering."})
SHARPENING = ("FLOAT", {
    "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
    "tooltip": "Unsharp mask after resizing: 0 = off, 1 = strongest. Helps details that downscaling blurs away."})


UNCOND_TERM = ("BOOLEAN", {
    "default": True,
    "tooltip": "Add the image prompt to the negative (uncond) pass too, with the adapter's negative image prompt "
               "(the reference behaviour). Off: the negative pass runs without the adapter, which strengthens the "
               "image prompt when cfg > 1 (XLabs' choice for Flux). No effect at cfg 1 (no negative pass)."})
PRECISE_BOOST = ("FLOAT", {
    "default": 1.0, "min": -5.0, "max": 5.0, "step": 0.05,
    "tooltip": "For the 'precise' weight types only, a factor on weight for the layers they work against: the "
               "composition layers of 'style transfer precise' (stronger = follow the reference's layout less), every "
               "layer but the composition ones of 'composition precise'. 1 = weight (default). The older nodes' "
               "style_boost / composition_boost B equals precise_boost = B / weight. Ignored by the other types."})


def reports(node_name: str) -> Callable:
    """Prefix every IPAdapterError raised inside a node function with the node's display name."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except IPAdapterError as e:
                msg = str(e)
                if msg.startswith(node_name):
                    raise
                raise type(e)(f"{node_name}: {msg}") from None

        return run

    return wrap
