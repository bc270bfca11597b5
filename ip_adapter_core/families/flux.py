"""The XLabs Flux IP-Adapter (flux-ip-adapter v1: 4 tokens, v2: 16 tokens), patched into Flux's double blocks.

CLIP ViT-L image embeds (B, 768) -> N tokens in the T5 context width (Linear + LayerNorm, the base projection); per
double block i, K = heads(W_k tokens + b_k) and V likewise (these layers have biases, unlike to_k_ip); the block's
term is SDPA(q_img, K, V) over its image query after the QK RMS-norm and before RoPE, heads merged, and the host adds
s * term to the block's image output after its MLP residual (no out-projection, no gate). Single blocks are untouched.
K and V do not depend on the timestep: the host computes them once per image and block (:func:`kv_for_tokens`).

The file is flat: ``ip_adapter_proj_model.{proj,norm}.*`` (checkpoint.split_parts strips that prefix into the
image_proj part) and ``double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}`` (the
ip_adapter part, keys kept as they are, which are also the state-dict keys of :class:`BlockLayers`).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import heads_sdpa
from ..errors import NotAnIPAdapterError
from ..projection import CastLinear, ImageProj
from ..spec import KIND_VERSION_BY_TOKENS, AdapterSpec
from .registry import EncoderNeed, Family, Preset, Tensors, assign_parts, register, tensor_shape

NAME = "xlabs-flux"
KIND = "xlabs"
PROJ_PREFIX = "ip_adapter_proj_model."  # the image_proj part's prefix in the file (for messages)
_K_WEIGHT = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_k_proj\.weight$")
ENCODERS = {768: "CLIP ViT-L"}  # image_embeds width -> the encoder XLabs trained with


def layer_key(block: int, kv: str, param: str) -> str:
    """The file's key of block ``block``'s K ("k") or V ("v") projection ``param`` ("weight" / "bias")."""
    return f"double_blocks.{block}.processor.ip_adapter_double_stream_{kv}_proj.{param}"


def claims(image_proj: Tensors, ip_adapter: Tensors) -> bool:
    return "proj.weight" in image_proj and "norm.weight" in image_proj and any(_K_WEIGHT.match(k) for k in ip_adapter)


def detect(image_proj: Tensors, ip_adapter: Tensors, name: str) -> AdapterSpec:
    """The spec of an XLabs file: widths from the tensors, N = proj rows // norm width, one site per double block.
    NotAnIPAdapterError naming the file and the key for a missing block, tensor or inconsistent shape."""
    (ctx,) = _shape(image_proj, "norm.weight", (None,), name, prefix=PROJ_PREFIX)
    rows, enc = _shape(image_proj, "proj.weight", (None, None), name, prefix=PROJ_PREFIX)
    if rows % ctx or rows < ctx:
        raise NotAnIPAdapterError(f"{name}: '{PROJ_PREFIX}proj.weight' has {rows} rows, not a multiple of the norm "
                                  f"width {ctx}; the file is damaged or not an XLabs Flux IP-Adapter.")
    _shape(image_proj, "proj.bias", (rows,), name, prefix=PROJ_PREFIX)
    _shape(image_proj, "norm.bias", (ctx,), name, prefix=PROJ_PREFIX)
    blocks = 1 + max(int(m.group(1)) for k in ip_adapter if (m := _K_WEIGHT.match(k)))
    hidden = _shape(ip_adapter, layer_key(0, "k", "weight"), (None, ctx), name)[0]
    for i in range(blocks):
        for kv in ("k", "v"):
            _shape(ip_adapter, layer_key(i, kv, "weight"), (hidden, ctx), name)
            _shape(ip_adapter, layer_key(i, kv, "bias"), (hidden,), name)
    return AdapterSpec(kind=KIND, cross_attention_dim=ctx, encoder_input="image_embeds", encoder_dim=enc,
                       num_tokens=rows // ctx, site_dims=(hidden,) * blocks, adapter_family=NAME)


def _shape(part: Tensors, key: str, expected: tuple[int | None, ...], name: str, prefix: str = "") -> tuple[int, ...]:
    return tensor_shape(part, key, expected, name, prefix=prefix, layout="XLabs Flux IP-Adapter")


def build_projection(spec: AdapterSpec) -> nn.Module:
    """Linear(E -> N * ctx), reshape (B, N, ctx), LayerNorm(ctx, eps 1e-5): keys proj.*, norm.* as in the file."""
    return ImageProj(encoder_dim=spec.encoder_dim, context_dim=spec.cross_attention_dim, num_tokens=spec.num_tokens or 0)


def encoder_need(spec: AdapterSpec) -> EncoderNeed:
    label = ENCODERS.get(spec.encoder_dim, f"a CLIP vision model with {spec.encoder_dim}-wide image embeds")
    # the negative image prompt is the embedding of a black image (diffusers' np.zeros image, XLabs' zeros_like)
    return EncoderNeed(kind="clip_vision", output="image_embeds", width=spec.encoder_dim, label=label,
                       uncond="black image")


# ---------------------------------------------------------------------------------------------- the block term

def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads * d) -> (B, heads, T, d), contiguous."""
    b, t, width = x.shape
    if width % heads:
        raise ValueError(f"a width of {width} does not split into {heads} heads")
    return x.reshape(b, t, heads, width // heads).transpose(1, 2).contiguous()


def kv_for_tokens(tokens: torch.Tensor, k_w: torch.Tensor, k_b: torch.Tensor, v_w: torch.Tensor, v_b: torch.Tensor,
                  heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's K and V: tokens (B, T, ctx), k_w / v_w (hidden, ctx), k_b / v_b (hidden,) ->
    K = heads(tokens W_k^T + b_k), V likewise, each (B, heads, T, hidden // heads) in the tokens' dtype and device.
    No norm, no RoPE: they are constant over sampling steps, so the host computes them once per image and block
    (several images of one adapter: their tokens concatenated along T). A strength s may be folded into V.
    (b_k adds q . b_k to every logit of a query alike, so it cancels in the softmax; b_v does not.)"""
    k = F.linear(tokens, k_w.to(tokens), k_b.to(tokens))
    v = F.linear(tokens, v_w.to(tokens), v_b.to(tokens))
    return split_heads(k, heads), split_heads(v, heads)


# One double block's IP term: attention.heads_sdpa(q_img, K, V), q_img the block's image query after its QK RMS-norm
# and BEFORE RoPE (in ComfyUI: img_attn.norm's q; from a post-RoPE joint q: rope.unrope(q, pe), then the image slice),
# K, V from kv_for_tokens; the caller adds s * term to the block's image output (after the MLP residual).
xlabs_image_term = heads_sdpa


class BlockLayers(nn.Module):
    """Every double block's K/V projections (Linear(ctx -> hidden) with bias). Its state-dict keys are the file's
    ip_adapter keys: ``double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}``."""

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__()
        ctx = spec.cross_attention_dim
        self.double_blocks = nn.ModuleList(
            nn.ModuleDict({"processor": nn.ModuleDict({
                "ip_adapter_double_stream_k_proj": CastLinear(ctx, hidden),
                "ip_adapter_double_stream_v_proj": CastLinear(ctx, hidden),
            })})
            for hidden in spec.site_dims
        )

    def kv(self, block: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, ctx) -> K, V (B, T, hidden) of double block ``block``, heads not split."""
        p = self.double_blocks[block]["processor"]
        return p["ip_adapter_double_stream_k_proj"](tokens), p["ip_adapter_double_stream_v_proj"](tokens)


class XLabsModel(nn.Module):
    """One XLabs file: ``image_proj`` (:func:`build_projection`) plus ``layers`` (:class:`BlockLayers`). The same
    calls as projection.IPAdapterModel (project, site_kv) with site index = double block index, so the host's K/V
    cache (attention.site_kv: batch layout, weight folded into V, head split) serves it unchanged."""

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__()
        self.spec = spec
        self.image_proj = build_projection(spec)
        self.layers = BlockLayers(spec)

    @classmethod
    def from_parts(cls, spec: AdapterSpec, image_proj: Mapping[str, torch.Tensor], ip_adapter: Mapping[str, torch.Tensor],
                   *, name: str = "the file") -> "XLabsModel":
        """Built on the meta device and assigned the given tensors (no copy); every key must fit, none may be left."""
        with torch.device("meta"):
            model = cls(spec)
        return assign_parts(model, spec, image_proj, ip_adapter, name=name)

    def project(self, embeds: torch.Tensor) -> torch.Tensor:
        """CLIP image embeds (B, E) -> tokens (B, N, ctx), in the embeds' dtype."""
        with torch.no_grad():
            return self.image_proj(embeds)

    def site_kv(self, index: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, ctx) -> K, V (B, T, hidden) of double block ``index`` (biases included)."""
        with torch.no_grad():
            return self.layers.kv(index, tokens)


# ---------------------------------------------------------------------------------------------- presets

def _version(version: str):
    """Accepts the XLabs files of one published version (v1: 4 tokens, v2: 16 tokens; the tensors tell them apart)."""
    return lambda spec: spec.kind == KIND and KIND_VERSION_BY_TOKENS[KIND].get(spec.num_tokens or 0) == version


# The unified loader's Flux presets (appended to its combo after FaceID's): the file from its tensors, the encoder
# CLIP ViT-L (768-wide image embeds). Both repositories name their file ip_adapter.safetensors.
PRESETS: dict[str, Preset] = {
    "FLUX XLabs v2": Preset("an XLabs Flux v2 adapter (16 tokens)", _version("v2"), "CLIP ViT-L",
                            {"flux": "flux-ip-adapter-v2.safetensors (the ip_adapter.safetensors of "
                                     "XLabs-AI/flux-ip-adapter-v2, renamed)"}),
    "FLUX XLabs v1": Preset("an XLabs Flux v1 adapter (4 tokens)", _version("v1"), "CLIP ViT-L",
                            {"flux": "flux-ip-adapter.safetensors (the ip_adapter.safetensors of "
                                     "XLabs-AI/flux-ip-adapter, renamed)"}),
}

FAMILY = register(Family(name=NAME, label="XLabs Flux adapters", claims=claims, detect=detect,
                         build_projection=build_projection, encoder_need=encoder_need, patch_path="blocks",
                         presets=PRESETS, load_model=XLabsModel.from_parts, site_blocks=("double",)))
