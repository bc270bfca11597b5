"""A reference implementation of the InstantX Flux IP-Adapter for the oracle tests, written the way the published
code computes it (Shakker-Labs' ``IPAFluxAttnProcessor2_0`` / ``MLPProjModel``, dit-adapters.md §1.2) with diffusers
and torch modules, independent of ip_adapter_core.families.flux_instantx: nn.Linear(bias=False) K/V layers, diffusers'
``RMSNorm(head_dim, eps=1e-5, elementwise_affine=False)`` on ``B H L D`` K and V, nn.Sequential(Linear, GELU,
Linear) + nn.LayerNorm for the tokens, the query taken after norm_q and before RoPE. ``Processor`` is diffusers'
FluxAttnProcessor with a hook on the joint attention output, where the reference adds its term (before to_out in
double blocks; the whole output of single blocks). Used by tests/core/test_instantx_flux_oracle.py and
tests/host/test_oracle_instantx_flux.py; needs diffusers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from torch import nn


class MLPProjModel(nn.Module):
    """Shakker's / InstantX's MLPProjModel, as published."""

    def __init__(self, cross_attention_dim, id_embeddings_dim, num_tokens):
        super().__init__()
        self.cross_attention_dim, self.num_tokens = cross_attention_dim, num_tokens
        self.proj = nn.Sequential(nn.Linear(id_embeddings_dim, id_embeddings_dim * 2), nn.GELU(),
                                  nn.Linear(id_embeddings_dim * 2, cross_attention_dim * num_tokens))
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, id_embeds):
        x = self.proj(id_embeds)
        x = x.reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(x)


class IPAFlux(nn.Module):
    """The IP part of IPAFluxAttnProcessor2_0: K/V projections without bias, RMSNorm(head_dim) on B H L D."""

    def __init__(self, hidden_size, cross_attention_dim, scale, head_dim):
        super().__init__()
        self.scale = scale
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.norm_added_k = RMSNorm(head_dim, eps=1e-5, elementwise_affine=False)
        self.norm_added_v = RMSNorm(head_dim, eps=1e-5, elementwise_affine=False)

    def forward(self, num_heads, query, image_emb):
        b, t, _ = image_emb.shape
        k = self.to_k_ip(image_emb).view(b, t, num_heads, -1).transpose(1, 2)  # B L (H D) -> B H L D
        v = self.to_v_ip(image_emb).view(b, t, num_heads, -1).transpose(1, 2)
        k, v = self.norm_added_k(k), self.norm_added_v(v)
        ip = F.scaled_dot_product_attention(query, k, v, dropout_p=0.0, is_causal=False)
        return self.scale * ip.transpose(1, 2).reshape(b, query.shape[2], -1)  # B H L D -> B L (H D)


class Processor(FluxAttnProcessor):
    """diffusers' FluxAttnProcessor (its projections, norms, RoPE) with a hook on the joint attention output:
    ``add(q_pre_rope (B, L, H, D), q_post_rope, out (B, L, H*D)) -> out``, L = txt + img (double) or all (single)."""

    def __init__(self, add):
        super().__init__()
        self.add = add

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        q, k, v = (lin(hidden_states).unflatten(-1, (-1, attn.head_dim)) for lin in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        pre = q
        if encoder_hidden_states is not None:
            eq, ek, ev = (lin(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
                          for lin in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        q_rot = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
        k_rot = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        out = F.scaled_dot_product_attention(q_rot.transpose(1, 2), k_rot.transpose(1, 2), v.transpose(1, 2))
        out = self.add(pre, q_rot, out.transpose(1, 2).flatten(2))
        if encoder_hidden_states is None:
            return out
        txt, img = out[:, :encoder_hidden_states.shape[1]], out[:, encoder_hidden_states.shape[1]:]
        return attn.to_out[1](attn.to_out[0](img)), attn.to_add_out(txt)
