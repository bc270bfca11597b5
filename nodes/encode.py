"""IPA_Encode: reference images -> image tokens for one adapter (encode once, apply many times)."""
from __future__ import annotations

from typing import Any

import torch

from ..ip_adapter_core.compat import check_encoder, prepare_images
from ..ip_adapter_core.embeds import ImageTokens
from ..ip_adapter_core.errors import InputError
from .common import ADAPTER_IN, CATEGORY, CLIP_VISION_IN, EMBEDS, IMAGE_IN, reports
from .patch.host import LoadedAdapter, clip_vision_dims, encode_images, encode_zero_pixels, projection_device


def encode(adapter: LoadedAdapter, clip_vision: Any, image: torch.Tensor, *, where: str, batch_size: int = 0) -> ImageTokens:
    """Encode ``image`` with ``clip_vision`` and project it with ``adapter``, in one batched pass or in chunks of
    ``batch_size`` images (0 = all at once); the uncond tokens follow the reference (projection of a zero embedding
    for base adapters, of the encoder run on an all-zero normalised image for plus / full face) and are computed
    once per adapter and encoder."""
    spec = adapter.spec
    if clip_vision is None:
        raise InputError(f"{where}: input 'clip_vision' is missing; an image needs a CLIP vision encoder "
                         f"(this adapter needs {spec.encoder_name}).")
    images = prepare_images(image, where=f"{where}, input 'image'")
    dims = clip_vision_dims(clip_vision)
    check_encoder(spec, hidden=dims.hidden, projection=dims.projection, adapter_name=adapter.name,
                  where=f"{where}, input 'clip_vision'")
    device = projection_device(adapter)
    chunks = images.split(batch_size) if batch_size > 0 else (images,)
    cond = torch.cat([adapter.model.project(encode_images(clip_vision, c, spec.encoder_input).to(device)).float().cpu()
                      for c in chunks])
    return ImageTokens(cond=cond, uncond=uncond_tokens(adapter, clip_vision, device), spec=spec,
                       adapter_id=adapter.adapter_id, adapter_name=adapter.name)


def uncond_tokens(adapter: LoadedAdapter, clip_vision: Any, device: torch.device) -> torch.Tensor:
    """The reference uncond tokens (1, T, C), cached on the adapter (per encoder for plus / full face)."""
    if adapter.spec.encoder_input == "image_embeds":
        if adapter.base_uncond is None:
            zeros = torch.zeros(1, adapter.spec.encoder_dim, device=device)
            adapter.base_uncond = adapter.model.project(zeros).float().cpu()
        return adapter.base_uncond
    hit = adapter.uncond_cache.get(clip_vision)
    if hit is None:
        hit = adapter.model.project(encode_zero_pixels(clip_vision).to(device)).float().cpu()
        adapter.uncond_cache[clip_vision] = hit
    return hit


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
                "optional": {"encode_batch_size": ("INT", {
                    "default": 0, "min": 0, "max": 4096,
                    "tooltip": "Encode this many images at a time (0 = the whole batch in one pass). Lower it for "
                               "long image batches that would not fit in memory at once."})}}

    @reports(DISPLAY_NAME)
    def run(self, ipadapter: LoadedAdapter, clip_vision: Any, image: torch.Tensor, encode_batch_size: int = 0):
        return (encode(ipadapter, clip_vision, image, where=self.DISPLAY_NAME, batch_size=encode_batch_size),)
