"""Tiled references: cover a whole reference image with square tiles, one image prompt per tile and region.

The CLIP vision encoder sees one square. A non-square or large reference loses its sides (centre crop) or its
detail (one downscale of everything). Tiling cuts the reference into square tiles, encodes each tile on its own,
and lets tile k act only on the matching region of the generation: its rectangle in the reference, stretched onto
the latent (so the generation should have the reference's aspect ratio, as with the older Tiled node).

Geometry (all in reference pixels, H x W, short side s = min(H, W), long side l = max(H, W)):

- k tiles across the short side (``short_side_tiles``; 0 = auto: 2 for a near-square reference, l / s < 4/3, whose
  tiles would still be at least ``encoder_size`` pixels, else 1). The tile side is
  ``t = min(s, ceil(s / (1 + (k - 1) * (1 - overlap))))``: k tiles of side t with at least ``overlap`` (a fraction of
  t) between neighbours span the short side.
- Along each axis of length L the tiles start at ``round(i * (L - t) / (n - 1))``, i = 0..n-1, the least n whose
  even spacing keeps neighbours overlapping by at least ``overlap * t`` (n = 1 when L <= t; starts at least one
  pixel apart). The first tile starts at 0 and the last ends at L: the whole image is covered, nothing is cropped,
  the leftover overlap is spread evenly.
- Tiles are numbered row-major (top row first, left to right).

Masks (:func:`tile_masks`): tile k's rectangle drawn on a canvas of any size (edges scaled and rounded), divided by
the number of tiles covering each pixel, so the masks sum to exactly 1 everywhere: overlaps share the weight
instead of doubling it.

Each tile is resized once, from the reference's own pixels to the encoder's size (ip_adapter_core.prep), which
avoids the double resampling that blurred the older node's tiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import InputError

NEAR_SQUARE = 4.0 / 3.0
MAX_OVERLAP = 0.9
MAX_SHORT_SIDE_TILES = 8
MAX_MASK_SIDE = 1024


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of side ``size`` covering an ``height`` x ``width`` reference; tops / lefts are the tiles'
    first row / column, one entry per grid row / column."""

    height: int
    width: int
    size: int
    tops: tuple[int, ...]
    lefts: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.tops) * len(self.lefts)

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(top, left, bottom, right) of every tile, row-major; bottom / right exclusive."""
        return [(y, x, y + self.size, x + self.size) for y in self.tops for x in self.lefts]


def check_tiling(*, overlap: float, short_side_tiles: int, where: str) -> None:
    """Raise InputError unless 0 <= overlap <= MAX_OVERLAP and 0 <= short_side_tiles <= MAX_SHORT_SIDE_TILES."""
    if not 0.0 <= overlap <= MAX_OVERLAP:
        raise InputError(f"{where}, input 'tile_overlap': {overlap} is outside 0..{MAX_OVERLAP}; it is the least "
                         "overlap between neighbouring tiles as a fraction of the tile side.")
    if not 0 <= short_side_tiles <= MAX_SHORT_SIDE_TILES:
        raise InputError(f"{where}, input 'short_side_tiles': {short_side_tiles} is outside "
                         f"0..{MAX_SHORT_SIDE_TILES}; use 0 for automatic.")


def tile_side(short: int, tiles: int, overlap: float) -> int:
    """The side of ``tiles`` square tiles spanning ``short`` pixels with ``overlap`` (fraction) between neighbours."""
    return max(1, min(short, math.ceil(short / (1.0 + (tiles - 1) * (1.0 - overlap)) - 1e-9)))


def axis_starts(length: int, size: int, overlap: float) -> tuple[int, ...]:
    """Start offsets of tiles of ``size`` covering ``length`` evenly, neighbours overlapping by >= overlap * size."""
    if length <= size:
        return (0,)
    span = length - size
    n = min(span + 1, 1 + math.ceil(span / (size * (1.0 - overlap)) - 1e-9))  # starts at least 1 px apart
    return tuple((2 * i * span + (n - 1)) // (2 * (n - 1)) for i in range(n))


def auto_short_side_tiles(height: int, width: int, *, encoder_size: int, overlap: float) -> int:
    """2 for a near-square reference (long / short < 4/3) whose 2 tiles per side keep >= encoder_size pixels, else 1."""
    short, long = min(height, width), max(height, width)
    if long < NEAR_SQUARE * short and tile_side(short, 2, overlap) >= encoder_size:
        return 2
    return 1


def tile_grid(height: int, width: int, *, encoder_size: int, overlap: float = 0.0,
              short_side_tiles: int = 0, where: str = "tile_grid") -> TileGrid:
    """The grid of square tiles covering an ``height`` x ``width`` reference (see the module docstring)."""
    check_tiling(overlap=overlap, short_side_tiles=short_side_tiles, where=where)
    if height < 1 or width < 1:
        raise InputError(f"{where}, input 'image': the image is {height}x{width} pixels; expected at least 1x1.")
    short = min(height, width)
    k = short_side_tiles or auto_short_side_tiles(height, width, encoder_size=encoder_size, overlap=overlap)
    size = tile_side(short, min(k, short), overlap)
    return TileGrid(height=height, width=width, size=size, tops=axis_starts(height, size, overlap),
                    lefts=axis_starts(width, size, overlap))


def cut_tiles(images: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """images: (B, H, W, C) -> (N * B, t, t, C), tile-major: rows k*B .. k*B+B-1 are tile k of every image."""
    if tuple(images.shape[1:3]) != (grid.height, grid.width):
        raise ValueError(f"images are {tuple(images.shape[1:3])}, the grid was made for {(grid.height, grid.width)}")
    return torch.cat([images[:, y0:y1, x0:x1] for y0, x0, y1, x1 in grid.boxes])


def mask_canvas(height: int, width: int, *, limit: int = MAX_MASK_SIDE) -> tuple[int, int]:
    """(h, w) of the tile masks for an H x W reference: its own size, scaled down to a long side of ``limit``."""
    long = max(height, width)
    if long <= limit:
        return height, width
    return max(1, round(height * limit / long)), max(1, round(width * limit / long))


def tile_masks(grid: TileGrid, canvas: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) float32: tile k's rectangle scaled onto an h x w canvas, divided by the number of tiles covering
    each pixel, so the N masks sum to 1 at every pixel. An edge e maps to floor(e * h / H + 1/2)."""
    h, w = canvas

    def scale(edge: int, dst: int, src: int) -> int:
        return (2 * edge * dst + src) // (2 * src)

    rects = torch.zeros(len(grid), h, w)
    for i, (y0, x0, y1, x1) in enumerate(grid.boxes):
        rects[i, scale(y0, h, grid.height):scale(y1, h, grid.height),
              scale(x0, w, grid.width):scale(x1, w, grid.width)] = 1.0
    return rects / rects.sum(0, keepdim=True).clamp(min=1.0)


