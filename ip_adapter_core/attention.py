"""The decoupled cross-attention term: Z = Attn(Q, K, V) + w * Attn(Q, K', V').

The host's attention kernel is passed in (``attention(q, k, v, heads) -> out``, layout (B, N, heads*dim_head)), so
this module never imports the host. Everything that does not change during sampling (K', V' with the weight folded
into V') is prepared once by :func:`site_kv`; the per-layer path is one attention call, an optional gate multiply
and the add.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def concat_images(cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cond (N_images, T, C), uncond (1, T, C) -> both (1, N_images * T, C).

    Several reference images share one softmax (the reference's concat). The uncond tokens are repeated to the same
    length; attention over repeated keys/values equals attention over one copy, so this changes no value.
    """
    n = cond.shape[0]
    return cond.reshape(1, -1, cond.shape[-1]), uncond[:1].repeat(1, n, 1)


def batch_for_chunks(cond: torch.Tensor, uncond: torch.Tensor, cond_or_uncond: Sequence[int], per_chunk: int) -> torch.Tensor:
    """Lay out per-chunk tokens to match the UNet batch.

    cond, uncond: (1, T, X). cond_or_uncond: ComfyUI's chunk order (0 = cond, anything else = uncond), any order.
    Returns (len(cond_or_uncond) * per_chunk, T, X).
    """
    parts = [(cond if c == 0 else uncond).expand(per_chunk, -1, -1) for c in cond_or_uncond]
    return torch.cat(parts, dim=0)


def site_kv(
    to_kv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    cond_tokens: torch.Tensor,
    uncond_tokens: torch.Tensor,
    *,
    weight: float,
    cond_or_uncond: Sequence[int],
    per_chunk: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K' and w * V' for one site, laid out for the batch: each (len(cond_or_uncond) * per_chunk, T, hidden).

    cond_tokens, uncond_tokens: (1, T, C) each (see :func:`concat_images`).
    to_kv: tokens (2, T, C) -> (K', V'), the site's to_k_ip / to_v_ip. The weight is folded into V' because
    softmax(Q K'^T) (w V') = w softmax(Q K'^T) V', which saves a multiply per layer and step.
    """
    tokens = torch.cat((cond_tokens, uncond_tokens), dim=0).to(device=device, dtype=dtype)
    k, v = to_kv(tokens)
    v = v * weight
    return (batch_for_chunks(k[:1], k[1:], cond_or_uncond, per_chunk),
            batch_for_chunks(v[:1], v[1:], cond_or_uncond, per_chunk))


def sigma_gate(sigmas: torch.Tensor, *, sigma_start: float, sigma_end: float, dtype: torch.dtype) -> torch.Tensor:
    """1 where sigma_end <= sigma <= sigma_start, else 0, as a (1, 1, 1) tensor on sigmas' device (no host sync)."""
    s = sigmas[:1]
    return ((s <= sigma_start) & (s >= sigma_end)).to(dtype).reshape(1, 1, 1)


def add_image_term(out: torch.Tensor, q: torch.Tensor, k_ip: torch.Tensor, v_ip: torch.Tensor, heads: int,
                   attention: Attention, gate: torch.Tensor | None = None) -> torch.Tensor:
    """out + gate * Attn(q, K', V'). q, out: (B, Nq, heads*d); k_ip, v_ip: (B, T, heads*d) with w already in v_ip."""
    term = attention(q, k_ip, v_ip, heads)
    if gate is not None:
        term = term * gate
    return out + term
