"""The decoupled cross-attention term: Z = Attn(Q, K, V) + w * Attn(Q, K', V').

Everything that does not change during sampling (K', V' with the weight folded into V', already split into heads)
is prepared once by :func:`site_kv`; the per-layer path is a view of q, one attention call, an optional gate
multiply and the add (6 aten ops on the CPU, 7 with a start/end gate, one more with an attention mask).

The image attention runs torch's scaled_dot_product_attention rather than the host's configured kernel: its keys are
only 4-257 image tokens, where SDPA is the fastest path on every device, takes the pre-split head layout without
reshapes, and accumulates fp16 in fp32. (The host's kernel would cost ~24 aten ops per site on the CPU.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import check_choice


def concat_images(cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cond (N_images, T, C), uncond (1, T, C) -> both (1, N_images * T, C).

    Several reference images share one softmax (the reference's concat). The uncond tokens are repeated to the same
    length; attention over repeated keys/values equals attention over one copy, so this changes no value.
    """
    n = cond.shape[0]
    return cond.reshape(1, -1, cond.shape[-1]), uncond[:1].repeat(1, n, 1)


def batch_for_chunks(cond: torch.Tensor, uncond: torch.Tensor, cond_or_uncond: Sequence[int], per_chunk: int) -> torch.Tensor:
    """Lay out per-chunk tokens to match the UNet batch.

    cond, uncond: (1, T, X) shared by every latent of a chunk, or (per_chunk, T, X) one row per latent. cond_or_uncond: ComfyUI's chunk order (0 = cond, anything else = uncond), any order.
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
    heads: int,
    device: torch.device,
    dtype: torch.dtype,
    scaling: str = "V only",
    swap: bool = False,
    frame_weights: Sequence[float] | None = None,
    uncond_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K' and w * V' for one site, laid out for the batch and split into heads:
    each (len(cond_or_uncond) * per_chunk, heads, T, hidden // heads), contiguous.

    cond_tokens, uncond_tokens: (1, T, C) shared by every latent (see :func:`concat_images`), or (per_chunk, T, C):
    row i for latent i of each chunk (unfolded batches, ip_adapter_core.frames); the two may differ in rows.
    to_kv: tokens (R, T, C) -> (K', V'), the site's to_k_ip / to_v_ip. The weight is folded into V' because
    softmax(Q K'^T) (w V') = w softmax(Q K'^T) V', which saves a multiply per layer and step; the other
    ``scaling`` modes (:func:`scale_kv`) fold it into K' and V' the same way, once.
    swap: the precise weight types' swap: the uncond chunk gets the cond tokens and the cond chunk zero tokens.
    frame_weights: per_chunk factors, latent i of every chunk (cond and uncond) uses weight * frame_weights[i];
    a factor 0 makes that latent's term exactly 0 in every scaling mode.
    uncond_factor: the uncond chunks' weight is ``weight * uncond_factor``; 0 = no term on the negative pass (exactly
    0 in every scaling mode), 1 = the uncond tokens' term at the same weight (the reference).
    """
    if swap:
        cond_tokens, uncond_tokens = torch.zeros_like(cond_tokens), cond_tokens
    rows = cond_tokens.shape[0]
    tokens = torch.cat((cond_tokens, uncond_tokens), dim=0).to(device=device, dtype=dtype)
    k, v = to_kv(tokens)
    parts = [(k[:rows], v[:rows], 1.0), (k[rows:], v[rows:], float(uncond_factor))]
    if frame_weights is None:
        parts = [scale_kv(pk, pv, weight=weight * f, scaling=scaling, width=k.shape[-1]) for pk, pv, f in parts]
    else:
        if len(frame_weights) != per_chunk:
            raise ValueError(f"frame_weights: {len(frame_weights)} factors for {per_chunk} latents per chunk")
        w = torch.tensor([weight * f for f in frame_weights], device=device, dtype=k.dtype).reshape(-1, 1, 1)
        parts = [scale_kv(pk.expand(per_chunk, -1, -1), pv.expand(per_chunk, -1, -1), weight=w * f, scaling=scaling,
                          width=k.shape[-1]) for pk, pv, f in parts]
    (kc, vc), (ku, vu) = parts
    return (split_heads(batch_for_chunks(kc, ku, cond_or_uncond, per_chunk), heads),
            split_heads(batch_for_chunks(vc, vu, cond_or_uncond, per_chunk), heads))


