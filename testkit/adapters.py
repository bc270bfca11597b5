"""Test data made by the tests: random IP-Adapter weights in the exact published key layout and shapes.

Shapes follow shared/reference/ip-adapter-formats.md §1. ``published(name)`` gives real-size shapes on the meta
device (for detection tests, no memory); ``adapter_parts(...)`` gives small random weights for numerical tests.
"""
from __future__ import annotations

import torch

SD15_SITES = (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280)
SDXL_SITES = (640,) * 4 + (1280,) * 20 + (1280,) * 30 + (640,) * 6 + (1280,) * 10

# name -> (kind, context dim, encoder dim, tokens, resampler dim, resampler heads, site widths)
PUBLISHED = {
    "ip-adapter_sd15": ("base", 768, 1024, 4, None, None, SD15_SITES),
    "ip-adapter_sd15_light_v11": ("base", 768, 1024, 4, None, None, SD15_SITES),
    "ip-adapter_sd15_vit-G": ("base", 768, 1280, 4, None, None, SD15_SITES),
    "ip-adapter-plus_sd15": ("plus", 768, 1280, 16, 768, 12, SD15_SITES),
    "ip-adapter-plus-face_sd15": ("plus", 768, 1280, 16, 768, 12, SD15_SITES),
    "ip-adapter-full-face_sd15": ("full_face", 768, 1280, None, None, None, SD15_SITES),
    "ip_plus_composition_sd15": ("plus", 768, 1280, 16, 768, 12, SD15_SITES),
    "ip-adapter_sdxl": ("base", 2048, 1280, 4, None, None, SDXL_SITES),
    "ip-adapter_sdxl_vit-h": ("base", 2048, 1024, 4, None, None, SDXL_SITES),
    "ip-adapter-plus_sdxl_vit-h": ("plus", 2048, 1280, 16, 1280, 20, SDXL_SITES),
    "ip-adapter-plus-face_sdxl_vit-h": ("plus", 2048, 1280, 16, 1280, 20, SDXL_SITES),
    "ip_plus_composition_sdxl": ("plus", 2048, 1280, 16, 1280, 20, SDXL_SITES),
}
# Published encoder name of each (as the model table says).
ENCODER_OF = {"ip-adapter_sd15_vit-G": "ViT-bigG", "ip-adapter_sdxl": "ViT-bigG"}


