"""IPA_StyleComposition: a style image on the style layers and a composition image on the layout layers, one node."""
from __future__ import annotations

from typing import Any

import torch

from ..ip_adapter_core.regions import style_composition_types
from .common import (ADAPTER_IN, ATTN_MASK, CATEGORY, CLIP_VISION_IN, EMBEDS_SCALING, END_AT, MODEL_IN, START_AT,
                     reports)
from .patch.encoder import encode
from .patch.host import LoadedAdapter
from .patch.install import install, plan_for

IMAGE_STYLE = ("IMAGE", {"tooltip": "The style reference (colours, textures, brush work): used on the style layers "
                                    "only. Several images are used together."})
IMAGE_COMPOSITION = ("IMAGE", {"tooltip": "The composition reference (layout, shapes, pose): used on the layout "
                                          "layers only. Several images are used together."})
WEIGHT_STYLE = ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                          "tooltip": "Strength of the style image. 0 = no style term; negative pushes away."})
WEIGHT_COMPOSITION_IN = ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                                   "tooltip": "Strength of the composition image. 0 = no composition term; "
                                              "negative pushes away."})
EXPAND_STYLE = ("BOOLEAN", {"default": False,
                            "tooltip": "Off: the style image acts on the style layers only. On: on every layer "
                                       "except the composition layers (stronger style, like 'strong style "
                                       "transfer'). The composition image is not affected."})
NEGATIVE_IMAGE = ("IMAGE", {"tooltip": "Optional image(s) whose tokens become the negative image prompt of both "
                                       "images (averaged over the batch), e.g. from 'IPA Noise Image'."})


class IPAStyleComposition:
    DISPLAY_NAME = "IPA Style & Composition"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model with the style and the composition image prompts.",)
    FUNCTION = "run"
    DESCRIPTION = ("Two reference images in one node: the style image on the style layers and the composition image "
                   "on the layout layers (InstantStyle). SDXL and SD1.5. Equals IPA Apply (advanced) with weight type "
                   "'style transfer' (or 'strong style transfer' with expand_style) on the style image, followed by "
                   "one with 'composition' on the composition image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": MODEL_IN, "ipadapter": ADAPTER_IN, "clip_vision": CLIP_VISION_IN,
                         "image_style": IMAGE_STYLE, "image_composition": IMAGE_COMPOSITION,
                         "weight_style": WEIGHT_STYLE, "weight_composition": WEIGHT_COMPOSITION_IN,
                         "expand_style": EXPAND_STYLE, "start_at": START_AT, "end_at": END_AT,
                         "embeds_scaling": EMBEDS_SCALING},
            "optional": {"attn_mask": ATTN_MASK, "negative_image": NEGATIVE_IMAGE},
        }

    @reports(DISPLAY_NAME)
    def run(self, model: Any, ipadapter: LoadedAdapter, clip_vision: Any, image_style: torch.Tensor,
            image_composition: torch.Tensor, weight_style: float, weight_composition: float, expand_style: bool,
            start_at: float, end_at: float, embeds_scaling: str, attn_mask: torch.Tensor | None = None,
            negative_image: torch.Tensor | None = None):
        where = self.DISPLAY_NAME
        style_type, composition_type = style_composition_types(expand_style)
        terms = ((image_style, "image_style", weight_style, style_type),
                 (image_composition, "image_composition", weight_composition, composition_type))
        plans = [plan_for(model, ipadapter, where=f"{where} ({name})", weight=weight, start_at=start_at,
                          end_at=end_at, weight_type=weight_type, embeds_scaling=embeds_scaling, attn_mask=attn_mask)
                 for _, name, weight, weight_type in terms]  # bad inputs fail before any image is encoded
        tokens = [encode(ipadapter, clip_vision, image, where=f"{where} ({name})", negative_image=negative_image)
                  for image, name, _, _ in terms]
        for plan, t, (_, name, _, _) in zip(plans, tokens, terms):
            model = install(model, ipadapter, t, plan, where=f"{where} ({name})")
        return (model,)
