"""IPA_Encode: reference images -> image tokens for one adapter (encode once, apply many times)."""
from __future__ import annotations

from typing import Any

import torch

from ..ip_adapter_core.compat import check_encoder, prepare_images
from ..ip_adapter_core.embeds import ImageTokens
from ..ip_adapter_core.errors import InputError
from .common import ADAPTER_IN, CATEGORY, CLIP_VISION_IN, EMBEDS, IMAGE_IN, reports
from .patch.host import LoadedAdapter, clip_vision_dims, encode_images, encode_zero_pixels, projection_device


UNCOND_MODES = ("reference", "black image")


def encode(adapter: LoadedAdapter, clip_vision: Any, image: torch.Tensor, *, where: str, batch_size: int = 0,
           uncond: str = "reference", negative_image: torch.Tensor | None = None) -> ImageTokens:
    """Encode ``image`` with ``clip_vision`` and project it with ``adapter``, in one batched pass or in chunks of
    ``batch_size`` images (0 = all at once).

    The uncond tokens: ``negative_image`` given -> its tokens averaged over its batch (overrides ``uncond``);
    ``uncond`` "reference" -> the training's (projection of a zero embedding for base adapters, of the encoder run
    on an all-zero normalised image for plus / full face), computed once per adapter and encoder;
    "black image" -> the incumbent's: a black IMAGE through ComfyUI's CLIP preprocessing for plus / full face, and
    (as the incumbent does) the zero embedding for base adapters, where it equals "reference".
    """
    spec = adapter.spec
    if uncond not in UNCOND_MODES:
        raise InputError(f"{where}: unknown uncond '{uncond}'; expected one of {', '.join(UNCOND_MODES)}.")
    if clip_vision is None:
        raise InputError(f"{where}: input 'clip_vision' is missing; an image needs a CLIP vision encoder "
                         f"(this adapter needs {spec.encoder_name}).")
    images = prepare_images(image, where=f"{where}, input 'image'")
    negatives = None if negative_image is None else prepare_images(negative_image,
                                                                   where=f"{where}, input 'negative_image'")
    dims = clip_vision_dims(clip_vision)
    check_encoder(spec, hidden=dims.hidden, projection=dims.projection, adapter_name=adapter.name,
                  where=f"{where}, input 'clip_vision'")
    device = projection_device(adapter)
    cond = project_images(adapter, clip_vision, images, batch_size, device)
    if negatives is not None:
        negative = project_images(adapter, clip_vision, negatives, batch_size, device).mean(0, keepdim=True)
    elif uncond == "black image" and spec.encoder_input != "image_embeds":
        black = torch.zeros(1, dims.image_size, dims.image_size, 3)
        negative = project_images(adapter, clip_vision, black, 0, device)
    else:
        negative = uncond_tokens(adapter, clip_vision, device)
    return ImageTokens(cond=cond, uncond=negative, spec=spec, adapter_id=adapter.adapter_id,
                       adapter_name=adapter.name)


def project_images(adapter: LoadedAdapter, clip_vision: Any, images: torch.Tensor, batch_size: int,
                   device: torch.device) -> torch.Tensor:
    """images: (B, H, W, 3) -> tokens (B, T, C) float32 on the CPU, encoded in chunks of ``batch_size`` (0 = all)."""
    chunks = images.split(batch_size) if batch_size > 0 else (images,)
    return torch.cat([adapter.model.project(encode_images(clip_vision, c, adapter.spec.encoder_input).to(device))
                      .float().cpu() for c in chunks])


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
