"""InstantX FLUX.1-dev IP-Adapter files made by the tests: random weights in the published layout, at any size.

Layout (shared/reference/dit-adapters.md §1.2), a nested torch pickle ``{"image_proj": {...}, "ip_adapter": {...}}``:
image_proj ``proj.0.weight`` (2E, E) / ``.bias``, ``proj.2.weight`` (T * ctx, 2E) / ``.bias``, ``norm.weight`` /
``.bias`` (ctx); ip_adapter ``{i}.to_k_ip.weight`` / ``{i}.to_v_ip.weight`` (hidden, ctx), no biases, i = 0 .. 56
(19 double blocks, then 38 single blocks). ``instantx_shapes(...)`` at the published sizes feeds
adapters.write_sparse_safetensors (header-only files, flat ``image_proj.*`` / ``ip_adapter.*`` keys);
``instantx_parts(...)`` gives small seeded random weights; ``write_instantx`` writes them as the published nested
.bin or as a flat .safetensors (adapters.save_adapter).
"""
from __future__ import annotations

import torch

from .adapters import save_adapter

# The published file: SigLIP so400m pooled (1152) -> 128 tokens of T5's 4096, into Flux.1-dev's 19 + 38 blocks.
SIGLIP_POOLED, T5_CTX, FLUX_HIDDEN, TOKENS = 1152, 4096, 3072, 128
FLUX_DOUBLE_BLOCKS, FLUX_SINGLE_BLOCKS = 19, 38
TINY = dict(enc=12, ctx=16, hidden=32, tokens=4, sites=5)  # 2 double + 3 single blocks, heads of 16 (2 heads)


def instantx_shapes(*, tokens: int = TOKENS, enc: int = SIGLIP_POOLED, ctx: int = T5_CTX, hidden: int = FLUX_HIDDEN,
                    sites: int = FLUX_DOUBLE_BLOCKS + FLUX_SINGLE_BLOCKS) -> dict[str, dict[str, tuple[int, ...]]]:
    """{"image_proj": {key: shape}, "ip_adapter": {key: shape}} of an InstantX file, in the file's order."""
    image_proj = {"proj.0.weight": (2 * enc, enc), "proj.0.bias": (2 * enc,),
                  "proj.2.weight": (tokens * ctx, 2 * enc), "proj.2.bias": (tokens * ctx,),
                  "norm.weight": (ctx,), "norm.bias": (ctx,)}
    ip_adapter = {}
    for i in range(sites):
        ip_adapter[f"{i}.to_k_ip.weight"] = (hidden, ctx)
        ip_adapter[f"{i}.to_v_ip.weight"] = (hidden, ctx)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def flat_shapes(**kwargs) -> dict[str, tuple[int, ...]]:
    """instantx_shapes flattened with the part prefixes (``image_proj.proj.0.weight``, ``ip_adapter.0.to_k_ip.weight``),
    for write_sparse_safetensors."""
    return {f"{part}.{k}": shape for part, keys in instantx_shapes(**kwargs).items() for k, shape in keys.items()}


def instantx_parts(*, tokens: int, enc: int, ctx: int, hidden: int, sites: int, seed: int = 0,
                   dtype: torch.dtype = torch.float32, kv_scale: float = 1.0):
    """(image_proj, ip_adapter) with seeded random values: std 1/sqrt(fan_in) for weights and biases, LayerNorm
    weights near 1. kv_scale multiplies the to_k_ip / to_v_ip weights (small K/V, where the RMSNorm's eps matters)."""
    g = torch.Generator().manual_seed(seed)
    shapes = instantx_shapes(tokens=tokens, enc=enc, ctx=ctx, hidden=hidden, sites=sites)
    fan_in = {"proj.0": enc, "proj.2": 2 * enc, "norm": ctx}
    image_proj = {}
    for key, shape in shapes["image_proj"].items():
        if key == "norm.weight":
            value = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            value = torch.randn(shape, generator=g) * fan_in[key.rsplit(".", 1)[0]] ** -0.5
        image_proj[key] = value.to(dtype)
    ip_adapter = {key: (torch.randn(shape, generator=g) * ctx ** -0.5 * kv_scale).to(dtype)
                  for key, shape in shapes["ip_adapter"].items()}
    return image_proj, ip_adapter


def write_instantx(path, *, seed: int = 0, fmt: str | None = None, **sizes) -> str:
    """A random InstantX file (sizes: TINY unless given) as the published nested .bin (a .bin name) or a flat
    prefixed .safetensors."""
    image_proj, ip_adapter = instantx_parts(**{**TINY, **sizes}, seed=seed)
    return save_adapter(str(path), image_proj, ip_adapter, fmt=fmt)
