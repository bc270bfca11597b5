"""Several image prompts on one model: style & composition pairs and masked regions, as pure data and checks.

Style & composition (the incumbent's "style and composition" / "strong style and composition" weight types, with a
second image on the layout layers) is two terms on one model: the style image with the weight type of
:func:`style_composition_types` [0] and the composition image with [1] (ip_adapter_core.weighting tables). Layers
by the incumbent's index t (SpatialTransformers in execution order):

============  =====================================  ==========================  ================================
family        style image (weight_style)             expand_style: style image   composition image
============  =====================================  ==========================  ================================
SDXL (L=11)   t 6 (output 1)                         every t except 3            t 3 (input 8)
SD1.5 (L=16)  t 0-3, 9-15 (input 1-5, output 5-11)   every t except 4, 5         t 4 x 0.25, t 5 (input 7, 8)
============  =====================================  ==========================  ================================

The composition image always gets the "composition" table, also with expand_style: on SD1.5 t 4 keeps its 0.25
factor, where the incumbent's (unreachable, SD1.5 was refused) "strong style and composition" table wrote 1.

Regions (:func:`connected_regions`): up to N (image, mask, weight[, prompt]) slots of one node; a slot is used when
its image and mask are both connected; one without the other, or a prompt without its mask, is refused naming both
inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .errors import InputError
from .masks import mask_batch


def style_composition_types(expand_style: bool) -> tuple[str, str]:
    """(weight type of the style image, weight type of the composition image)."""
    return ("strong style transfer" if expand_style else "style transfer"), "composition"


@dataclass(frozen=True)
class Region:
    """One connected region slot: ``index`` is its 1-based number (the input names end in it)."""

    index: int
    image: Any
    mask: torch.Tensor
    weight: float
    prompt: Any = None


def connected_regions(images: Sequence[Any], masks: Sequence[Any], weights: Sequence[float],
                      prompts: Sequence[Any]) -> list[Region]:
    """Slot i (0-based here, named ``image_{i+1}`` etc.) -> a Region when image and mask are both given.

    Raises InputError for an image without its mask or the reverse, for a prompt without its mask, for a mask
    that is not a MASK tensor, and when no slot is complete.
    """
    if not len(images) == len(masks) == len(weights) == len(prompts):
        raise ValueError("connected_regions: one image, mask, weight and prompt per slot")
    regions = []
    for i, (image, mask, weight, prompt) in enumerate(zip(images, masks, weights, prompts), start=1):
        if (image is None) != (mask is None):
            given, missing = (f"image_{i}", f"mask_{i}") if mask is None else (f"mask_{i}", f"image_{i}")
            raise InputError(f"input '{given}' is connected but '{missing}' is not; region {i} needs both "
                             f"image_{i} (what to show) and mask_{i} (where), or neither.")
        if prompt is not None and mask is None:
            raise InputError(f"input 'prompt_{i}' is connected but 'mask_{i}' is not; a region prompt is masked "
                             f"with its region's mask: connect image_{i} and mask_{i}, or use 'positive' for a "
                             f"prompt over the whole image.")
        if image is not None:
            regions.append(Region(i, image, mask_batch(mask, where=f"input 'mask_{i}'"), float(weight), prompt))
    if not regions:
        raise InputError("no region is connected; connect image_1 and mask_1.")
    return regions
