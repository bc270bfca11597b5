"""IPA_NoiseImage: a seeded noise image to use as 'negative_image' on 'IPA Encode Image'."""
from __future__ import annotations

import torch

from ..ip_adapter_core.compat import prepare_images
from ..ip_adapter_core.noise import NOISE_TYPES, noise_image
from .common import CATEGORY, reports


class IPANoiseImage:
    DISPLAY_NAME = "IPA Noise Image"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("A noise image (same seed = same image); connect it to 'negative_image' of 'IPA Encode Image'.",)
    FUNCTION = "run"
    DESCRIPTION = ("Makes a seeded noise image, from black or from a reference image, to use as the negative image "
                   "prompt ('negative_image' on 'IPA Encode Image').")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
                    "width": ("INT", {"default": 224, "min": 16, "max": 4096, "step": 8,
                                      "tooltip": "Width in pixels (ignored when 'image' is connected)."}),
                    "height": ("INT", {"default": 224, "min": 16, "max": 4096, "step": 8,
                                       "tooltip": "Height in pixels (ignored when 'image' is connected)."}),
                    "batch": ("INT", {"default": 1, "min": 1, "max": 64,
                                      "tooltip": "Number of images (ignored when 'image' is connected)."}),
                    "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                     "tooltip": "Noise seed: the same seed gives the same image."}),
                    "type": (list(NOISE_TYPES), {
                        "default": "fade",
                        "tooltip": "fade = blend toward uniform noise; dissolve = replace random pixels with noise; "
                                   "gaussian = add normal noise; shuffle = move random pixels of 'image' around "
                                   "(needs 'image')."}),
                    "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                           "tooltip": "How much noise: 0 = the start image unchanged, 1 = all noise "
                                                      "(fade, dissolve, shuffle) or standard deviation 1 (gaussian)."})},
                "optional": {"image": ("IMAGE", {
                    "tooltip": "Optional start image to noise (its size and batch are kept); without it the start "
                               "is black."})}}

    @reports(DISPLAY_NAME)
    def run(self, width: int, height: int, batch: int, seed: int, type: str, strength: float,
            image: torch.Tensor | None = None):
        if image is not None:
            image = prepare_images(image, where=f"{self.DISPLAY_NAME}, input 'image'")
        return (noise_image(noise_type=type, width=width, height=height, batch=batch, seed=seed, strength=strength,
                            image=image, where=self.DISPLAY_NAME),)
