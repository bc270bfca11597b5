"""SigLIP's attention-pooling head (MAP), which ComfyUI's CLIP vision loader leaves out, in pure torch.

The InstantX Flux adapter reads HF ``SiglipVisionModel``'s ``pooler_output``. ComfyUI's CLIPVisionLoader drops the
``vision_model.head.*`` keys and gives, for SigLIP, the post-LayerNorm token sequence H (B, 729, 1152) as
``image_embeds`` (= HF's ``last_hidden_state``); the pooler is this head over H:

    a   = MultiheadAttention(probe, H, H)              # torch.nn.MultiheadAttention semantics: one query, heads 16
    out = a + fc2(gelu_tanh(fc1(LayerNorm_eps1e-6(a))))
    pooled = out[:, 0]                                 # (B, 1152)

The host re-reads the SigLIP file for the head's weights (:func:`head_from_state_dict`: the file's
``vision_model.head.*`` keys, that prefix removed, are the state-dict keys of :class:`SiglipPoolingHead`). The head
count is not in the weights: 16 for so400m (ComfyUI's clip_vision_siglip_384.json, HF's config).
shared/reference/dit-adapters.md §1.2 "Image encoder".
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import NotAnIPAdapterError

SO400M_HEADS = 16
LN_EPS = 1e-6  # SiglipVisionConfig.layer_norm_eps
HEAD_PREFIXES = ("vision_model.head.", "head.")  # a file's keys; transformers 5's SiglipVisionModel.state_dict()


class _Attention(nn.Module):
    """torch.nn.MultiheadAttention's parameters (``in_proj_weight`` (3H, H), ``in_proj_bias``, ``out_proj``) and its
    math for a (B, 1, H) query over (B, N, H) keys = values, without its module (weights cast to the input)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden, hidden), requires_grad=False)
        self.in_proj_bias = nn.Parameter(torch.empty(3 * hidden), requires_grad=False)
        self.out_proj = nn.Linear(hidden, hidden)
        self.out_proj.requires_grad_(False)

    def forward(self, query: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        w, b = self.in_proj_weight.to(states), self.in_proj_bias.to(states)
        wq, wk, wv = w.chunk(3)
        bq, bk, bv = b.chunk(3)
        q, k, v = F.linear(query, wq, bq), F.linear(states, wk, bk), F.linear(states, wv, bv)
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  (B, heads, L, d)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)
        return F.linear(out, self.out_proj.weight.to(out), self.out_proj.bias.to(out))


class _MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, intermediate), nn.Linear(intermediate, hidden)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(F.linear(x, self.fc1.weight.to(x), self.fc1.bias.to(x)), approximate="tanh")
        return F.linear(x, self.fc2.weight.to(x), self.fc2.bias.to(x))


class SiglipPoolingHead(nn.Module):
    """HF's SiglipMultiheadAttentionPoolingHead: last hidden state (B, N, H) -> pooled (B, H), in its dtype and
    device (pass float32 for the reference's precision). State-dict keys: ``probe`` (1, 1, H),
    ``attention.in_proj_weight`` / ``in_proj_bias`` / ``out_proj.*``, ``layernorm.*``, ``mlp.fc1.*``, ``mlp.fc2.*``."""

    def __init__(self, *, hidden: int, intermediate: int, heads: int = SO400M_HEADS, eps: float = LN_EPS) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"a width of {hidden} does not split into {heads} heads")
        self.eps = eps
        self.probe = nn.Parameter(torch.empty(1, 1, hidden), requires_grad=False)
        self.attention = _Attention(hidden, heads)
        self.layernorm = nn.LayerNorm(hidden, eps=eps)
        self.layernorm.requires_grad_(False)
        self.mlp = _MLP(hidden, intermediate)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if states.dim() != 3 or states.shape[-1] != self.probe.shape[-1]:
            raise ValueError(f"the SigLIP pooling head reads (B, tokens, {self.probe.shape[-1]}) hidden states, got "
                             f"{tuple(states.shape)}")
        with torch.no_grad():
            a = self.attention(self.probe.to(states).expand(states.shape[0], -1, -1), states)
            ln = self.layernorm
            out = a + self.mlp(F.layer_norm(a, ln.normalized_shape, ln.weight.to(a), ln.bias.to(a), self.eps))
            return out[:, 0]


def head_from_state_dict(state_dict: Mapping[str, torch.Tensor], name: str = "the SigLIP file", *,
                         heads: int = SO400M_HEADS) -> SiglipPoolingHead:
    """The pooling head of a SigLIP vision state dict (a file's keys, ``vision_model.head.*``; or a transformers 5
    ``SiglipVisionModel.state_dict()``'s ``head.*``), built on meta and assigned its tensors (no copy), strictly.
    NotAnIPAdapterError naming ``name`` when the head is missing or does not fit."""
    prefix = next((p for p in HEAD_PREFIXES if f"{p}probe" in state_dict), None)
    if prefix is None:
        raise NotAnIPAdapterError(
            f"{name}: the SigLIP file has no pooling head (vision_model.head.*; 'vision_model.head.probe' is missing), "
            "which the InstantX Flux IP-Adapter reads (SigLIP's pooled output); use the full "
            "google/siglip-so400m-patch14-384 model.safetensors.")
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    probe, fc1 = sd["probe"], sd.get("mlp.fc1.weight")
    if probe.dim() != 3 or fc1 is None or fc1.dim() != 2:
        raise NotAnIPAdapterError(f"{name}: the SigLIP pooling head is incomplete or damaged ('{prefix}probe' "
                                  f"{tuple(probe.shape)}, '{prefix}mlp.fc1.weight' "
                                  f"{None if fc1 is None else tuple(fc1.shape)}).")
    with torch.device("meta"):
        head = SiglipPoolingHead(hidden=int(probe.shape[-1]), intermediate=int(fc1.shape[0]), heads=heads)
    try:
        head.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        detail = str(e).split("\n\t", 1)[-1].strip()
        raise NotAnIPAdapterError(f"{name}: the SigLIP pooling head ('{prefix}*') does not fit: {detail}") from None
    return head.eval()
