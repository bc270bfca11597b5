"""The InstantX FLUX.1-dev IP-Adapter (128 tokens from SigLIP so400m's pooled output), patched into every Flux block.

SigLIP pooler output e (B, 1152) -> tokens = LayerNorm_ctx(reshape(W2 GELU_exact(W1 e + b1) + b2, [128, ctx])) in the
T5 context width ctx = 4096 (:class:`~ip_adapter_core.projection.MLPTokens`, keys ``proj.0.*``, ``proj.2.*``, ``norm.*``). Per site i,
K = RMSNorm(heads(W_k tokens)) and V = RMSNorm(heads(W_v tokens)): no biases, and the RMSNorm (no weight, eps 1e-5,
statistics in float32) runs over each head's 128 values, V included, as in the reference processor
(Shakker-Labs' ``IPAFluxAttnProcessor2_0``, a copy of InstantX's: ``RMSNorm(128)`` on ``B H L D`` tensors). The
block's term is SDPA(q, K, V) over its query after the QK RMS-norm and BEFORE RoPE: the image tokens of a double block,
every token (text + image) of a single block; the host adds s * term to the attention output at those positions, i.e.
before ``img_attn.proj`` (double) or before ``linear2`` (single), so the block's projection, gate and MLP see it.
K and V do not depend on the timestep: the host computes them once per image and site (:meth:`InstantXModel.site_kv`).

Sites: the file's ``ip_adapter.{i}`` for i = 0 .. 56 are the 19 double blocks, then the 38 single blocks
(:func:`site_kinds`). The file is a nested torch pickle ``{"image_proj": {...}, "ip_adapter": {...}}``
(checkpoint.split_parts splits it like any h94 file); the SD files also have ``{N}.to_k_ip.weight`` keys, but
numbered 1, 3, 5, ... (attn2 processors), never 0, which is how this family tells its files apart from full-face,
FaceID and portrait files that share the MLP's key names. shared/reference/dit-adapters.md §1.2.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import heads_sdpa
from ..errors import IncompatibleError, NotAnIPAdapterError
from ..projection import CastLinear, MLPTokens
from ..spec import AdapterSpec
from .registry import EncoderNeed, Family, Preset, Tensors, assign_parts, register, tensor_shape

NAME = "instantx-flux"
KIND = "instantx_flux"
HEAD_DIM = 128  # the reference's RMSNorm(128): Flux.1's head width, the group the K/V norm runs over
RMS_EPS = 1e-5
FLUX_DOUBLE_BLOCKS = 19  # Flux.1-dev; the model at hand decides (site_kinds)
ENCODERS = {1152: "SigLIP so400m (pooled)"}  # pooled width -> the encoder InstantX trained with
_SITE = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")
_PROJ_KEYS = ("proj.0.", "proj.2.", "norm.")


def claims(image_proj: Tensors, ip_adapter: Tensors) -> bool:
    """The MLP projection's keys only (proj.0 / proj.2 / norm, no full-face proj.3, no perceiver), and site layers
    numbered from 0 (``0.to_k_ip.weight``) without biases, LoRA or SD3.5's norm_ip."""
    return (all(k in image_proj for k in ("proj.0.weight", "proj.2.weight", "norm.weight"))
            and all(k.startswith(_PROJ_KEYS) for k in image_proj)
            and "0.to_k_ip.weight" in ip_adapter
            and not any(".norm_ip." in k or k.endswith("_ip.bias") or "_lora." in k for k in ip_adapter))