EMBEDS_SCALINGS = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")


def scale_kv(k: torch.Tensor, v: torch.Tensor, *, weight: float | torch.Tensor, scaling: str,
             width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the site's effective weight w into K', V' (the incumbent's embeds_scaling, CrossAttentionPatch.py:186-207).

    k, v: (B, T, C); width: the site's inner width C (k.shape[-1]); weight: a number, or a (B, 1, 1) tensor of
    per-row weights (per-frame weights). With w' = w * C / 1280:
      "V only"                  (K', w V')                         = w Attn(K', V'), the official scale
      "K+V"                     (w K', w V')
      "K+V w/ C penalty"        (w' K', w' V')
      "K+mean(V) w/ C penalty"  (w' K', V' - m + w' m), m = mean of V' over the tokens; w = 0 gives V'' = 0
                                (the reference skips the term there)
    """
    if scaling == "V only":
        return k, v * weight
    if scaling == "K+V":
        return k * weight, v * weight
    w = weight * width / 1280
    if scaling == "K+V w/ C penalty":
        return k * w, v * w
    check_scaling(scaling)
    if not isinstance(w, torch.Tensor) and w == 0:
        return k * w, v * w
    mean = v.mean(dim=1, keepdim=True)
    scaled = (v - mean) + mean * w
    return k * w, (scaled if not isinstance(w, torch.Tensor) else torch.where(w == 0, torch.zeros_like(scaled), scaled))


def check_scaling(scaling: str) -> None:
    """InputError unless ``scaling`` is one of EMBEDS_SCALINGS."""
    check_choice(scaling, EMBEDS_SCALINGS, input_name="embeds_scaling", what="mode")


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads*d) -> (B, heads, T, d), contiguous."""
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2).contiguous()


def sigma_gate(sigmas: torch.Tensor, *, sigma_start: float, sigma_end: float, dtype: torch.dtype) -> torch.Tensor:
    """1 where sigma_end <= sigma <= sigma_start, else 0, as a (1, 1, 1) tensor on sigmas' device (no host sync)."""
    s = sigmas[:1]
    return ((s <= sigma_start) & (s >= sigma_end)).to(dtype).reshape(1, 1, 1)


def add_image_term(out: torch.Tensor, q: torch.Tensor, k_ip: torch.Tensor, v_ip: torch.Tensor,
                   gate: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """out + gate * mask * softmax(q K'^T / sqrt(d)) V'.

    q, out: (B, Nq, heads*d); k_ip, v_ip: (B, heads, T, d) from :func:`site_kv` (w already in v_ip);
    gate: (1, 1, 1) or None; mask: (B, Nq, 1) per query position (ip_adapter_core.masks) or None.
    """
    b, n, _ = q.shape
    heads, d = k_ip.shape[1], k_ip.shape[3]
    term = F.scaled_dot_product_attention(q.view(b, n, heads, d).transpose(1, 2), k_ip, v_ip)
    term = term.transpose(1, 2).reshape(b, n, heads * d)
    if gate is not None:
        term = term * gate
    if mask is not None:
        term = term * mask
    return out + term


def heads_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA(q, K, V) with the default 1 / sqrt(d) scale, no mask, heads merged: q (B, heads, L, d), K / V
    (B, heads, T, d) -> (B, L, heads * d) in q's dtype. The DiT families' image term (families/flux.py,
    flux_instantx.py); ValueError when the three do not share heads and head width."""
    if k.shape[1] != q.shape[1] or k.shape[-1] != q.shape[-1] or v.shape != k.shape:
        raise ValueError(f"image term: q {tuple(q.shape)}, K {tuple(k.shape)}, V {tuple(v.shape)} do not "
                         "share heads and head width (B, heads, L, d)")
    out = F.scaled_dot_product_attention(q, k.to(q), v.to(q))
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
