"""IPA_Encode: reference images -> image tokens for one adapter (encode once, apply many times)."""
from __future__ import annotations

from typing import Any

import torch

from ..ip_adapter_core.embeds import UNCOND_MODES
from .common import ADAPTER_IN, CATEGORY, CLIP_VISION_IN, EMBEDS, IMAGE_IN, reports
from .patch.encoder import encode
from .patch.host import LoadedAdapter


class IPAEncode:
    DISPLAY_NAME = "IPA Encode Image"
    CATEGORY = CATEGORY
    RETURN_TYPES = (EMBEDS,)
    RETURN_NAMES = ("embeds",)
    OUTPUT_TOOLTIPS = ("Image tokens (and their uncond tokens) for this adapter; feed them to 'IPA Apply'.",)
    FUNCTION = "run"
    DESCRIPTION = ("Encodes reference images with CLIP vision and the adapter's projection, once, so several "
                   "'IPA Apply' nodes can reuse the result.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ipadapter": ADAPTER_IN, "clip_vision": CLIP_VISION_IN, "image": IMAGE_IN},
                "optional": {
                    "encode_batch_size": ("INT", {
                        "default": 0, "min": 0, "max": 4096,
                        "tooltip": "Encode this many images at a time (0 = the whole batch in one pass). Lower it "
                                   "for long image batches that would not fit in memory at once."}),
                    "uncond": (list(UNCOND_MODES), {
                        "default": "reference",
                        "tooltip": "The negative image prompt used with the negative text. 'reference' = as the "
                                   "adapter was trained (zero embedding for base adapters, an all-zero normalised "
                                   "image for plus / full face). 'black image' = the older IPAdapter nodes' choice "
                                   "(a black picture; the same as 'reference' for base adapters). Ignored when "
                                   "negative_image is connected."}),
                    "negative_image": ("IMAGE", {
                        "tooltip": "Optional image(s) whose tokens become the negative image prompt (averaged over "
                                   "the batch): what not to see, or noise from 'IPA Noise Image'."})}}

    @reports(DISPLAY_NAME)
    def run(self, ipadapter: LoadedAdapter, clip_vision: Any, image: torch.Tensor, encode_batch_size: int = 0,
            uncond: str = "reference", negative_image: torch.Tensor | None = None):
        return (encode(ipadapter, clip_vision, image, where=self.DISPLAY_NAME, batch_size=encode_batch_size,
                       uncond=uncond, negative_image=negative_image),)
