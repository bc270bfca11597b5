"""Attention masks: a MASK -> a per-query multiplier for the image term of one cross-attention site.

A site's queries are its feature map flattened row by row. ComfyUI's UNet halves the latent with stride-2 convolutions
(padding 1), i.e. ceil(h / 2) x ceil(w / 2) per level, and the output blocks upsample back to the matching input
level, so every site's grid is one of the ceil-halvings of the latent. :func:`site_grid` finds it from the query
length; a query length that no halving produces (another host, another model) falls back to the factorisation of the
length nearest the latent's aspect ratio, so there is never a size error.

The mask is stretched to the latent, whatever its own size and aspect ratio (a 512x512 mask on a 768x512 latent covers
it all), resized to the site's grid one axis at a time, area averaging on an axis that shrinks (each grid cell is the
mean of the mask pixels it covers: an edge on a cell boundary stays sharp and thin regions fade instead of flickering
in and out of the small grids) and bilinear on an axis that grows, and flattened. The resize "bilinear" (the
compatibility mode "ComfyUI_IPAdapter_plus") is the incumbent's instead: both axes at once, bilinear without
antialiasing, so a shrinking mask is point-sampled.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .errors import InputError


def prepare_mask(mask: torch.Tensor, *, where: str, clamp: bool = True) -> torch.Tensor:
    """A MASK input (H, W) or (M, H, W) -> (M, H, W) float32, NaN -> 0, values clamped to 0..1 unless ``clamp`` is
    off (the compatibility mode "ComfyUI_IPAdapter_plus": the incumbent multiplies by the values as they come, so a
    bicubic-scaled mask's overshoot above 1 strengthens the term there).

    Any size and any aspect ratio is accepted; only a tensor that is not a mask (wrong rank, empty) is refused.
    """
    mask = torch.nan_to_num(mask_batch(mask, where=f"{where}, input 'attn_mask'").detach().float(), nan=0.0)
    return mask.clamp(0.0, 1.0) if clamp else mask


def mask_batch(mask: Any, *, where: str) -> torch.Tensor:
    """A MASK input (H, W) or (M, H, W) -> the same values as (M, H, W); InputError (prefixed ``where``, e.g.
    "input 'mask_1'") for anything that is not a mask: not a tensor, wrong rank, empty."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{where}: expected a MASK tensor, got {type(mask).__name__}.")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or mask.numel() == 0:
        raise InputError(f"{where}: expected a MASK of shape (batch, height, width), got shape "
                         f"{tuple(mask.shape)}; connect a MASK output (e.g. 'Load Image' mask or 'Solid Mask').")
    return mask


def halvings(h: int, w: int) -> list[tuple[int, int]]:
    """(h, w), (ceil(h/2), ceil(w/2)), ... down to (1, 1)."""
    found = [(h, w)]
    while (h, w) != (1, 1):
        h, w = -(-h // 2), -(-w // 2)
        found.append((h, w))
    return found


def site_grid(latent_hw: tuple[int, int], tokens: int) -> tuple[int, int]:
    """The (hs, ws) grid of a site with ``tokens`` query positions on a latent of size latent_hw = (h, w).

    The first ceil-halving of (h, w) whose product is ``tokens``; else the factor pair hs * ws = tokens whose ratio
    hs / ws is nearest (in log scale) to h / w.
    """
    h, w = max(1, int(latent_hw[0])), max(1, int(latent_hw[1]))
    for hs, ws in halvings(h, w):
        if hs * ws == tokens:
            return hs, ws
    target = math.log(h / w)
    pairs = [(a, tokens // a) for a in range(1, math.isqrt(tokens) + 1) if tokens % a == 0]
    pairs += [(b, a) for a, b in pairs]
    return min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - target))


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(M, H, W) in 0..1 -> (M, hs, ws) in 0..1: per axis, area averaging to shrink, bilinear to grow."""
    out = mask.float().unsqueeze(1)
    for axis, target in ((2, int(size[0])), (3, int(size[1]))):
        if out.shape[axis] == target:
            continue
        new = list(out.shape[2:])
        new[axis - 2] = target
        if target < out.shape[axis]:
            out = F.interpolate(out, size=tuple(new), mode="area")
        else:
            out = F.interpolate(out, size=tuple(new), mode="bilinear", align_corners=False)
    return out.squeeze(1).clamp(0.0, 1.0)


MASK_RESIZES = ("area", "bilinear")


def site_mask(mask: torch.Tensor, *, latent_hw: tuple[int, int], tokens: int, resize: str = "area") -> torch.Tensor:
    """mask (M, H, W), 0..1 -> (M, tokens, 1) float32: the multiplier of each query position of the site;
    ``resize`` one of MASK_RESIZES (module docstring)."""
    grid = site_grid(latent_hw, tokens)
    if resize == "bilinear":
        out = F.interpolate(mask.float().unsqueeze(1), size=grid, mode="bilinear", align_corners=False).squeeze(1)
    elif resize == "area":
        out = resize_mask(mask, grid)
    else:
        raise ValueError(f"mask resize {resize!r} is not one of {MASK_RESIZES}")
    return out.reshape(mask.shape[0], tokens, 1)


def batch_mask(per_site: torch.Tensor, *, per_chunk: int, chunks: int, frames: Sequence[int] | None = None,
               full_length: int | None = None) -> torch.Tensor:
    """(M, N, 1) -> (chunks * per_chunk, N, 1), the same mask for every cond / uncond chunk.

    In an AnimateDiff context window (``frames``: the full-video frame of each of the per_chunk latents, and the
    video's ``full_length``, ip_adapter_core.frames) a batch of M == full_length masks is one mask per video frame:
    latent i gets mask frames[i]. Otherwise M == per_chunk: one mask per latent in the batch; any other M: mask 0
    for every latent.
    """
    if frames is not None and full_length is not None and per_site.shape[0] == full_length:
        per_site = per_site[[min(int(f), full_length - 1) for f in frames]]
    elif per_site.shape[0] != per_chunk:
        per_site = per_site[:1].expand(per_chunk, -1, -1)
    return per_site.repeat(chunks, 1, 1)
