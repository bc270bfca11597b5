"""IPA_PrepImage: crop or pad a reference image to the CLIP vision encoder's square input, optionally sharpened."""
from __future__ import annotations

from typing import Any

import torch

from ..ip_adapter_core.prep import CROPS, prep_image
from .common import CATEGORY, INTERPOLATION, SHARPENING, reports
from .patch.host import clip_vision_dims

class IPAPrepImage:
    DISPLAY_NAME = "IPA Prep Image"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("Square reference image(s) at the encoder's size; connect to 'image' of 'IPA Encode Image' "
                       "or an IPA Apply node.",)
    FUNCTION = "run"
    DESCRIPTION = ("Prepares reference images for CLIP vision: chooses which square part is kept (or pads the whole "
                   "image to a square), the resize filter and optional sharpening. Without it the encoder "
                   "centre-crops, which cuts off the sides of non-square images.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
                    "image": ("IMAGE", {"tooltip": "Reference image(s), any size. Alpha is dropped and gray images "
                                                   "are expanded to RGB."}),
                    "crop": (list(CROPS), {
                        "default": "center",
                        "tooltip": "Which square is kept after the short side is resized to the encoder size: "
                                   "center (what CLIP does by itself), top, bottom, left or right. 'pad' keeps the "
                                   "whole image by adding neutral grey bars (CLIP's mean colour, which the encoder "
                                   "reads as 'nothing') to make it square."}),
                    "interpolation": INTERPOLATION,
                    "sharpening": SHARPENING},
                "optional": {
                    "clip_vision": ("CLIP_VISION", {
                        "tooltip": "Optional: the CLIP vision encoder you will encode with; the output size is then "
                                   "its input size (224, or 336 for Kolors) and 'size' is ignored."}),
                    "size": ("INT", {
                        "default": 224, "min": 16, "max": 2048, "step": 1,
                        "tooltip": "Output width and height in pixels when no clip_vision is connected "
                                   "(224 for the usual ViT-H / ViT-bigG encoders, 336 for Kolors)."})}}

    @reports(DISPLAY_NAME)
    def run(self, image: torch.Tensor, crop: str, interpolation: str, sharpening: float,
            clip_vision: Any = None, size: int = 224):
        if clip_vision is not None:
            size = clip_vision_dims(clip_vision).image_size
        return (prep_image(image, size=size, crop=crop, interpolation=interpolation, sharpening=sharpening,
                           where=self.DISPLAY_NAME),)
