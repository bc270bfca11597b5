"""Image projections (base, plus, full face) and the per-site to_k_ip / to_v_ip layers (the FaceID projections, built
from these pieces, are in families/faceid.py).

Modules are built on the meta device and take the loaded tensors by assignment, so a file's weights are held once.
Their layers cast weights to the input's dtype and device at call time, so one stored copy (usually the file's fp16)
serves fp32, fp16 and bf16 callers.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import NotAnIPAdapterError
from .spec import AdapterSpec

LN_EPS = 1e-5


class CastLinear(nn.Module):
    """Linear whose weight is cast to the input's dtype/device at call time. x: (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x)
        return F.linear(x, self.weight.to(x), b)


class CastLayerNorm(nn.Module):
    """Affine LayerNorm (eps 1e-5) with weights cast to the input at call time."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight.to(x), self.bias.to(x), LN_EPS)


class ImageProj(nn.Module):
    """Base adapters: y = LN(reshape(e W^T + b, [B, T, C])). e: (B, E) -> (B, T, C)."""

    def __init__(self, *, encoder_dim: int, context_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = CastLinear(encoder_dim, num_tokens * context_dim)
        self.norm = CastLayerNorm(context_dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(e).reshape(e.shape[0], self.num_tokens, -1))


class MLPTokens(nn.Module):
    """y = LN_C(reshape(proj.2(GELU(proj.0(e))), [B, T, C])), exact (erf) GELU, hidden 2E, LayerNorm eps 1e-5: the
    MLP projection of FaceID / portrait (families/faceid.py) and InstantX Flux (families/flux_instantx.py), keys
    ``proj.0.*``, ``proj.2.*``, ``norm.*``. e: (B, E) -> (B, T, C); weights cast to e's dtype and device at call time."""

    def __init__(self, *, encoder_dim: int, context_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(CastLinear(encoder_dim, 2 * encoder_dim), nn.GELU(),
                                  CastLinear(2 * encoder_dim, num_tokens * context_dim))
        self.norm = CastLayerNorm(context_dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(e).reshape(e.shape[0], self.num_tokens, -1))


class MLPProj(nn.Module):
    """Full face: token-wise LN(GELU(h W0^T + b0) W2^T + b2). h: (B, N, E) -> (B, N, C)."""

    def __init__(self, *, encoder_dim: int, context_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            CastLinear(encoder_dim, encoder_dim), nn.GELU(), CastLinear(encoder_dim, context_dim), CastLayerNorm(context_dim)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


class PerceiverAttention(nn.Module):
    """Latents attend over [features; latents]; dim_head 64, no bias, softmax in fp32 as the reference does."""

    def __init__(self, *, dim: int, heads: int, dim_head: int = 64) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm1 = CastLayerNorm(dim)
        self.norm2 = CastLayerNorm(dim)
        self.to_q = CastLinear(dim, inner, bias=False)
        self.to_kv = CastLinear(dim, 2 * inner, bias=False)
        self.to_out = CastLinear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) features, latents: (B, Q, D) -> (B, Q, D) (without the residual)."""
        x, latents = self.norm1(x), self.norm2(latents)
        b, q_len, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=1)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, -1, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        scale = self.dim_head ** -0.25
        w = (q * scale) @ (k * scale).transpose(-2, -1)
        w = torch.softmax(w.float(), dim=-1).to(w.dtype)
        out = (w @ v).transpose(1, 2).reshape(b, q_len, -1)
        return self.to_out(out)


def perceiver_layers(*, dim: int, heads: int, depth: int) -> nn.ModuleList:
    """The ``depth`` (attention, feed-forward x4) pairs of a Perceiver resampler, keys ``layers.i.0.*`` / ``layers.i.1.*``."""
    return nn.ModuleList(
        nn.ModuleList([
            PerceiverAttention(dim=dim, heads=heads),
            nn.Sequential(CastLayerNorm(dim), CastLinear(dim, 4 * dim, bias=False), nn.GELU(), CastLinear(4 * dim, dim, bias=False)),
        ])
        for _ in range(depth)
    )


def run_perceiver(layers: nn.ModuleList, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """latents (B, Q, D) after every layer over the projected features x (B, N, D), residuals included."""
    for attn, ff in layers:
        latents = attn(x, latents) + latents
        latents = ff(latents) + latents
    return latents


class Resampler(nn.Module):
    """Plus adapters: Perceiver resampler. x: (B, N, E) penultimate CLIP states -> (B, Q, C)."""

    def __init__(self, *, encoder_dim: int, dim: int, heads: int, depth: int, num_queries: int, context_dim: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.empty(1, num_queries, dim), requires_grad=False)
        self.proj_in = CastLinear(encoder_dim, dim)
        self.proj_out = CastLinear(dim, context_dim)
        self.norm_out = CastLayerNorm(context_dim)
        self.layers = perceiver_layers(dim=dim, heads=heads, depth=depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.to(x).expand(x.shape[0], -1, -1)
        return self.norm_out(self.proj_out(run_perceiver(self.layers, self.proj_in(x), latents)))


class SiteLayers(nn.Module):
    """to_k_ip / to_v_ip of one cross-attention site: Linear(context -> hidden), no bias."""

    def __init__(self, *, context_dim: int, hidden: int) -> None:
        super().__init__()
        self.to_k_ip = CastLinear(context_dim, hidden, bias=False)
        self.to_v_ip = CastLinear(context_dim, hidden, bias=False)


class IPAdapterModel(nn.Module):
    """One adapter file: ``image_proj`` plus ``sites[i]`` for checkpoint layer N = 2i + 1."""

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__()
        self.spec = spec
        from .families.registry import build_projection  # the families build it from the modules above

        self.image_proj = build_projection(spec)
        self.sites = nn.ModuleList(SiteLayers(context_dim=spec.cross_attention_dim, hidden=h) for h in spec.site_dims)

    @classmethod
    def from_parts(cls, spec: AdapterSpec, image_proj: Mapping[str, torch.Tensor], ip_adapter: Mapping[str, torch.Tensor],
                   *, name: str = "the file") -> "IPAdapterModel":
        """Build on the meta device and assign the given tensors (no copy); strict key check with a readable error."""
        with torch.device("meta"):
            model = cls(spec)
        state = {f"image_proj.{k}": v for k, v in image_proj.items()}
        for key, value in ip_adapter.items():
            n, _, rest = key.partition(".")
            if n.isdigit() and rest in ("to_k_ip.weight", "to_v_ip.weight"):
                state[f"sites.{(int(n) - 1) // 2}.{rest}"] = value
        try:
            result = model.load_state_dict(state, strict=False, assign=True)
        except RuntimeError as e:  # a tensor whose shape detection did not look at
            detail = str(e).split("\n\t", 1)[-1].strip()
            raise NotAnIPAdapterError(f"{name} does not match the {spec.describe()} layout: {detail}") from None
        if result.missing_keys or result.unexpected_keys:
            raise NotAnIPAdapterError(
                f"{name} does not match the {spec.describe()} layout: missing {result.missing_keys[:4]}, "
                f"unexpected {result.unexpected_keys[:4]}."
            )
        return model.eval()

    def project(self, features) -> torch.Tensor:
        """features: (B, E) image embeds or (B, N, E) penultimate states, or the family's own input (FaceID: a
        ``families.faceid.FaceFeatures``) -> tokens (B, T, C), in the features' dtype."""
        with torch.no_grad():
            return self.image_proj(features)

    def site_kv(self, index: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, T, C) -> K', V' (B, T, hidden) for site ``index`` (N = 2 * index + 1)."""
        site = self.sites[index]
        with torch.no_grad():
            return site.to_k_ip(tokens), site.to_v_ip(tokens)
