"""InstantX SD3.5 IP-Adapter files made by the tests: random weights in the original key layout, at any size.

Layout (shared/reference/dit-adapters.md §1.3): ``image_proj.`` + the time resampler's keys (latents, proj_in,
proj_out, norm_out, time_embedding.linear_{1,2}, layers.{l}.0.{norm1,norm2,to_q,to_kv,to_out}, layers.{l}.1.{0,1,3},
layers.{l}.2.1; depth 4, FF x4, head width 64) and ``ip_adapter.`` + per joint block i ``{i}.norm_ip.linear``,
``{i}.to_{k,v}_ip``, ``{i}.norm_{q,k,ip_k}``. ``sd3_shapes(...)`` at the published sizes feeds
adapters.write_sparse_safetensors (header-only files); ``sd3_state_dict(...)`` gives small seeded random weights;
``to_diffusers`` gives the dict diffusers' SD3Transformer2DModel._load_ip_adapter_weights takes (it converts the
original resampler keys itself); ``diffusers_tiny_sd3`` builds a tiny SD3 transformer within ComfyUI's MMDiT
constraints (heads == layers, head width 64, RMS qk-norm) with random qk-norm weights.
"""
from __future__ import annotations

import re

import torch

# The published file: SigLIP so400m penultimate states (1152) -> 64 tokens for SD3.5-Large (38 joint blocks of 2432).
SIGLIP, RESAMPLER_DIM, RESAMPLER_HEADS, TOKENS, SD35L_HIDDEN, SD35L_BLOCKS = 1152, 1280, 20, 64, 2432, 38
TIME_DIM, DEPTH, HEAD_DIM = 320, 4, 64
# a tiny adapter for a tiny SD3 transformer of 2 layers x 2 heads x 64 (hidden 128); the encoder width avoids 512,
# the FaceID face-embedding width whose resampler another family claims
TINY = dict(enc=24, dim=128, heads=2, tokens=8, hidden=128, blocks=2)


def sd3_shapes(*, enc: int = SIGLIP, dim: int = RESAMPLER_DIM, heads: int = RESAMPLER_HEADS, tokens: int = TOKENS,
               hidden: int = SD35L_HIDDEN, blocks: int = SD35L_BLOCKS, depth: int = DEPTH,
               ffn: int = 4) -> dict[str, tuple[int, ...]]:
    """{flat file key: shape}, image_proj first. The tokens are ``hidden`` wide (diffusers: ip_hidden_states_dim)."""
    inner = heads * HEAD_DIM
    p = {"latents": (1, tokens, dim), "proj_in.weight": (dim, enc), "proj_in.bias": (dim,),
         "proj_out.weight": (hidden, dim), "proj_out.bias": (hidden,), "norm_out.weight": (hidden,),
         "norm_out.bias": (hidden,), "time_embedding.linear_1.weight": (dim, TIME_DIM),
         "time_embedding.linear_1.bias": (dim,), "time_embedding.linear_2.weight": (dim, dim),
         "time_embedding.linear_2.bias": (dim,)}
    for l in range(depth):
        a, f = f"layers.{l}.0.", f"layers.{l}.1."
        for n in ("norm1", "norm2"):
            p[f"{a}{n}.weight"], p[f"{a}{n}.bias"] = (dim,), (dim,)
        p[f"{a}to_q.weight"], p[f"{a}to_kv.weight"], p[f"{a}to_out.weight"] = (inner, dim), (2 * inner, dim), (dim, inner)
        p[f"{f}0.weight"], p[f"{f}0.bias"] = (dim,), (dim,)
        p[f"{f}1.weight"], p[f"{f}3.weight"] = (ffn * dim, dim), (dim, ffn * dim)
        p[f"layers.{l}.2.1.weight"], p[f"layers.{l}.2.1.bias"] = (4 * dim, dim), (4 * dim,)
    ip = {}
    for i in range(blocks):
        ip[f"{i}.norm_ip.linear.weight"], ip[f"{i}.norm_ip.linear.bias"] = (2 * hidden, dim), (2 * hidden,)
        ip[f"{i}.to_k_ip.weight"], ip[f"{i}.to_v_ip.weight"] = (hidden, hidden), (hidden, hidden)
        for n in ("norm_q", "norm_k", "norm_ip_k"):
            ip[f"{i}.{n}.weight"] = (HEAD_DIM,)
    return {**{f"image_proj.{k}": v for k, v in p.items()}, **{f"ip_adapter.{k}": v for k, v in ip.items()}}


_NORM_WEIGHT = re.compile(r"(layers\.\d+\.0\.norm[12]|layers\.\d+\.1\.0|norm_out|\d+\.norm_(q|k|ip_k))\.weight$")


def sd3_state_dict(*, seed: int = 0, dtype: torch.dtype = torch.float32, **sizes) -> dict[str, torch.Tensor]:
    """Flat random weights (seeded): weights std 1/sqrt(fan_in), biases 0.1 randn, norm weights 1 + 0.2 randn (never
    0), latents std 1/sqrt(dim); ``sizes`` as sd3_shapes (published sizes by default: use TINY in tests)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in sd3_shapes(**sizes).items():
        if _NORM_WEIGHT.search(key):
            value = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif key.endswith(".bias"):
            value = 0.1 * torch.randn(shape, generator=g)
        else:
            value = torch.randn(shape, generator=g) * shape[-1] ** -0.5
        out[key] = value.to(dtype)
    return out


def save_sd3(path, state_dict: dict[str, torch.Tensor]) -> str:
    """A flat ``image_proj.`` / ``ip_adapter.`` state dict as .safetensors (the layout diffusers also reads)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return str(path)


def save_sd3_bin(path, state_dict: dict[str, torch.Tensor]) -> str:
    """The published ``ip-adapter.bin`` layout: a torch pickle {"image_proj": {...}, "ip_adapter": {...}}."""
    torch.save(to_diffusers(state_dict), str(path))
    return str(path)


def write_sd3(path, *, seed: int = 0, **sizes) -> str:
    """A tiny random file (TINY sizes unless given), .bin when ``path`` ends so, else .safetensors."""
    sd = sd3_state_dict(seed=seed, **{**TINY, **sizes})
    return save_sd3_bin(path, sd) if str(path).endswith(".bin") else save_sd3(path, sd)


def to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The two parts without their prefixes, original keys kept: what _load_ip_adapter_weights takes (and the
    published .bin holds)."""
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state_dict.items():
        part, rest = key.split(".", 1)
        out[part][rest] = value
    return out


def diffusers_tiny_sd3(*, num_layers: int = 2, joint_attention_dim: int = 32, pooled_projection_dim: int = 16,
                       seed: int = 0):
    """A tiny diffusers SD3Transformer2DModel as ComfyUI's MMDiT can also hold it (num_layers == heads, head width
    64, qk_norm "rms_norm"), seeded, in eval mode; its qk-norm weights random (1 + 0.3 randn, none 0), so a recovery
    of the adapter's norms from the model's normed q / k is really tested."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=num_layers, attention_head_dim=HEAD_DIM,
        num_attention_heads=num_layers, joint_attention_dim=joint_attention_dim, caption_projection_dim=64 * num_layers,
        pooled_projection_dim=pooled_projection_dim, out_channels=16, pos_embed_max_size=32, qk_norm="rms_norm",
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=g))
    return model
