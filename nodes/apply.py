"""IPA_Apply and IPA_ApplySimple: a clone of the MODEL with the image term on every cross-attention site."""
from __future__ import annotations

from typing import Any

import torch

from ..ip_adapter_core.compat import check_model, check_range
from ..ip_adapter_core.embeds import ImageTokens
from ..ip_adapter_core.errors import InputError
from .common import (ADAPTER_IN, CATEGORY, CLIP_VISION_IN, EMBEDS_IN, END_AT, IMAGE_IN, MODEL_IN, START_AT, WEIGHT,
                     reports)
from .encode import encode
from .patch.attn2 import AdapterRun, install
from .patch.host import LoadedAdapter, model_context_dim, model_sites, percent_to_sigma


def apply_adapter(model: Any, adapter: LoadedAdapter, tokens: ImageTokens, *, weight: float, start_at: float,
                  end_at: float, where: str) -> Any:
    """Check everything cheap first, then return a patched clone of ``model`` (the input is never changed)."""
    check_range(start_at, end_at, where=where)
    sites = model_sites(model)
    check_model(adapter.spec, sites, model_context_dim(model), adapter_name=adapter.name, where=f"{where}, input 'model'")
    tokens.check_fits(adapter.spec, adapter.adapter_id, adapter.name, where=f"{where}, input 'embeds'")
    run = AdapterRun(adapter, tokens, weight=weight, sigma_start=percent_to_sigma(model, start_at),
                     sigma_end=percent_to_sigma(model, end_at), full_range=start_at <= 0.0 and end_at >= 1.0)
    return install(model, run, [s.key for s in sites])


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
            "optional": {"image": IMAGE_IN, "clip_vision": CLIP_VISION_IN, "embeds": EMBEDS_IN},
        }

    @reports(DISPLAY_NAME)
    def run(self, model: Any, ipadapter: LoadedAdapter, weight: float, start_at: float, end_at: float,
            image: torch.Tensor | None = None, clip_vision: Any = None, embeds: ImageTokens | None = None):
        where = self.DISPLAY_NAME
        if (image is None) == (embeds is None):
            raise InputError(f"{where}: connect exactly one of 'image' (with 'clip_vision') or 'embeds'; "
                             f"got {'both' if embeds is not None else 'neither'}.")
        check_range(start_at, end_at, where=where)
        tokens = embeds if embeds is not None else encode(ipadapter, clip_vision, image, where=where)
        return (apply_adapter(model, ipadapter, tokens, weight=weight, start_at=start_at, end_at=end_at, where=where),)


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
