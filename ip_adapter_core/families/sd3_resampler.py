"""The InstantX SD3.5 IP-Adapter's time-conditioned resampler ("TimeResampler"; diffusers'
IPAdapterTimeImageProjection), with the file's image_proj keys as its state-dict keys (the original layout).

SigLIP penultimate states (B, N, E) and the model timestep t = 1000 * sigma (B,) -> tokens (B, Q, C) and the timestep
embedding temb (B, D) that every joint block's norm_ip also reads:
    temb = linear_2(SiLU(linear_1([cos | sin](t * 10000^(-k / 160)), k < 160)))     # 320-d, flip_sin_to_cos, shift 0
    x = proj_in(features) + temb;  lat = latents
    4 times: (sh1, sc1, sh2, sc2) = adaLN(SiLU(temb)).chunk(4)
             lat += to_out(attn(q = to_q(m), kv = to_kv([norm1(x); m])))  with m = norm2(lat) * (1 + sc1) + sh1
             lat += FF(ln(lat) * (1 + sc2) + sh2)                          # Linear D -> 4D, exact GELU, Linear
    tokens = norm_out(proj_out(lat))
Keys: latents, proj_in.*, proj_out.*, norm_out.*, time_embedding.linear_{1,2}.*, and per layer l
``layers.l.0.{norm1,norm2,to_q,to_kv,to_out}`` (attention), ``layers.l.1.{0,1,3}`` (LayerNorm, FF), ``layers.l.2.1``
(the adaLN linear, 4 chunks). Depth 4, FF ratio 4 and head width 64 are fixed by the reference (diffusers hard-codes
them); families/sd3.py refuses a file that differs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..projection import CastLayerNorm, CastLinear, PerceiverAttention

TIME_DIM = 320  # width of the sinusoidal timestep features (time_embedding.linear_1's input)
DEPTH, FFN_RATIO, HEAD_DIM = 4, 4, 64
MAX_PERIOD = 10000


def timestep_embedding(timestep: torch.Tensor, dim: int = TIME_DIM) -> torch.Tensor:
    """diffusers' Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0): t (B,) -> [cos | sin] (B, dim), float32.
    Frequencies 10000^(-k / (dim / 2)), k = 0 .. dim / 2 - 1; t is the model timestep (1000 * sigma for SD3.5)."""
    if timestep.dim() != 1:
        raise ValueError(f"the timestep must be one value per batch row (B,), got shape {tuple(timestep.shape)}")
    half = dim // 2
    exponent = -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    angle = timestep[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)


class TimeAttention(PerceiverAttention):
    """The Perceiver attention (keys norm1, norm2, to_q, to_kv, to_out; head width 64, scores (q D^-1/4)(k D^-1/4),
    softmax in fp32) with the latents' LayerNorm modulated by the timestep: norm2(lat) * (1 + scale) + shift."""

    def forward(self, x: torch.Tensor, latents: torch.Tensor, shift: torch.Tensor,  # type: ignore[override]
                scale: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) projected features, latents (B, Q, D), shift / scale (B, D) -> (B, Q, D), residual excluded."""
        x = self.norm1(x)
        latents = self.norm2(latents) * (1 + scale[:, None]) + shift[:, None]
        b, q_len, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=1)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, -1, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        s = self.dim_head ** -0.25
        w = (q * s) @ (k * s).transpose(-2, -1)
        w = torch.softmax(w.float(), dim=-1).to(w.dtype)
        return self.to_out((w @ v).transpose(1, 2).reshape(b, q_len, -1))


class TimeResampler(nn.Module):
    """The resampler of one file. encoder_dim E (proj_in's input), dim D (latents), heads (to_q rows / 64),
    num_queries Q, context_dim C (proj_out's output = the SD3.5 hidden width, 2432 for Large). Built empty (meta)."""

    def __init__(self, *, encoder_dim: int, dim: int, heads: int, num_queries: int, context_dim: int,
                 depth: int = DEPTH) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.empty(1, num_queries, dim), requires_grad=False)
        self.proj_in = CastLinear(encoder_dim, dim)
        self.proj_out = CastLinear(dim, context_dim)
        self.norm_out = CastLayerNorm(context_dim)
        self.time_embedding = nn.ModuleDict({"linear_1": CastLinear(TIME_DIM, dim), "linear_2": CastLinear(dim, dim)})
        self.layers = nn.ModuleList(
            nn.ModuleList([
                TimeAttention(dim=dim, heads=heads, dim_head=HEAD_DIM),
                nn.Sequential(CastLayerNorm(dim), CastLinear(dim, FFN_RATIO * dim, bias=False), nn.GELU(),
                              CastLinear(FFN_RATIO * dim, dim, bias=False)),
                nn.Sequential(nn.SiLU(), CastLinear(dim, 4 * dim)),
            ])
            for _ in range(depth)
        )

    def embed_time(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t (B,) -> temb (B, D) in ``dtype``: the sinusoid (fp32, cast as diffusers does), linear_1, SiLU, linear_2."""
        t = timestep_embedding(timestep).to(dtype)
        return self.time_embedding["linear_2"](F.silu(self.time_embedding["linear_1"](t)))

    def forward(self, features: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, N, E), timestep (B,) = 1000 * sigma -> tokens (B, Q, C), temb (B, D), in the features' dtype."""
        if features.dim() != 3 or timestep.shape != (features.shape[0],):
            raise ValueError(f"the time resampler takes features (B, N, E) and one timestep per row (B,); got "
                             f"{tuple(features.shape)} and {tuple(timestep.shape)}")
        temb = self.embed_time(timestep.to(features.device), features.dtype)
        x = self.proj_in(features) + temb[:, None]
        latents = self.latents.to(features).expand(features.shape[0], -1, -1)
        for attn, ff, ada in self.layers:
            shift_msa, scale_msa, shift_mlp, scale_mlp = ada(temb).chunk(4, dim=-1)
            latents = attn(x, latents, shift_msa, scale_msa) + latents
            h = ff[0](latents) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            latents = ff[3](ff[2](ff[1](h))) + latents
        return self.norm_out(self.proj_out(latents)), temb
