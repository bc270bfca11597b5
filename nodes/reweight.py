"""IPA_Reweight: scale the image prompt of every adapter already applied to a MODEL, without encoding again."""
from __future__ import annotations

from typing import Any

from ..ip_adapter_core.errors import InputError
from .common import CATEGORY, reports
from .patch.install import reweight


class IPAReweight:
    DISPLAY_NAME = "IPA Re-weight Adapters"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model whose IP-Adapter weights are multiplied by 'factor'.",)
    FUNCTION = "run"
    DESCRIPTION = ("Multiplies the weight of every IP-Adapter already applied to the model (by IPA Apply nodes "
                   "upstream) by 'factor', reusing their image tokens: no CLIP vision run, no new apply node.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A model that went through one or more IPA Apply nodes. It is cloned, "
                                           "never changed."}),
            "factor": ("FLOAT", {"default": 1.0, "min": -5.0, "max": 5.0, "step": 0.05,
                                 "tooltip": "Multiplies every adapter's weight (per-layer weights included): "
                                            "1 = unchanged, 0 = no image prompt, 0.5 = half strength."}),
        }}

    @reports(DISPLAY_NAME)
    def run(self, model: Any, factor: float):
        patched, found = reweight(model, factor)
        if not found:
            raise InputError("input 'model': the model carries no IP-Adapter from this pack; connect the MODEL "
                             "output of an IPA Apply node (or a node after it).")
        return (patched,)
