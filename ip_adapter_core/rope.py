"""Undoing Flux's rotary position embedding on a query, so an attention override that only sees the rotated q can
recover the block's pre-RoPE image query (the one the XLabs adapter attends with).

ComfyUI's Flux rotates q and k as ``comfy.ldm.flux.math.apply_rope1``: x (..., L, D) is read as D/2 pairs
(x[2i], x[2i+1]) and each pair is multiplied by a 2x2 matrix ``pe[..., l, i, :, :]``
(out[r] = pe[..., r, 0] * x[0] + pe[..., r, 1] * x[1]), computed in pe's dtype and cast back to x's dtype.
Those matrices are rotations (cos, -sin; sin, cos), so their transpose is their inverse.
"""
from __future__ import annotations

import torch


def unrope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """The inverse of ComfyUI's ``apply_rope1(x, pe)``: x rotated back by the transposed 2x2 matrices.

    x: (B, heads, L, head_dim) after RoPE; pe: (B or 1, 1, L, head_dim / 2, 2, 2) as the Flux model passes it
    (``args["pe"]`` of a double-block patch). Returns (B, heads, L, head_dim) in x's dtype, computed in pe's dtype
    (float32 in ComfyUI) as the forward rotation is.
    """
    if pe.dim() != 6 or pe.shape[-2:] != (2, 2) or pe.shape[-3] * 2 != x.shape[-1] or pe.shape[-4] != x.shape[-2]:
        raise ValueError(f"unrope: pe {tuple(pe.shape)} does not fit x {tuple(x.shape)}; expected "
                         f"(B, 1, {x.shape[-2]}, {x.shape[-1] // 2}, 2, 2)")
    inverse = pe.transpose(-1, -2)
    pairs = x.to(pe.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = inverse[..., 0] * pairs[..., 0] + inverse[..., 1] * pairs[..., 1]
    return out.reshape(x.shape).type_as(x)
