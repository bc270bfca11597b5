"""The encoder stage: IMAGE -> the features a family's projection reads -> ImageTokens, one interface per kind.

A family says what its projection reads (``ip_adapter_core.families.EncoderNeed``: kind, output, width); the stage
registered for that kind in :data:`STAGES` checks the encoder a node was given, runs it, and gives the reference
uncond features. :func:`encode` does the rest for every kind: prepare the images, chunk, project, build the uncond
tokens (reference / black image / negative images) and keep the reference uncond per adapter and encoder, here and
not on the adapter. ``ImageTokens`` is the one payload every apply node consumes. The face kind (FaceID) is
face.py's FaceStage, with the same methods; its encode (face.encode_faces) also returns the aligned face crops.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch

from ...ip_adapter_core import families
from ...ip_adapter_core.compat import check_encoder, prepare_images
from ...ip_adapter_core.embeds import UNCOND_MODES, ImageTokens
from ...ip_adapter_core.enhance import enhanced, merge_tiles, split_grid
from ...ip_adapter_core.errors import InputError, check_choice
from . import blocks
from .host import LoadedAdapter, clip_vision_dims, encode_images, encode_zero_pixels, projection_device, siglip_head


class ClipVisionStage:
    """CLIP_VISION sockets (ComfyUI's ClipVisionModel): image_embeds (B, E) or penultimate states (B, N, E)."""

    kind = "clip_vision"
    socket = "clip_vision"

    def check(self, adapter: LoadedAdapter, encoder: Any, *, where: str) -> None:
        need = families.encoder_need(adapter.spec)
        if need.output not in ("image_embeds", "penultimate", "pooled"):
            raise InputError(f"{where}: '{adapter.name}' ({adapter.spec.describe()}) reads the encoder's "
                             f"'{need.output}' output, which this version does not compute yet.")
        dims = clip_vision_dims(encoder)
        check_encoder(adapter.spec, hidden=dims.hidden, projection=dims.projection, adapter_name=adapter.name,
                      where=f"{where}, input '{self.socket}'")
        if need.output == "pooled":  # SigLIP's pooling head, read from the encoder's file once (host.siglip_head)
            siglip_head(encoder, where=where)

    def image_size(self, encoder: Any) -> int:
        return clip_vision_dims(encoder).image_size

    def features(self, adapter: LoadedAdapter, encoder: Any, images: torch.Tensor) -> torch.Tensor:
        squash = families.encoder_need(adapter.spec).squash  # SigLIP's processor: no centre crop (SD3.5)
        return encode_images(encoder, images, adapter.spec.encoder_input, crop=not squash)

    def black_image(self, adapter: LoadedAdapter, encoder: Any) -> torch.Tensor | None:
        """The IMAGE whose tokens are the "black image" uncond (the old pack's), or None where that equals the
        reference uncond: base adapters read image embeds, and the old pack used the zero embedding for them."""
        if adapter.spec.encoder_input == "image_embeds":
            return None
        size = self.image_size(encoder)
        return torch.zeros(1, size, size, 3)

    def zero_features(self, adapter: LoadedAdapter, encoder: Any) -> tuple[torch.Tensor, bool]:
        """The reference uncond's features and whether they depend on the encoder: the zero embedding for base
        adapters (no), the encoder run on an all-zero normalised image for plus / full face (yes); the encoder run on
        a black image (yes) for the families whose reference says so (EncoderNeed.uncond: XLabs Flux); all-zero
        penultimate states (1, N, E), no encoder run (N is the encoder's: yes), for "zero features" (InstantX SD3.5)."""
        if families.encoder_need(adapter.spec).uncond == "zero features":
            from .host import clip_vision_tokens

            return torch.zeros(1, clip_vision_tokens(encoder), adapter.spec.encoder_dim), True
        if families.encoder_need(adapter.spec).uncond == "black image":
            size = self.image_size(encoder)
            return self.features(adapter, encoder, torch.zeros(1, size, size, 3)), True
        if adapter.spec.encoder_input == "image_embeds":
            return torch.zeros(1, adapter.spec.encoder_dim), False
        return encode_zero_pixels(encoder), True


from .face import STAGE as _FACE_STAGE  # noqa: E402  (the face stage imports host.py only)

STAGES: dict[str, Any] = {"clip_vision": ClipVisionStage(), "face": _FACE_STAGE}

# the reference uncond tokens: adapter -> tokens (encoder-independent) / adapter -> {encoder: tokens}
_base_uncond: "weakref.WeakKeyDictionary[LoadedAdapter, torch.Tensor]" = weakref.WeakKeyDictionary()
_encoder_uncond: "weakref.WeakKeyDictionary[LoadedAdapter, weakref.WeakKeyDictionary]" = weakref.WeakKeyDictionary()


def stage_for(adapter: LoadedAdapter, *, where: str):
    kind = families.encoder_need(adapter.spec).kind
    stage = STAGES.get(kind)
    if stage is None:
        raise InputError(f"{where}: '{adapter.name}' ({adapter.spec.describe()}) reads a '{kind}' encoder, which this "
                         f"version does not provide.")
    return stage


def check(adapter: LoadedAdapter, encoder: Any, *, where: str):
    """The stage of ``adapter``'s family, with ``encoder`` checked against it (present, the right widths)."""
    if families.family_of(adapter.spec).patch_path == "blocks":
        blocks.check_family(adapter, where=where)  # e.g. SD3.5: recognised, not applicable yet
    stage = stage_for(adapter, where=where)
    if encoder is None and stage.kind == "clip_vision":
        raise InputError(f"{where}: input '{stage.socket}' is missing; an image needs a CLIP vision encoder "
                         f"(this adapter needs {adapter.spec.encoder_name}).")
    stage.check(adapter, encoder, where=where)
    return stage


def encode(adapter: LoadedAdapter, encoder: Any, image: torch.Tensor, *, where: str, batch_size: int = 0,
           uncond: str = "reference", negative_image: torch.Tensor | None = None,
           enhance: tuple[int, float] | None = None) -> ImageTokens:
    """Encode ``image`` with ``encoder`` and project it with ``adapter``, in one batched pass or in chunks of
    ``batch_size`` images (0 = all at once).

    The uncond tokens: ``negative_image`` given -> its tokens averaged over its batch (overrides ``uncond``);
    ``uncond`` "reference" -> the training's (the projection of the stage's zero features), computed once per
    adapter (and encoder, where they depend on it); "black image" -> the incumbent's: a black IMAGE through the
    encoder's preprocessing where the features depend on the image's pixels, and (as the incumbent does) the zero
    embedding for base adapters, where it equals "reference". ``enhance`` = (tiles, ratio): the served old
    ClipVision Enhancer's tiled features for the images (ip_adapter_core.enhance; CLIP vision adapters only).
    """
    check_choice(uncond, UNCOND_MODES, input_name="uncond", what="mode", where=where)
    stage = check(adapter, encoder, where=where)
    images = prepare_images(image, where=f"{where}, input 'image'")
    negatives = None if negative_image is None else prepare_images(negative_image,
                                                                   where=f"{where}, input 'negative_image'")
    device = projection_device(adapter)
    if enhance is not None and enhance[0] > 1 and stage.kind != "clip_vision":
        raise InputError(f"{where}: enhance_tiles works on CLIP vision features; '{adapter.name}' reads "
                         f"{stage.kind} features (set enhance_tiles to 1).")
    cond = project_images(stage, adapter, encoder, images, batch_size, device, enhance=enhance, where=where)
    if negatives is not None:
        negative = project_images(stage, adapter, encoder, negatives, batch_size, device).mean(0, keepdim=True)
    elif uncond == "black image" and (black := stage.black_image(adapter, encoder)) is not None:
        negative = project_images(stage, adapter, encoder, black, 0, device)
    else:
        negative = reference_uncond(stage, adapter, encoder, device)
    return ImageTokens(cond=cond, uncond=negative, spec=adapter.spec, adapter_id=adapter.adapter_id,
                       adapter_name=adapter.name)


def project_images(stage: Any, adapter: LoadedAdapter, encoder: Any, images: torch.Tensor, batch_size: int,
                   device: torch.device, *, enhance: tuple[int, float] | None = None,
                   where: str = "") -> torch.Tensor:
    """images: (B, H, W, 3) -> tokens (B, T, C) float32 on the CPU (features, for the families that project at every
    step: :func:`project_features`), encoded in chunks of ``batch_size`` (0 = all); with ``enhance`` = (tiles > 1,
    ratio) the features are encode()'s enhanced ones (2 sets for one image)."""
    def chunks(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return batch.split(batch_size) if batch_size > 0 else (batch,)

    def project(features: torch.Tensor) -> torch.Tensor:
        return torch.cat([project_features(adapter, f, device) for f in chunks(features)])

    if enhance is None or enhance[0] <= 1:
        return torch.cat([project(stage.features(adapter, encoder, c)) for c in chunks(images)])
    tiles, ratio = int(enhance[0]), float(enhance[1])
    whole = torch.cat([stage.features(adapter, encoder, c) for c in chunks(images)])
    pooled = torch.cat([merge_tiles(torch.cat([stage.features(adapter, encoder, t)
                                               for t in chunks(split_grid(image[None], tiles))]), tiles, where=where)
                        for image in images])
    return project(enhanced(whole, pooled, ratio))


def project_features(adapter: LoadedAdapter, features: torch.Tensor, device: torch.device) -> torch.Tensor:
    """features -> the adapter's tokens, float32 on the CPU; for a family that projects at every model call
    (Family.step_projection: InstantX SD3.5, whose projection reads the timestep) the features themselves, which its
    ImageTokens carry (ip_adapter_core.embeds)."""
    if families.family_of(adapter.spec).step_projection:
        return features.float().cpu()
    return adapter.model.project(features.to(device)).float().cpu()


def reference_uncond(stage: Any, adapter: LoadedAdapter, encoder: Any, device: torch.device) -> torch.Tensor:
    """The reference uncond tokens (1, T, C), kept per adapter (and per encoder where they depend on it)."""
    hit = _base_uncond.get(adapter)
    if hit is None:
        per_encoder = _encoder_uncond.get(adapter)
        hit = None if per_encoder is None else per_encoder.get(encoder)
    if hit is None:
        features, by_encoder = stage.zero_features(adapter, encoder)
        hit = project_features(adapter, features, device)
        if by_encoder:
            _encoder_uncond.setdefault(adapter, weakref.WeakKeyDictionary())[encoder] = hit
        else:
            _base_uncond[adapter] = hit
    return hit