def adapter_parts(kind: str, *, ctx: int, encoder_dim: int, site_dims, tokens: int | None = 4,
                  resampler_dim: int | None = None, resampler_heads: int | None = None, depth: int = 4,
                  device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """(image_proj, ip_adapter) state dicts with the published key names; random values (std ~ 1/sqrt(fan_in))."""
    g = torch.Generator().manual_seed(seed) if device != "meta" else None

    def t(*shape, fan_in=None, ln=False):
        if device == "meta":
            return torch.empty(*shape, device="meta", dtype=dtype)
        if ln:
            return (1.0 + 0.1 * torch.randn(*shape, generator=g)).to(dtype)
        std = (fan_in or shape[-1]) ** -0.5
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    p: dict[str, torch.Tensor] = {}
    if kind == "base":
        p["proj.weight"] = t(tokens * ctx, encoder_dim)
        p["proj.bias"] = t(tokens * ctx, fan_in=encoder_dim)
        p["norm.weight"], p["norm.bias"] = t(ctx, ln=True), t(ctx, fan_in=ctx)
    elif kind == "full_face":
        p["proj.0.weight"], p["proj.0.bias"] = t(encoder_dim, encoder_dim), t(encoder_dim, fan_in=encoder_dim)
        p["proj.2.weight"], p["proj.2.bias"] = t(ctx, encoder_dim), t(ctx, fan_in=encoder_dim)
        p["proj.3.weight"], p["proj.3.bias"] = t(ctx, ln=True), t(ctx, fan_in=ctx)
    elif kind == "plus":
        d, inner = resampler_dim, resampler_heads * 64
        p["latents"] = t(1, tokens, d, fan_in=d)
        p["proj_in.weight"], p["proj_in.bias"] = t(d, encoder_dim), t(d, fan_in=encoder_dim)
        p["proj_out.weight"], p["proj_out.bias"] = t(ctx, d), t(ctx, fan_in=d)
        p["norm_out.weight"], p["norm_out.bias"] = t(ctx, ln=True), t(ctx, fan_in=ctx)
        for i in range(depth):
            a = f"layers.{i}.0."
            for n in ("norm1", "norm2"):
                p[a + n + ".weight"], p[a + n + ".bias"] = t(d, ln=True), t(d, fan_in=d)
            p[a + "to_q.weight"] = t(inner, d)
            p[a + "to_kv.weight"] = t(2 * inner, d)
            p[a + "to_out.weight"] = t(d, inner)
            f = f"layers.{i}.1."
            p[f + "0.weight"], p[f + "0.bias"] = t(d, ln=True), t(d, fan_in=d)
            p[f + "1.weight"] = t(4 * d, d)
            p[f + "3.weight"] = t(d, 4 * d)
    else:
        raise ValueError(kind)
    ip = {}
    for i, h in enumerate(site_dims):
        ip[f"{2 * i + 1}.to_k_ip.weight"] = t(h, ctx)
        ip[f"{2 * i + 1}.to_v_ip.weight"] = t(h, ctx)
    return p, ip


def published(name: str, device: str = "meta", dtype: torch.dtype = torch.float16):
    kind, ctx, enc, tokens, rdim, rheads, sites = PUBLISHED[name]
    return adapter_parts(kind, ctx=ctx, encoder_dim=enc, site_dims=sites, tokens=tokens, resampler_dim=rdim,
                         resampler_heads=rheads, device=device, dtype=dtype)


def save_adapter(path: str, image_proj, ip_adapter, *, fmt: str | None = None) -> str:
    """Write parts as a published file: flat prefixed safetensors, or a nested {'image_proj', 'ip_adapter'} .bin."""
    fmt = fmt or ("bin" if path.endswith(".bin") else "safetensors")
    if fmt == "bin":
        torch.save({"image_proj": dict(image_proj), "ip_adapter": dict(ip_adapter)}, path)
    else:
        from safetensors.torch import save_file

        flat = {f"image_proj.{k}": v.contiguous() for k, v in image_proj.items()}
        flat.update({f"ip_adapter.{k}": v.contiguous() for k, v in ip_adapter.items()})
        save_file(flat, path)
    return path


# The incumbent's layer index t of each (block, block_id) SpatialTransformer on the SD1.5 / SDXL reference layouts
# (incumbent-and-users.md §1.4), written out by hand for the weight-table tests.
SD15_T = {("input", 1): 0, ("input", 2): 1, ("input", 4): 2, ("input", 5): 3, ("input", 7): 4, ("input", 8): 5,
          ("middle", 0): 6, ("output", 3): 7, ("output", 4): 8, ("output", 5): 9, ("output", 6): 10,
          ("output", 7): 11, ("output", 8): 12, ("output", 9): 13, ("output", 10): 14, ("output", 11): 15}
SDXL_T = {("input", 4): 0, ("input", 5): 1, ("input", 7): 2, ("input", 8): 3, ("middle", 0): 4, ("output", 0): 5,
          ("output", 1): 6, ("output", 2): 7, ("output", 3): 8, ("output", 4): 9, ("output", 5): 10}


def write_sparse_safetensors(path, shapes: dict) -> str:
    """A valid fp16 safetensors file with the given tensor shapes (name -> shape) whose data is a hole (reads as
    zeros; no disk used, nothing to read): header-scan tests of published sizes."""
    import json
    import struct

    header, offset = {}, 0
    for key, shape in shapes.items():
        n = 2
        for d in shape:
            n *= d
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return str(path)


def diffusers_tiny_unet(cross_attention_dim: int):
    """A tiny diffusers UNet2DConditionModel (seed 0) whose ip-adapter conversion the projection oracles call."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
    ).eval()
