"""The attn2 patch path (UNets): the only object this package puts into a UNet MODEL's transformer_options.

- ``IPAttn2Patch`` is the object stored under one attn2 key. It is immutable: adding an adapter returns a new
  patch holding the old terms plus the new one, so a clone's patches never alter the original's. It calls through a
  foreign patch that was at the key first, and otherwise runs ComfyUI's own attention exactly as the unpatched
  block does. Each term is an (AdapterRun, site) pair (run.py: caches, gate, mask, frames); a step adds one small
  attention per term.
- The base attention is looked up in ComfyUI's attention module at call time, as its own CrossAttention does, so a
  pack that swaps ``optimized_attention`` at run time is honoured (the per-model override of 0.33's
  ``set_model_optimized_attention`` arrives through transformer_options on both versions).
- ``install`` / ``reweight`` are this path's half of nodes/patch/install.py, which dispatches by family.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from comfy.ldm.modules import attention as comfy_attention

from ...ip_adapter_core.attention import add_image_term
from ...ip_adapter_core.frames import window_frames
from .run import AdapterRun, TermsPatch


class IPAttn2Patch(TermsPatch):
    """attn2 replacement for one site: base attention (or the patch that was there first) plus every image term."""

    __slots__ = ()

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        if self.inner is not None:
            out = self.inner(q, k, v, extra_options)
        else:
            out = comfy_attention.optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                                      transformer_options=extra_options)
        cond_or_uncond = extra_options["cond_or_uncond"]
        frames = window_frames(extra_options.get("ad_params"), q.shape[0] // len(cond_or_uncond))
        for run, site in self.terms:
            k_ip, v_ip = run.kv(site, q, heads, cond_or_uncond, frames)
            out = add_image_term(out, q, k_ip, v_ip, run.gate(extra_options, out.dtype),
                                 run.site_mask(site, q, extra_options, cond_or_uncond, frames))
        return out


def install(m: Any, run: AdapterRun, sites: list[tuple[int, tuple[str, int, int]]]) -> None:
    """Put ``run``'s term on the given sites of the clone ``m``: (i, key) pairs, where i is the site's position in
    the model's site list (checkpoint layer 2i+1) and key its attn2 key."""
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for i, key in sites:
        # ComfyUI tries (block, id, index) first, then (block, id): a foreign 2-tuple patch covers every index.
        current = existing.get(key, existing.get(key[:2]))
        patch = current if isinstance(current, IPAttn2Patch) else IPAttn2Patch((), current)
        m.set_model_attn2_replace(patch.with_term(run, i), key[0], key[1], key[2])


def reweight(m: Any, scaled: Callable[[AdapterRun], AdapterRun]) -> None:
    """Replace every IPA term on the clone ``m`` by ``scaled(run)``; foreign patches stay as they are."""
    attn2 = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key, patch in list(attn2.items()):
        if isinstance(patch, IPAttn2Patch):
            m.set_model_attn2_replace(patch.reweighted(scaled), *key)
