"""IPA_ApplyTiled: a non-square or large reference cut into square tiles, each tile an image prompt for its region."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..ip_adapter_core.compat import prepare_images
from ..ip_adapter_core.masks import prepare_mask
from ..ip_adapter_core.prep import prep_image
from ..ip_adapter_core.tiles import (MAX_OVERLAP, MAX_SHORT_SIDE_TILES, cut_tiles, mask_canvas, tile_grid,
                                     tile_masks)
from .common import (ADAPTER_IN, ATTN_MASK, CATEGORY, CLIP_VISION_IN, END_AT, INTERPOLATION, MODEL_IN, SHARPENING,
                     START_AT, WEIGHT, reports)
from .patch import encoder
from .patch.host import LoadedAdapter
from .patch.install import install, plan_for


class IPAApplyTiled:
    DISPLAY_NAME = "IPA Apply (tiled)"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "IMAGE", "MASK")
    RETURN_NAMES = ("model", "tiles", "masks")
    OUTPUT_TOOLTIPS = ("A copy of the model with one image prompt per tile, each limited to its region.",
                       "The tiles as the encoder sees them (tile-major: every image's tile 1, then tile 2, ...).",
                       "The region of each tile (row-major), at the reference's aspect ratio; overlaps share the "
                       "weight, so the masks add up to 1 (times attn_mask).")
    FUNCTION = "run"
    DESCRIPTION = ("For non-square or large references: cuts the whole image (nothing cropped) into square tiles of "
                   "the encoder's size with even overlap; each tile prompts the matching region of the generation "
                   "(its rectangle stretched onto the latent). Use a latent with the reference's aspect ratio.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": MODEL_IN, "ipadapter": ADAPTER_IN, "clip_vision": CLIP_VISION_IN,
                "image": ("IMAGE", {"tooltip": "Reference image(s), any size and aspect ratio; the whole image is "
                                               "tiled. Several images (same size) are tiled alike and tile k of every "
                                               "image prompts region k together."}),
                "weight": WEIGHT, "start_at": START_AT, "end_at": END_AT},
            "optional": {
                "attn_mask": ATTN_MASK,
                "tile_overlap": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": MAX_OVERLAP, "step": 0.05,
                    "tooltip": "Least overlap between neighbouring tiles, as a fraction of the tile side (0 = tiles "
                               "may just touch). Leftover space is spread evenly, so tiles often overlap more."}),
                "short_side_tiles": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SHORT_SIDE_TILES,
                    "tooltip": "Tiles across the short side. 0 = auto: 2 for a near-square reference (2x2 tiles) "
                               "that is large enough for tiles of the encoder's size, else 1 (one row or column "
                               "of tiles). More tiles = more detail, and one more attention per layer each."}),
                "interpolation": INTERPOLATION,
                "sharpening": SHARPENING,
            },
        }

    @reports(DISPLAY_NAME)
    def run(self, model: Any, ipadapter: LoadedAdapter, clip_vision: Any, image: torch.Tensor, weight: float,
            start_at: float, end_at: float, attn_mask: torch.Tensor | None = None, tile_overlap: float = 0.0,
            short_side_tiles: int = 0, interpolation: str = "bicubic", sharpening: float = 0.0):
        where = self.DISPLAY_NAME
        mask = None if attn_mask is None else prepare_mask(attn_mask, where=where)
        images = prepare_images(image, where=f"{where}, input 'image'")
        size = encoder.check(ipadapter, clip_vision, where=where).image_size(clip_vision)
        batch, height, width = images.shape[:3]
        grid = tile_grid(height, width, encoder_size=size, overlap=tile_overlap, short_side_tiles=short_side_tiles,
                         where=where)
        tiles = prep_image(cut_tiles(images, grid), size=size, crop="center", interpolation=interpolation,
                           sharpening=sharpening, where=where)
        regions = tile_masks(grid, mask_canvas(height, width) if mask is None else tuple(mask.shape[-2:]))
        plans = [plan_for(model, ipadapter, where=where, weight=weight, start_at=start_at, end_at=end_at,
                          attn_mask=regions[k:k + 1] if mask is None else regions[k] * mask) for k in range(len(grid))]
        tokens = encoder.encode(ipadapter, clip_vision, tiles, where=where)
        out = model
        for k, plan in enumerate(plans):
            tile_tokens = dataclasses.replace(tokens, cond=tokens.cond[k * batch:(k + 1) * batch])
            out = install(out, ipadapter, tile_tokens, plan, where=where)
        masks = regions if mask is None else (regions[:, None] * mask[None]).flatten(0, 1)
        return out, tiles, masks