# ---------------------------------------------------------------------------------------------- the old pack's tiling

OLD_TILE = 256  # the incumbent's tile side (CLIP's preprocessing brings each tile to 224)


@dataclass(frozen=True)
class OldPackTiling:
    """The incumbent's IPAdapter Tiled geometry for an H x W reference, in the order it is applied: a centre crop
    to a ``square`` (near-square references: 0.75 < H / W < 1.33; else None), a resize to ``resize`` (h, w), a centre
    ``crop`` (h, w) for references longer than 4:1 (else None), then fixed 256 px tiles (``grid``) whose overlap is
    the leftover spread over the gaps, starts truncated to whole pixels. At most 4 x 4 tiles (2 x 2 when near-square).
    """
    square: int | None
    resize: tuple[int, int]
    crop: tuple[int, int] | None
    grid: TileGrid


def _old_starts(length: int, count: int) -> tuple[int, ...]:
    overlap = max(0.0, (count * OLD_TILE - length) / (count - 1 if count > 1 else 1))
    return tuple(int(i * (OLD_TILE - overlap)) for i in range(count))


def old_pack_tiling(height: int, width: int, *, where: str = "old_pack_tiling") -> OldPackTiling:
    if height < 1 or width < 1:
        raise InputError(f"{where}, input 'image': the image is {height}x{width} pixels; expected at least 1x1.")
    ratio = height / width
    if 0.75 < ratio < 1.33:
        square, resize = min(height, width), (2 * OLD_TILE, 2 * OLD_TILE)
    else:
        square = None
        resize = (OLD_TILE, int(OLD_TILE * width / height)) if height < width else \
            (int(OLD_TILE * height / width), OLD_TILE)
    crop = None
    if ratio > 4 or ratio < 0.25:
        crop = (OLD_TILE, 4 * OLD_TILE) if height < width else (4 * OLD_TILE, OLD_TILE)
    h, w = crop or resize
    grid = TileGrid(height=h, width=w, size=OLD_TILE, tops=_old_starts(h, math.ceil(h / OLD_TILE)),
                    lefts=_old_starts(w, math.ceil(w / OLD_TILE)))
    return OldPackTiling(square=square, resize=resize, crop=crop, grid=grid)
