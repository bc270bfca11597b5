"""IPA_CombineEmbeds: several reference images' tokens -> one image prompt (concat, add, average, ...)."""
from __future__ import annotations

import dataclasses

from ..ip_adapter_core.combine import COMBINE_METHODS, combine_tokens, parse_weights
from ..ip_adapter_core.embeds import ImageTokens, check_combinable
from .common import CATEGORY, EMBEDS, EMBEDS_IN, reports


class IPACombineEmbeds:
    DISPLAY_NAME = "IPA Combine Embeds"
    CATEGORY = CATEGORY
    RETURN_TYPES = (EMBEDS,)
    RETURN_NAMES = ("embeds",)
    OUTPUT_TOOLTIPS = ("The combined image tokens, for the same adapter; feed them to 'IPA Apply'.",)
    FUNCTION = "run"
    DESCRIPTION = ("Combines the tokens of several reference images (an image batch encoded by 'IPA Encode Image'): "
                   "concat keeps every image's tokens in one attention; add, subtract, average, norm average, max "
                   "and min merge them into one image's tokens, optionally weighted per image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
                    "embeds": EMBEDS_IN,
                    "method": (list(COMBINE_METHODS), {
                        "default": "concat",
                        "tooltip": "concat = every image's tokens share one attention (same as not combining); "
                                   "add = sum; subtract = first minus the mean of the others; average = weighted "
                                   "mean; norm average = mean direction at the mean length; max / min = "
                                   "element-wise. All act on the projected tokens."})},
                "optional": {
                    "image_weights": ("STRING", {
                        "default": "", "multiline": False,
                        "tooltip": "One weight per image, in batch order: '1.0, 0.5'. Missing values repeat the "
                                   "last one; empty = all 1. Multiplies each image's tokens before add / subtract "
                                   "/ average / norm average / max / min. Not allowed with concat."})}}

    @reports(DISPLAY_NAME)
    def run(self, embeds: ImageTokens, method: str, image_weights: str = ""):
        check_combinable(embeds, where=self.DISPLAY_NAME)  # InstantX SD3.5: features, projected at every step
        where = f"{self.DISPLAY_NAME}, input 'image_weights'"
        weights = parse_weights(image_weights, embeds.cond.shape[0], where=where)
        cond = combine_tokens(embeds.cond, method, weights, where=self.DISPLAY_NAME)
        return (dataclasses.replace(embeds, cond=cond),)
