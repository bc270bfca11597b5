"""The InstantX SD3.5-Large IP-Adapter, patched into the joint blocks of SD3.5's MMDiT (diffusers'
SD3IPAdapterJointAttnProcessor2_0 is the reference).

SigLIP so400m penultimate states (B, N, 1152) and the model timestep t = 1000 * sigma -> (tokens (B, 64, C), temb
(B, 1280)) through the time resampler (sd3_resampler.py). Per joint block i (C = the hidden width, d = 64):
    (shift, scale) = norm_ip.linear(SiLU(temb)).chunk(2)          shift FIRST
    n = LayerNorm(tokens; no affine, eps 1e-6) * (1 + scale) + shift
    K_ip = RMSNorm_{norm_ip_k}(heads(to_k_ip n)),  V_ip = heads(to_v_ip n)                  (:func:`block_ip_kv`)
    term = SDPA(RMSNorm_{norm_q}(q_raw), [RMSNorm_{norm_k}(k_raw); K_ip], [v_raw; V_ip])    (:func:`sd3_image_term`)
over the image (x) tokens only, with q_raw / k_raw / v_raw the block's x-stream projections before the model's own
qk-norm; no text key takes part. The host adds s * term to the x part of the joint attention output, before
x_block.attn.proj and gate_msa (the reference's s is 0.5). Tokens, temb and so every block's K_ip / V_ip change with
sigma: nothing per block can be cached across steps. ComfyUI's attention sees q and k after its RMSNorms ln_q /
ln_k; :func:`recover_raw_normed` turns them into the adapter's norms exactly (:func:`joint_image_term` does it all).
Host side: patch path "joint" (nodes/patch/joint.py); ``step_projection``: IPA_EMBEDS carry the SigLIP features (the
uncond: zeros), projected at every model call.

The file: ``ip-adapter.bin`` ({"image_proj": ..., "ip_adapter": ...}) or flat safetensors with those prefixes;
ip_adapter keys ``{i}.norm_ip.linear.*``, ``{i}.to_{k,v}_ip.weight``, ``{i}.norm_{q,k,ip_k}.weight``.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NotAnIPAdapterError, UnsupportedAdapterError
from ..projection import CastLinear
from ..spec import AdapterSpec
from .registry import EncoderNeed, Family, Tensors, assign_parts, register, tensor_shape
from .sd3_resampler import DEPTH, FFN_RATIO, HEAD_DIM, TIME_DIM, TimeResampler

NAME = "instantx-sd3"
KIND = "instantx_sd3"
BLOCK_HEAD_DIM = 64  # the MMDiT's head width (ComfyUI ties it to 64): the width of norm_q / norm_k / norm_ip_k
NORM_EPS = 1e-6  # norm_ip's LayerNorm and the three RMSNorms (and ComfyUI's ln_q / ln_k)
ENCODERS = {1152: "SigLIP so400m-patch14-384"}  # penultimate width -> the encoder InstantX trained with
_BLOCK = re.compile(r"^(\d+)\.")  # ip_adapter keys start with the joint block index


def claims(image_proj: Tensors, ip_adapter: Tensors) -> bool:
    """The time embedding of its resampler, or the norm_ip of its blocks (no other family has either)."""
    return "time_embedding.linear_1.weight" in image_proj or any(".norm_ip." in k for k in ip_adapter)


def _shape(part: Tensors, key: str, expected: tuple[int | None, ...], name: str, prefix: str = "") -> tuple[int, ...]:
    return tensor_shape(part, key, expected, name, prefix=prefix, layout="InstantX SD3.5 IP-Adapter")


def detect(image_proj: Tensors, ip_adapter: Tensors, name: str) -> AdapterSpec:
    """The spec of an InstantX SD3.5 file: widths from the tensors, one site per joint block. NotAnIPAdapterError
    naming the file and the key for a missing or inconsistent tensor; UnsupportedAdapterError for a resampler whose
    depth or FF ratio is not the reference's (4, 4), which diffusers and this package hard-code."""
    def p(key, *expected):
        return _shape(image_proj, key, expected, name, "image_proj.")

    _, tokens, dim = p("latents", 1, None, None)
    _, enc = p("proj_in.weight", dim, None)
    ctx, _ = p("proj_out.weight", None, dim)
    p("proj_in.bias", dim), p("proj_out.bias", ctx), p("norm_out.weight", ctx), p("norm_out.bias", ctx)
    p("time_embedding.linear_1.weight", dim, TIME_DIM), p("time_embedding.linear_1.bias", dim)
    p("time_embedding.linear_2.weight", dim, dim), p("time_embedding.linear_2.bias", dim)
    depth = len({k.split(".")[1] for k in image_proj if k.startswith("layers.")})
    if depth != DEPTH:
        raise UnsupportedAdapterError(f"{name} is an InstantX SD3.5 IP-Adapter with a {depth}-layer time resampler "
                                      f"('image_proj.layers.*'); the reference has exactly {DEPTH} (diffusers "
                                      "hard-codes it), so this variant is not supported.")
    inner = p("layers.0.0.to_q.weight", None, dim)[0]
    if inner % HEAD_DIM:
        raise NotAnIPAdapterError(f"{name}: 'image_proj.layers.0.0.to_q.weight' has {inner} rows, not a multiple of "
                                  f"the resampler's head width {HEAD_DIM}; the file is damaged.")
    ff = p("layers.0.1.1.weight", None, dim)[0]
    if ff != FFN_RATIO * dim:
        raise UnsupportedAdapterError(f"{name}: 'image_proj.layers.0.1.1.weight' has {ff} rows, an FF ratio other than "
                                      f"the reference's {FFN_RATIO} (x {dim}); this variant is not supported.")
    for l in range(DEPTH):
        a, f = f"layers.{l}.0.", f"layers.{l}.1."
        for n in ("norm1", "norm2"):
            p(f"{a}{n}.weight", dim), p(f"{a}{n}.bias", dim)
        p(f"{a}to_q.weight", inner, dim), p(f"{a}to_kv.weight", 2 * inner, dim), p(f"{a}to_out.weight", dim, inner)
        p(f"{f}0.weight", dim), p(f"{f}0.bias", dim), p(f"{f}1.weight", ff, dim), p(f"{f}3.weight", dim, ff)
        p(f"layers.{l}.2.1.weight", 4 * dim, dim), p(f"layers.{l}.2.1.bias", 4 * dim)

    def b(key, *expected):
        return _shape(ip_adapter, key, expected, name, "ip_adapter.")

    found = [int(m.group(1)) for k in ip_adapter if (m := _BLOCK.match(k))]
    blocks = 1 + max(found) if found else 0
    hidden = b("0.to_k_ip.weight", None, ctx)[0]
    if hidden % BLOCK_HEAD_DIM:
        raise NotAnIPAdapterError(f"{name}: 'ip_adapter.0.to_k_ip.weight' has {hidden} rows, not a multiple of the "
                                  f"head width {BLOCK_HEAD_DIM}; the file is damaged.")
    for i in range(blocks):
        b(f"{i}.norm_ip.linear.weight", 2 * ctx, dim), b(f"{i}.norm_ip.linear.bias", 2 * ctx)
        b(f"{i}.to_k_ip.weight", hidden, ctx), b(f"{i}.to_v_ip.weight", hidden, ctx)
        for n in ("norm_q", "norm_k", "norm_ip_k"):
            b(f"{i}.{n}.weight", BLOCK_HEAD_DIM)
    return AdapterSpec(kind=KIND, cross_attention_dim=ctx, encoder_input="penultimate", encoder_dim=enc,
                       num_tokens=tokens, site_dims=(hidden,) * blocks, resampler_dim=dim,
                       resampler_heads=inner // HEAD_DIM, resampler_depth=depth, adapter_family=NAME)


def build_projection(spec: AdapterSpec) -> nn.Module:
    """The time resampler (empty): forward(features (B, N, E), timestep (B,)) -> (tokens (B, Q, C), temb (B, D))."""
    return TimeResampler(encoder_dim=spec.encoder_dim, dim=spec.resampler_dim, heads=spec.resampler_heads,
                         num_queries=spec.num_tokens, context_dim=spec.cross_attention_dim)


def encoder_need(spec: AdapterSpec) -> EncoderNeed:
    label = ENCODERS.get(spec.encoder_dim, f"a SigLIP vision model with {spec.encoder_dim}-wide hidden states")
    # diffusers' negative image prompt is zeros_like(the features), passed through the resampler like any features
    # SigLIP's processor squashes the image to 384 x 384 (no centre crop, unlike ComfyUI's default)
    return EncoderNeed(kind="clip_vision", output="penultimate", width=spec.encoder_dim, label=label,
                       uncond="zero features", squash=True)


# ---------------------------------------------------------------------------------------------- the block term

def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    b, n, width = x.shape
    if width % heads:
        raise ValueError(f"a width of {width} does not split into {heads} heads")
    return x.reshape(b, n, heads, width // heads).transpose(1, 2)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis, the statistics in fp32 (diffusers' RMSNorm)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight.to(x)


def block_ip_kv(layer: nn.Module, tokens: torch.Tensor, temb: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One joint block's K_ip, V_ip (B, heads, T, d) from tokens (B, T, C) and temb (B, D) of the same rows.
    ``layer``: that block's :class:`JointLayer`. Recompute at every model call: both inputs depend on sigma.
    Several images on one row: their tokens concatenated along T (norm_ip and the projections are per token)."""
    if tokens.shape[0] != temb.shape[0]:
        raise ValueError(f"tokens {tuple(tokens.shape)} and temb {tuple(temb.shape)} must have the same rows")
    shift, scale = layer.norm_ip.linear(F.silu(temb.to(tokens))).chunk(2, dim=-1)
    n = F.layer_norm(tokens, tokens.shape[-1:], eps=NORM_EPS) * (1 + scale[:, None]) + shift[:, None]
    k = rms_norm(_heads(layer.to_k_ip(n), heads), layer.norm_ip_k.weight)
    return k, _heads(layer.to_v_ip(n), heads)


def norm_ratio(w_ln: torch.Tensor, w_ip: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """w_ip / w_ln (d,) in fp32, for :func:`recover_raw_normed`; compute it once per block and norm.

    Both norms are RMSNorms of the same raw vector r: q_ln = r * rsqrt(mean(r^2) + eps) * w_ln, so
    RMSNorm_ip(r) = q_ln / w_ln * w_ip exactly when no w_ln is zero and ``eps`` (the model's) is the adapter's 1e-6.
    ValueError otherwise: the host must then take the raw projection from the block (re-implement it)."""
    if eps != NORM_EPS:
        raise ValueError(f"the model's qk-norm eps {eps} differs from the adapter's {NORM_EPS}: its normed q / k do not "
                         "give the adapter's norms exactly; use the block's raw projections")
    if w_ln.shape != w_ip.shape:
        raise ValueError(f"the model's qk-norm weight {tuple(w_ln.shape)} and the adapter's {tuple(w_ip.shape)} differ "
                         "in head width")
    w_ln = w_ln.detach().float()
    zero = (w_ln == 0).nonzero().flatten().tolist()
    if zero:
        raise ValueError(f"the model's qk-norm weight is 0 at head dims {zero[:8]}: the raw q / k cannot be recovered "
                         "from its output there; use the block's raw projections")
    return w_ip.detach().float().to(w_ln.device) / w_ln


def recover_raw_normed(q_ln: torch.Tensor, w_ln: torch.Tensor, w_ip: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """The adapter's RMSNorm_{w_ip}(q_raw) from the model's q_ln = RMSNorm_{w_ln}(q_raw): q_ln (..., d) * w_ip / w_ln,
    in q_ln's dtype. Exact (see :func:`norm_ratio`, which raises where it is not)."""
    return q_ln * norm_ratio(w_ln, w_ip, eps).to(q_ln)


def sd3_image_term(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_ip: torch.Tensor, v_ip: torch.Tensor) -> torch.Tensor:
    """One joint block's IP term: SDPA(q, [k; K_ip], [v; V_ip]) (scale 1 / sqrt(d), no mask), heads merged.

    q = RMSNorm_{norm_q}(q_raw), k = RMSNorm_{norm_k}(k_raw), v = v_raw: the block's image-token projections
    (B, heads, L_x, d) (no text token); k_ip, v_ip (B, heads, T, d) from :func:`block_ip_kv`. Returns (B, L_x,
    heads * d) in q's dtype; the caller adds s * term to the image part of the joint attention output."""
    if not (q.shape == k.shape == v.shape and k_ip.shape == v_ip.shape and k_ip.shape[:2] == q.shape[:2]
            and k_ip.shape[-1] == q.shape[-1]):
        raise ValueError(f"image term: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, K_ip "
                         f"{tuple(k_ip.shape)}, V_ip {tuple(v_ip.shape)} do not fit (B, heads, L, d)")
    out = F.scaled_dot_product_attention(q, torch.cat([k, k_ip.to(k)], dim=2), torch.cat([v, v_ip.to(v)], dim=2))
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def joint_image_term(q_ln: torch.Tensor, k_ln: torch.Tensor, v: torch.Tensor, k_ip: torch.Tensor, v_ip: torch.Tensor,
                     *, txt_len: int, ratio_q: torch.Tensor, ratio_k: torch.Tensor) -> torch.Tensor:
    """The term from ComfyUI's joint attention inputs: q_ln, k_ln (after ln_q / ln_k), v, each (B, L_ctx + L_x,
    heads * d) with the context first; ratio_q / ratio_k = norm_ratio(ln_q.weight, norm_q.weight) and likewise for k;
    K_ip / V_ip from :func:`block_ip_kv`. Returns (B, L_x, heads * d) for the x part of the output."""
    heads = k_ip.shape[1]
    q, k, vx = (_heads(t[:, txt_len:], heads) for t in (q_ln, k_ln, v))
    return sd3_image_term(q * ratio_q.to(q), k * ratio_k.to(k), vx, k_ip, v_ip)


class _Weight(nn.Module):
    """A norm's weight alone (key ``weight``): the RMSNorms norm_q, norm_k, norm_ip_k."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)


class JointLayer(nn.Module):
    """One joint block's layers, keys as in the file after ``{i}.``: norm_ip.linear (D -> 2C, bias), to_k_ip /
    to_v_ip (C -> hidden, no bias), norm_q / norm_k / norm_ip_k (d)."""

    def __init__(self, *, temb_dim: int, ctx: int, hidden: int) -> None:
        super().__init__()
        self.norm_ip = nn.Module()
        self.norm_ip.linear = CastLinear(temb_dim, 2 * ctx)
        self.to_k_ip = CastLinear(ctx, hidden, bias=False)
        self.to_v_ip = CastLinear(ctx, hidden, bias=False)
        self.norm_q, self.norm_k, self.norm_ip_k = (_Weight(BLOCK_HEAD_DIM) for _ in range(3))


class InstantXSD3Model(nn.Module):
    """One InstantX SD3.5 file: ``image_proj`` (:class:`TimeResampler`) plus ``layers`` (one :class:`JointLayer` per
    joint block; site index = joint block index). Weights stay in the file's dtype and are cast at call time."""

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__()
        self.spec = spec
        self.image_proj = build_projection(spec)
        self.layers = nn.ModuleList(JointLayer(temb_dim=spec.resampler_dim, ctx=spec.cross_attention_dim, hidden=h)
                                    for h in spec.site_dims)

    @classmethod
    def from_parts(cls, spec: AdapterSpec, image_proj: Mapping[str, torch.Tensor], ip_adapter: Mapping[str, torch.Tensor],
                   *, name: str = "the file") -> "InstantXSD3Model":
        """Built on the meta device and assigned the given tensors (no copy); every key must fit, none may be left."""
        with torch.device("meta"):
            model = cls(spec)
        return assign_parts(model, spec, image_proj, ip_adapter, name=name)

    def heads(self, block: int) -> int:
        return self.spec.site_dims[block] // BLOCK_HEAD_DIM

    def project(self, features: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate states (B, N, E) and timestep (B,) = 1000 * sigma -> tokens (B, Q, C), temb (B, D), in the
        features' dtype. The reference uncond is features = zeros (B, N, E) (EncoderNeed.uncond "zero features")."""
        with torch.no_grad():
            return self.image_proj(features, timestep)

    def block_kv(self, block: int, tokens: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K_ip, V_ip (B, heads, T, d) of joint block ``block`` (:func:`block_ip_kv`)."""
        with torch.no_grad():
            return block_ip_kv(self.layers[block], tokens, temb, self.heads(block))

    def norm_ratios(self, block: int, w_ln_q: torch.Tensor, w_ln_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ratio_q, ratio_k) for :func:`joint_image_term`, from the model block's ln_q / ln_k weights (checked)."""
        layer = self.layers[block]
        return norm_ratio(w_ln_q, layer.norm_q.weight), norm_ratio(w_ln_k, layer.norm_k.weight)


FAMILY = register(Family(name=NAME, label="InstantX SD3.5 adapters", claims=claims, detect=detect,
                         build_projection=build_projection, encoder_need=encoder_need, patch_path="joint",
                         load_model=InstantXSD3Model.from_parts, site_blocks=("joint",), step_projection=True))
