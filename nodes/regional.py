"""IPA_RegionalApply: up to four (image, mask, weight) regions on one model, and their masked text prompts."""
from __future__ import annotations

from typing import Any

import node_helpers
import torch

from ..ip_adapter_core.regions import connected_regions
from .common import ADAPTER_IN, CATEGORY, CLIP_VISION_IN, END_AT, MODEL_IN, START_AT, reports
from .patch.encoder import encode
from .patch.host import LoadedAdapter
from .patch.install import install, plan_for

REGIONS = 4


def _image(i: int):
    return ("IMAGE", {"tooltip": f"Reference image(s) of region {i}, used where mask_{i} is white. Several images "
                                 f"are used together. Needs mask_{i}."})


def _mask(i: int):
    return ("MASK", {"tooltip": f"Where region {i} acts: white (1) = full strength, black (0) = none, grays (a "
                                f"feathered edge) in between. Any size: stretched to the latent. Also masks "
                                f"prompt_{i}. Needs image_{i}."})


def _weight(i: int):
    return ("FLOAT", {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05,
                      "tooltip": f"Strength of region {i}'s image prompt. 0 = no effect, negative pushes away."})


def _prompt(i: int):
    return ("CONDITIONING", {"tooltip": f"Optional text prompt of region {i} (a CLIP Text Encode output): masked "
                                        f"with mask_{i} exactly as the core 'Conditioning (Set Mask)' node does, and "
                                        f"added to the output 'positive'."})


POSITIVE = ("CONDITIONING", {"tooltip": "Optional global text prompt: passed through unchanged at the start of the "
                                        "output 'positive', followed by the masked region prompts."})
PROMPT_STRENGTH = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                             "tooltip": "Strength of every region prompt (the 'strength' of 'Conditioning (Set "
                                        "Mask)')."})


class IPARegionalApply:
    DISPLAY_NAME = "IPA Regional Apply"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CONDITIONING")
    RETURN_NAMES = ("model", "positive")
    OUTPUT_TOOLTIPS = ("A copy of the model with every region's image prompt (one adapter shared by all regions).",
                       "'positive' followed by each connected region prompt masked with its region's mask; connect it "
                       "to the sampler's positive. Empty when neither 'positive' nor a prompt_N is connected (then "
                       "leave this output unconnected).")
    FUNCTION = "run"
    DESCRIPTION = ("Several image prompts in one node, each limited to its own region by a mask: up to four "
                   "image/mask/weight sets on one copy of the model, all sharing one loaded adapter. Optional text "
                   "prompts per region are masked the same way (regional conditioning).")

    @classmethod
    def INPUT_TYPES(cls):
        optional = {}
        for i in range(2, REGIONS + 1):
            optional.update({f"image_{i}": _image(i), f"mask_{i}": _mask(i), f"weight_{i}": _weight(i)})
        optional["positive"] = POSITIVE
        optional.update({f"prompt_{i}": _prompt(i) for i in range(1, REGIONS + 1)})
        optional["prompt_strength"] = PROMPT_STRENGTH
        return {
            "required": {"model": MODEL_IN, "ipadapter": ADAPTER_IN, "clip_vision": CLIP_VISION_IN,
                         "image_1": _image(1), "mask_1": _mask(1), "weight_1": _weight(1), "start_at": START_AT,
                         "end_at": END_AT},
            "optional": optional,
        }

    @reports(DISPLAY_NAME)
    def run(self, model: Any, ipadapter: LoadedAdapter, clip_vision: Any, image_1: torch.Tensor, mask_1: torch.Tensor,
            weight_1: float, start_at: float, end_at: float, image_2: torch.Tensor | None = None,
            mask_2: torch.Tensor | None = None, weight_2: float = 1.0, image_3: torch.Tensor | None = None,
            mask_3: torch.Tensor | None = None, weight_3: float = 1.0, image_4: torch.Tensor | None = None,
            mask_4: torch.Tensor | None = None, weight_4: float = 1.0, positive: list | None = None,
            prompt_1: list | None = None, prompt_2: list | None = None, prompt_3: list | None = None,
            prompt_4: list | None = None, prompt_strength: float = 1.0):
        where = self.DISPLAY_NAME
        regions = connected_regions([image_1, image_2, image_3, image_4], [mask_1, mask_2, mask_3, mask_4],
                                    [weight_1, weight_2, weight_3, weight_4], [prompt_1, prompt_2, prompt_3, prompt_4])
        plans = [plan_for(model, ipadapter, where=f"{where} (region {r.index})", weight=r.weight, start_at=start_at,
                          end_at=end_at, attn_mask=r.mask) for r in regions]
        tokens = [encode(ipadapter, clip_vision, r.image, where=f"{where} (image_{r.index})") for r in regions]
        for region, plan, t in zip(regions, plans, tokens):
            model = install(model, ipadapter, t, plan, where=f"{where} (region {region.index})")
        conditioning = list(positive) if positive is not None else []
        for region in regions:
            if region.prompt is not None:
                conditioning += node_helpers.conditioning_set_values(
                    region.prompt, {"mask": region.mask, "set_area_to_bounds": False, "mask_strength": prompt_strength})
        return (model, conditioning)
