"""The incumbent's "ClipVision Enhancer": CLIP features of a reference plus those of its n x n tiles, pooled back.

The served IDs IPAdapterClipVisionEnhancer (+ Batch) of ComfyUI_IPAdapter_plus encode each reference whole and as an
n x n grid of equal tiles (``tiles`` = n, 1 = off; the last rows / columns past a multiple of n are dropped, as
there), each tile through the encoder's own preprocessing. The tiles' features are put back in place and pooled to
one image's size:

- penultimate states (B, 1 + s*s, E): the tiles' patch grids side by side form an (n*s) x (n*s) grid, averaged over
  each n x n block back to s x s; the class token is the mean of the tiles' class tokens;
- image embeds (B, E), E = s*s a square: each embedding read as an s x s grid, stitched and averaged the same way
  (the incumbent's heuristic; a width that is not a square is refused).

Then, with ``ratio`` r: a single reference gives two feature sets, [whole * r, pooled tiles] (combine_embeds joins
them later, concat by default); a batch of B > 1 gives B: whole * r + pooled * (1 - r), per reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import InputError

MAX_TILES = 16


def split_grid(images: torch.Tensor, tiles: int) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> (B * tiles^2, H // tiles, W // tiles, C): each image's tiles row-major, then the next."""
    b, h, w, c = images.shape
    th, tw = h // tiles, w // tiles
    grid = images[:, :th * tiles, :tw * tiles].reshape(b, tiles, th, tiles, tw, c)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(b * tiles * tiles, th, tw, c)


def _pool(grids: torch.Tensor, tiles: int) -> torch.Tensor:
    """(B * n^2, s, s, E) tile grids -> (B, s * s, E): stitched n x n, each n x n block averaged."""
    bn, s, _, e = grids.shape
    b = bn // (tiles * tiles)
    stitched = grids.reshape(b, tiles, tiles, s, s, e).permute(0, 1, 3, 2, 4, 5).reshape(b, tiles * s, tiles * s, e)
    pooled = F.adaptive_avg_pool2d(stitched.permute(0, 3, 1, 2), (s, s))
    return pooled.permute(0, 2, 3, 1).reshape(b, s * s, e)


def merge_tiles(features: torch.Tensor, tiles: int, *, where: str) -> torch.Tensor:
    """The features of split_grid's tiles, (B * n^2, 1 + s*s, E) or (B * n^2, E), -> one set per image."""
    if features.ndim == 3:
        s = math.isqrt(features.shape[1] - 1)
        if s * s != features.shape[1] - 1:
            raise InputError(f"{where}: the encoder gives {features.shape[1]} tokens, not a class token and a square "
                             f"patch grid; enhance_tiles needs one (use 1).")
        cls = features[:, 0].reshape(-1, tiles * tiles, features.shape[2]).mean(1, keepdim=True)
        patches = _pool(features[:, 1:].reshape(-1, s, s, features.shape[2]), tiles)
        return torch.cat([cls, patches], dim=1)
    s = math.isqrt(features.shape[1])
    if s * s != features.shape[1]:
        raise InputError(f"{where}: enhance_tiles on an adapter that reads image embeds needs an embedding width that "
                         f"is a square (1024 for ViT-H); this encoder's is {features.shape[1]}. Use enhance_tiles 1 "
                         f"or a plus adapter.")
    return _pool(features.reshape(-1, s, s, 1), tiles).reshape(-1, s * s)


def enhanced(whole: torch.Tensor, pooled: torch.Tensor, ratio: float) -> torch.Tensor:
    """The module docstring's mix of a batch's whole-image features and its pooled tiles' features."""
    if whole.shape[0] > 1:
        return whole * ratio + pooled * (1.0 - ratio)
    return torch.cat([whole * ratio, pooled])


def check_enhance(tiles: int, ratio: float, *, where: str) -> None:
    if not 1 <= int(tiles) <= MAX_TILES:
        raise InputError(f"{where}: input 'enhance_tiles' is {tiles}; expected 1-{MAX_TILES}.")
    if not 0.0 <= float(ratio) <= 1.0:
        raise InputError(f"{where}: input 'enhance_ratio' is {ratio}; expected 0-1.")