def detect(image_proj: Tensors, ip_adapter: Tensors, name: str) -> AdapterSpec:
    """The spec of an InstantX Flux file: E = proj.0 in-width, ctx = norm width, tokens = proj.2 rows // ctx, one site
    per ``{i}.to_k_ip`` (i = 0 .. n-1, all of one width). NotAnIPAdapterError naming the file and the key otherwise."""
    (ctx,) = _shape(image_proj, "norm.weight", (None,), name, prefix="image_proj.")
    _shape(image_proj, "norm.bias", (ctx,), name, prefix="image_proj.")
    mid, enc = _shape(image_proj, "proj.0.weight", (None, None), name, prefix="image_proj.")
    if mid != 2 * enc:
        raise NotAnIPAdapterError(f"{name}: 'image_proj.proj.0.weight' is shaped {(mid, enc)}; the InstantX Flux "
                                  f"projection's first layer is (2 * {enc}, {enc}). The file is damaged.")
    _shape(image_proj, "proj.0.bias", (mid,), name, prefix="image_proj.")
    rows, _ = _shape(image_proj, "proj.2.weight", (None, mid), name, prefix="image_proj.")
    if rows % ctx or rows < ctx:
        raise NotAnIPAdapterError(f"{name}: 'image_proj.proj.2.weight' has {rows} rows, not a multiple of the norm "
                                  f"width {ctx}; the file is damaged or not an InstantX Flux IP-Adapter.")
    _shape(image_proj, "proj.2.bias", (rows,), name, prefix="image_proj.")
    sites = 1 + max(int(m.group(1)) for k in ip_adapter if (m := _SITE.match(k)))
    hidden = _shape(ip_adapter, "0.to_k_ip.weight", (None, ctx), name, prefix="ip_adapter.")[0]
    for i in range(sites):
        for kv in ("k", "v"):
            _shape(ip_adapter, f"{i}.to_{kv}_ip.weight", (hidden, ctx), name, prefix="ip_adapter.")
    return AdapterSpec(kind=KIND, cross_attention_dim=ctx, encoder_input="pooled", encoder_dim=enc,
                       num_tokens=rows // ctx, site_dims=(hidden,) * sites, adapter_family=NAME)


def _shape(part: Tensors, key: str, expected: tuple[int | None, ...], name: str, prefix: str = "") -> tuple[int, ...]:
    return tensor_shape(part, key, expected, name, prefix=prefix, layout="InstantX Flux IP-Adapter")


def site_kinds(spec: AdapterSpec, double_blocks: int, single_blocks: int | None = None) -> tuple[tuple[str, int], ...]:
    """(block kind, block index) of each site in file order: site i < double_blocks is ("double", i), site
    double_blocks + j is ("single", j). IncompatibleError when the model's blocks do not add up to the file's sites
    (single_blocks None: only the double count is checked against the site count)."""
    n = spec.num_sites
    singles = n - double_blocks if single_blocks is None else single_blocks
    if double_blocks < 0 or singles < 0 or double_blocks + singles != n:
        raise IncompatibleError(f"the adapter ({spec.describe()}) has {n} sites, one per Flux block, but the model has "
                                f"{double_blocks} double and {single_blocks if single_blocks is not None else '?'} "
                                f"single blocks; it was made for a model with {n} blocks in all (the published "
                                f"file: Flux.1-dev's {FLUX_DOUBLE_BLOCKS} double + 38 single).")
    return tuple(("double", i) for i in range(double_blocks)) + tuple(("single", j) for j in range(singles))


# ---------------------------------------------------------------------------------------------- the projection

def build_projection(spec: AdapterSpec) -> nn.Module:
    return MLPTokens(encoder_dim=spec.encoder_dim, context_dim=spec.cross_attention_dim,
                     num_tokens=spec.num_tokens or 0)


def encoder_need(spec: AdapterSpec) -> EncoderNeed:
    label = ENCODERS.get(spec.encoder_dim, f"a SigLIP vision model with a {spec.encoder_dim}-wide pooled output")
    # the reference has no negative image prompt; a black image's embedding, as diffusers' Flux pipelines build it
    return EncoderNeed(kind="clip_vision", output="pooled", width=spec.encoder_dim, label=label, uncond="black image")


# ---------------------------------------------------------------------------------------------- the block term

def rms_heads(x: torch.Tensor, head_dim: int = HEAD_DIM, eps: float = RMS_EPS) -> torch.Tensor:
    """x (..., heads * head_dim) -> x / sqrt(mean over each head's head_dim values of x^2 + eps), no weight;
    statistics in float32 (diffusers' RMSNorm), result in x's dtype and shape."""
    if x.shape[-1] % head_dim:
        raise ValueError(f"a width of {x.shape[-1]} does not split into heads of {head_dim}")
    g = x.float().unflatten(-1, (-1, head_dim))
    return (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2).to(x.dtype)


def instantx_kv(tokens: torch.Tensor, k_w: torch.Tensor, v_w: torch.Tensor,
                heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One site's K and V: tokens (B, T, ctx), k_w / v_w (hidden, ctx) -> K = RMSNorm(heads(tokens W_k^T)), V likewise,
    each (B, heads, T, hidden // heads) in the tokens' dtype. Constant over steps: computed once per image and site.
    A strength s may be folded into V afterwards (SDPA is linear in V), never before the norm."""
    k = rms_heads(F.linear(tokens, k_w.to(tokens)), k_w.shape[0] // heads)
    v = rms_heads(F.linear(tokens, v_w.to(tokens)), v_w.shape[0] // heads)
    b, t, _ = tokens.shape
    return (k.reshape(b, t, heads, -1).transpose(1, 2).contiguous(),
            v.reshape(b, t, heads, -1).transpose(1, 2).contiguous())


# One double / single block's term: SDPA(q, K, V) with heads merged, the same attention as XLabs' (only where it is
# added differs: before img_attn.proj / linear2, at the image rows of a double block or every row of a single one).
instantx_term = heads_sdpa


class InstantXModel(nn.Module):
    """One InstantX file: ``image_proj`` (:class:`~ip_adapter_core.projection.MLPTokens`) plus ``layers.{i}.to_{k,v}_ip`` (bias-free). The calls
    of projection.IPAdapterModel (project, site_kv), so the host's K/V cache (attention.site_kv: batch layout, weight
    folded into V, head split) serves it unchanged; site_kv returns K and V already normalised per head.
    ``head_dim``: the width the K/V norm groups (128, the reference's; a test model with other heads sets its own).
    NORMS_PER_HEAD: the host passes its model's head width to site_kv (nodes/patch/run.py)."""

    NORMS_PER_HEAD = True

    def __init__(self, spec: AdapterSpec, *, head_dim: int = HEAD_DIM) -> None:
        super().__init__()
        self.spec = spec
        self.head_dim = head_dim
        self.image_proj = build_projection(spec)
        ctx = spec.cross_attention_dim
        self.layers = nn.ModuleList(
            nn.ModuleDict({"to_k_ip": CastLinear(ctx, hidden, bias=False),
                           "to_v_ip": CastLinear(ctx, hidden, bias=False)})
            for hidden in spec.site_dims
        )

    @classmethod
    def from_parts(cls, spec: AdapterSpec, image_proj: Mapping[str, torch.Tensor],
                   ip_adapter: Mapping[str, torch.Tensor], *, name: str = "the file",
                   head_dim: int = HEAD_DIM) -> "InstantXModel":
        """Built on the meta device and assigned the given tensors (no copy); every key must fit, none may be left."""
        with torch.device("meta"):
            model = cls(spec, head_dim=head_dim)
        return assign_parts(model, spec, image_proj, ip_adapter, name=name)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """SigLIP pooled output (B, E) -> tokens (B, T, ctx), in its dtype."""
        with torch.no_grad():
            return self.image_proj(pooled)

    def site_kv(self, index: int, tokens: torch.Tensor, *,
                head_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, ctx) -> K, V (B, T, hidden) of site ``index``, each RMS-normalised per head of ``head_dim``
        (default: the model's) and merged back; the host splits them into heads of the same width."""
        layer = self.layers[index]
        d = head_dim or self.head_dim
        with torch.no_grad():
            return rms_heads(layer["to_k_ip"](tokens), d), rms_heads(layer["to_v_ip"](tokens), d)


# The unified loader's preset (appended to its combo after the XLabs ones): the file from its tensors, the encoder a
# SigLIP file that gives the pooled output (1152 wide, its pooling head in the file: the full model.safetensors).
PRESETS: dict[str, Preset] = {
    "FLUX InstantX": Preset("an InstantX Flux adapter", lambda spec: spec.kind == KIND, "SigLIP so400m",
                            {"flux": "flux-ip-adapter-instantx.bin (the ip-adapter.bin of "
                                     "InstantX/FLUX.1-dev-IP-Adapter, renamed)"}),
}

FAMILY = register(Family(name=NAME, label="InstantX Flux adapters", claims=claims, detect=detect,
                         build_projection=build_projection, encoder_need=encoder_need, patch_path="blocks",
                         presets=PRESETS, load_model=InstantXModel.from_parts, site_blocks=("double", "single"),
                         block_term="inside"), first=True)
