"""XLabs Flux IP-Adapter files made by the tests: random weights in the published flat key layout, at any size.

Layout (shared/reference/dit-adapters.md §1.1): ``ip_adapter_proj_model.proj.weight`` (N * ctx, clip) / ``.bias``,
``ip_adapter_proj_model.norm.weight`` / ``.bias`` (ctx), and per double block i
``double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.weight`` (hidden, ctx) / ``.bias`` (hidden).
``xlabs_shapes(...)`` at the published sizes feeds adapters.write_sparse_safetensors (header-only files);
``xlabs_state_dict(...)`` gives small seeded random weights; ``to_diffusers`` converts them as diffusers'
FluxIPAdapterMixin.load_ip_adapter does, for the diffusers oracle (``diffusers_tiny_flux``).
``flux_ids``, ``comfy_pe`` and ``comfy_apply_rope1``: ComfyUI's Flux RoPE written out (nothing of ComfyUI imported),
the forward rotation that rope.unrope is tested against.
"""
from __future__ import annotations

import torch

# The published files: v1 has 4 tokens, v2 16; both read CLIP ViT-L image embeds into Flux.1-dev's 19 double blocks.
CLIP_L, T5_CTX, FLUX_HIDDEN, FLUX_DOUBLE_BLOCKS = 768, 4096, 3072, 19
PUBLISHED_TOKENS = {"v1": 4, "v2": 16}


def xlabs_shapes(*, tokens: int, clip_dim: int = CLIP_L, ctx: int = T5_CTX, hidden: int = FLUX_HIDDEN,
                 blocks: int = FLUX_DOUBLE_BLOCKS) -> dict[str, tuple[int, ...]]:
    """{file key: shape} of an XLabs file, in the file's order (projection, then block by block)."""
    shapes = {"ip_adapter_proj_model.proj.weight": (tokens * ctx, clip_dim),
              "ip_adapter_proj_model.proj.bias": (tokens * ctx,),
              "ip_adapter_proj_model.norm.weight": (ctx,), "ip_adapter_proj_model.norm.bias": (ctx,)}
    for i in range(blocks):
        for kv in ("k", "v"):
            key = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            shapes[f"{key}.weight"], shapes[f"{key}.bias"] = (hidden, ctx), (hidden,)
    return shapes


def xlabs_state_dict(*, tokens: int, clip_dim: int, ctx: int, hidden: int, blocks: int, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Flat random weights (seeded): std 1/sqrt(fan_in) for weights and biases, LayerNorm weights near 1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in xlabs_shapes(tokens=tokens, clip_dim=clip_dim, ctx=ctx, hidden=hidden, blocks=blocks).items():
        if key == "ip_adapter_proj_model.norm.weight":
            value = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = clip_dim if key.startswith("ip_adapter_proj_model.proj.") else ctx
            value = torch.randn(shape, generator=g) * fan_in ** -0.5
        out[key] = value.to(dtype)
    return out


def save_xlabs(path, state_dict: dict[str, torch.Tensor]) -> str:
    """Write a flat XLabs state dict as .safetensors (the published format)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return str(path)


def write_xlabs(path, *, tokens: int, clip_dim: int = 12, ctx: int = 16, hidden: int = 8, blocks: int = 3,
                seed: int = 0) -> str:
    """A tiny random XLabs file (defaults: 12-wide embeds, 16-wide context, hidden 8, 3 double blocks)."""
    return save_xlabs(path, xlabs_state_dict(tokens=tokens, clip_dim=clip_dim, ctx=ctx, hidden=hidden, blocks=blocks,
                                             seed=seed))


def to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The two dicts diffusers' FluxIPAdapterMixin.load_ip_adapter makes of a flat XLabs file: the first path
    component dropped, ip_adapter_double_stream_{k,v}_proj -> to_{k,v}_ip, "processor." removed."""
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state_dict.items():
        rest = ".".join(key.split(".")[1:])
        if key.startswith("ip_adapter_proj_model."):
            out["image_proj"][rest] = value
        elif key.startswith("double_blocks."):
            rest = (rest.replace("ip_adapter_double_stream_k_proj", "to_k_ip")
                    .replace("ip_adapter_double_stream_v_proj", "to_v_ip").replace("processor.", ""))
            out["ip_adapter"][rest] = value
    return out


def diffusers_tiny_flux(*, num_layers: int = 2, num_single_layers: int = 1, heads: int = 2, head_dim: int = 16,
                        joint_attention_dim: int = 32, pooled_projection_dim: int = 16,
                        axes_dims_rope: tuple[int, int, int] = (4, 6, 6), seed: int = 0):
    """A tiny diffusers FluxTransformer2DModel (in_channels 64, guidance embeds), seeded, in eval mode."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=pooled_projection_dim, guidance_embeds=True, axes_dims_rope=axes_dims_rope,
    ).eval()


def flux_ids(h: int, w: int, *, txt: int) -> torch.Tensor:
    """Position ids (txt + h * w, 3) as both Flux implementations build them: zeros for the text tokens, then
    [0, row, col] for the image tokens, row-major."""
    grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2).float()
    return torch.cat([torch.zeros(txt, 3), torch.cat([torch.zeros(h * w, 1), grid], 1)])


def comfy_pe(ids: torch.Tensor, axes_dim, theta: int = 10000) -> torch.Tensor:
    """ComfyUI's EmbedND + rope (comfy/ldm/flux/layers.py, math.py), written out: ids (B, L, n_axes) ->
    pe (B, 1, L, sum(axes_dim) / 2, 2, 2) of [[cos, -sin], [sin, cos]], float32."""
    parts = []
    for i, dim in enumerate(axes_dim):
        scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64)
        angle = torch.einsum("...n,d->...nd", ids[..., i].to(torch.float64), 1.0 / theta ** scale)
        rot = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], dim=-1)
        parts.append(rot.reshape(*angle.shape, 2, 2).float())
    return torch.cat(parts, dim=-3).unsqueeze(1)


def comfy_apply_rope1(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """comfy.ldm.flux.math.apply_rope1 written out: x (B, heads, L, d), freqs_cis = pe -> x rotated pair by pair."""
    x_ = x.to(dtype=freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    return (freqs_cis[..., 0] * x_[..., 0] + freqs_cis[..., 1] * x_[..., 1]).reshape(*x.shape).type_as(x)
