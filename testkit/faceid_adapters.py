"""Random FaceID adapter weights in the published key layouts (shared/reference/ip-adapter-formats.md §1).

``faceid_parts(kind, ...)`` gives (image_proj, ip_adapter) for "faceid", "faceid_plus", "portrait" and
"portrait_unnorm": small random weights for numerical tests, or any size on the meta device. ``published_faceid(name)``
gives the published files' shapes (meta, no memory). LoRA keys "{N}.to_{q,k,v,out}_lora.{down,up}.weight" cover every
attention processor N = 0 .. 2·sites - 1 (even N: attn1, every input ``hidden`` wide; odd N: attn2, to_k / to_v read the
context), as ip_adapter_core.lora maps them.
"""
from __future__ import annotations

import torch

from .adapters import SD15_SITES, SDXL_SITES, adapter_parts, save_adapter

FACE_DIM = 512

# name (the published file's stem) -> faceid_parts keyword arguments (formats reference §1, model table)
PUBLISHED_FACEID = {
    "ip-adapter-faceid_sd15": dict(kind="faceid", ctx=768, tokens=4, site_dims=SD15_SITES, lora_rank=128),
    "ip-adapter-faceid_sdxl": dict(kind="faceid", ctx=2048, tokens=4, site_dims=SDXL_SITES, lora_rank=128),
    "ip-adapter-faceid-plus_sd15": dict(kind="faceid_plus", ctx=768, tokens=4, heads=12, site_dims=SD15_SITES,
                                        lora_rank=128),
    "ip-adapter-faceid-plusv2_sd15": dict(kind="faceid_plus", ctx=768, tokens=4, heads=12, site_dims=SD15_SITES,
                                          lora_rank=128),
    "ip-adapter-faceid-plusv2_sdxl": dict(kind="faceid_plus", ctx=2048, tokens=4, heads=32, site_dims=SDXL_SITES,
                                          lora_rank=128),
    "ip-adapter-faceid-portrait_sd15": dict(kind="portrait", ctx=768, tokens=16, site_dims=SD15_SITES),
    "ip-adapter-faceid-portrait-v11_sd15": dict(kind="portrait", ctx=768, tokens=16, site_dims=SD15_SITES),
    "ip-adapter-faceid-portrait_sdxl": dict(kind="portrait", ctx=2048, tokens=16, site_dims=SDXL_SITES),
    "ip-adapter-faceid-portrait_sdxl_unnorm": dict(kind="portrait_unnorm", ctx=2048, tokens=16, resampler_dim=1280,
                                                   heads=20, site_dims=SDXL_SITES),
}


def _maker(device: str, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed) if device != "meta" else None

    def t(*shape, fan_in=None, ln=False, scale=1.0):
        if device == "meta":
            return torch.empty(*shape, device="meta", dtype=dtype)
        if ln:
            return (1.0 + 0.1 * torch.randn(*shape, generator=g)).to(dtype)
        std = scale * (fan_in or shape[-1]) ** -0.5
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    return t


def id_mlp(*, ctx: int, tokens: int, id_dim: int = FACE_DIM, device: str = "cpu", dtype: torch.dtype = torch.float32,
           seed: int = 0) -> dict[str, torch.Tensor]:
    """The FaceID id MLP: proj.0 [2E, E], proj.2 [T·C, 2E] (with biases), norm [C]."""
    t = _maker(device, dtype, seed)
    h = 2 * id_dim
    return {"proj.0.weight": t(h, id_dim), "proj.0.bias": t(h, fan_in=id_dim),
            "proj.2.weight": t(tokens * ctx, h), "proj.2.bias": t(tokens * ctx, fan_in=h),
            "norm.weight": t(ctx, ln=True), "norm.bias": t(ctx, fan_in=ctx)}


def lora_parts(*, ctx: int, site_dims, rank: int, device: str = "cpu", dtype: torch.dtype = torch.float32,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA for every attention processor N (2 per site, checkpoint order): down [r, in], up [hidden, r]."""
    t = _maker(device, dtype, seed)
    out = {}
    for i, h in enumerate(site_dims):
        for n, kv_in in ((2 * i, h), (2 * i + 1, ctx)):
            for proj, width_in in (("q", h), ("k", kv_in), ("v", kv_in), ("out", h)):
                out[f"{n}.to_{proj}_lora.down.weight"] = t(rank, width_in)
                out[f"{n}.to_{proj}_lora.up.weight"] = t(h, rank, scale=0.1)
    return out


def faceid_parts(kind: str, *, ctx: int, site_dims, tokens: int | None = None, id_dim: int = FACE_DIM,
                 clip_dim: int = 1280, heads: int | None = None, resampler_dim: int | None = None, depth: int = 4,
                 lora_rank: int | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """(image_proj, ip_adapter) of a FaceID file of ``kind``, keys as published, random values (std ~ 1/sqrt(fan_in)).

    faceid / portrait: the id MLP (tokens 4 / 16); faceid_plus: the id MLP + ``perceiver_resampler.*`` (dim = ctx,
    ``heads`` default ctx / 64, reading ``clip_dim``-wide CLIP states); portrait_unnorm: a Resampler (latents,
    ``resampler_dim``, ``heads``) over ``id_dim``-wide input. ``lora_rank``: add the LoRA keys of that rank.
    """
    if kind not in ("faceid", "faceid_plus", "portrait", "portrait_unnorm"):
        raise ValueError(kind)
    tokens = tokens or (16 if kind.startswith("portrait") else 4)
    if kind == "portrait_unnorm":
        dim = resampler_dim or ctx
        image_proj, ip_adapter = adapter_parts("plus", ctx=ctx, encoder_dim=id_dim, site_dims=site_dims, tokens=tokens,
                                               resampler_dim=dim, resampler_heads=heads or dim // 64, depth=depth,
                                               device=device, dtype=dtype, seed=seed)
    else:
        image_proj = id_mlp(ctx=ctx, tokens=tokens, id_dim=id_dim, device=device, dtype=dtype, seed=seed + 101)
        if kind == "faceid_plus":
            perceiver, ip_adapter = adapter_parts("plus", ctx=ctx, encoder_dim=clip_dim, site_dims=site_dims, tokens=1,
                                                  resampler_dim=ctx, resampler_heads=heads or ctx // 64, depth=depth,
                                                  device=device, dtype=dtype, seed=seed)
            image_proj.update({f"perceiver_resampler.{k}": v for k, v in perceiver.items() if k != "latents"})
        else:
            _, ip_adapter = adapter_parts("base", ctx=ctx, encoder_dim=1, site_dims=site_dims, tokens=1,
                                          device=device, dtype=dtype, seed=seed)
    if lora_rank:
        ip_adapter = {**ip_adapter, **lora_parts(ctx=ctx, site_dims=site_dims, rank=lora_rank, device=device,
                                                 dtype=dtype, seed=seed + 202)}
    return image_proj, ip_adapter


def published_faceid(name: str, device: str = "meta", dtype: torch.dtype = torch.float16):
    """The published file ``name`` (a PUBLISHED_FACEID key) at real size, meta tensors by default."""
    return faceid_parts(device=device, dtype=dtype, **PUBLISHED_FACEID[name])


def parameter_count(*parts) -> int:
    return sum(t.numel() for part in parts for t in part.values())


def save_faceid(path: str, kind: str, **kwargs) -> str:
    """A FaceID file of ``kind`` (faceid_parts arguments) written as the published files are (.bin nested parts, or a
    flat prefixed .safetensors)."""
    return save_adapter(path, *faceid_parts(kind, **kwargs))
