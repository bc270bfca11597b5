"""The DiT block path (Flux): the image term added around ComfyUI's own blocks, never a copy of their code.

- ``IPBlockPatch`` is the object stored under one ``patches_replace["dit"][("double_block", i)]`` key. It wraps
  ``original_block`` (or the foreign dit patch that was at the key first, which it calls through) and lends the block
  a per-call attention override (``transformer_options["optimized_attention_override"]``, ComfyUI >= 0.3.59) that
  only records the block's joint query and then calls the override that was set before, or ComfyUI's own backend.
  After the block returns, the query's RoPE is undone exactly (ip_adapter_core.rope.unrope: the rotation is
  orthogonal), its image part is taken, and each term adds ``gate * SDPA(q_img, K', w*V')`` to the block's image
  stream: the XLabs adapters' term, added after the block (after its MLP residual, no out-projection, no gate).
- Several adapters on one block add up (one patch, several terms); a clone's patch is never changed (``with_term``
  returns a new one); K' / V' come from the run's cache (constant over the steps), so a step adds one small
  attention per block and no host sync.
- Kontext: reference latents join the image stream after the latent's own tokens; they get no term. A
  DIFFUSION_MODEL wrapper (one per patched model, key IMAGE_TOKENS) puts the latent's own token count into the
  call's transformer_options, and the term covers only those tokens.
- ``install`` / ``reweight`` are this path's half of nodes/patch/install.py, which dispatches by family.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import comfy.patcher_extension
import torch

from ...ip_adapter_core.attention import add_image_term
from ...ip_adapter_core.errors import InputError
from ...ip_adapter_core.rope import unrope
from .run import AdapterRun

_log = logging.getLogger("comfyui-ipa")
OVERRIDE = "optimized_attention_override"
IMAGE_TOKENS = "ipa_image_tokens"  # transformer_options key: the latent's own image tokens (Kontext references after)
DIT_KEYS = {"double": "double_block", "single": "single_block"}  # Site.block -> the dit patch key's kind
_warned: set[str] = set()


class _QueryTap:
    """The attention override one block call gets: records the first query (B, heads, L, d; after RoPE) and runs
    the attention as it would have run (the override set before, else ComfyUI's backend ``func``)."""

    __slots__ = ("previous", "q")

    def __init__(self, previous: Callable | None) -> None:
        self.previous = previous
        self.q: torch.Tensor | None = None

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        if self.q is None:
            self.q = args[0] if args else kwargs.get("q")
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)


class IPBlockPatch:
    """dit replacement for one double block: the block (or the patch that was there first) plus every image term."""

    __slots__ = ("terms", "inner")

    def __init__(self, terms: tuple[tuple[AdapterRun, int], ...], inner: Callable | None) -> None:
        self.terms = terms
        self.inner = inner

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        tap = _QueryTap(options.get(OVERRIDE))
        tapped = {**args, "transformer_options": {**options, OVERRIDE: tap}}
        out = self.inner(tapped, extra) if self.inner is not None else extra["original_block"](tapped)
        if tap.q is None:
            _once("no-attention", "IPA: a Flux block ran its attention without ComfyUI's attention wrapper (another "
                                  "node replaced it?); the image prompt is skipped there.")
            return out
        img = out["img"]
        txt_len = args["txt"].shape[1]
        n = min(int(options.get(IMAGE_TOKENS) or img.shape[1]), img.shape[1])  # the latent's own tokens
        q = args.get("pe")
        q = tap.q if q is None else unrope(tap.q, q)
        b, heads, _, d = q.shape
        q = q[:, :, txt_len:txt_len + n].transpose(1, 2).reshape(b, n, heads * d).to(img.dtype)
        cond_or_uncond = options.get("cond_or_uncond") or [0]
        own = img[:, :n]
        for run, site in self.terms:
            k_ip, v_ip = run.kv(site, q, heads, cond_or_uncond)
            own = add_image_term(own, q, k_ip, v_ip, run.gate(options, img.dtype))
        return {**out, "img": own if n == img.shape[1] else torch.cat((own, img[:, n:]), dim=1)}

    def with_term(self, run: AdapterRun, site: int) -> "IPBlockPatch":
        return IPBlockPatch(self.terms + ((run, site),), self.inner)

    def __deepcopy__(self, memo: dict) -> "IPBlockPatch":
        return self

    def to(self, device_or_dtype: Any) -> "IPBlockPatch":
        if isinstance(device_or_dtype, torch.device):
            for run, _ in self.terms:
                run.keep_device(device_or_dtype)
        return self

    def models(self) -> list:
        found = []
        for run, _ in self.terms:
            if run.adapter.patcher not in found:
                found.append(run.adapter.patcher)
        if self.inner is not None and hasattr(self.inner, "models"):
            found += [m for m in self.inner.models() if m not in found]
        return found


def check_plan(plan: Any, *, where: str) -> None:
    """What this path does not do yet is refused before any image is encoded, never silently dropped."""
    if plan.mask is not None:
        raise InputError(f"{where}: input 'attn_mask' is not supported on Flux models yet; disconnect it (the image "
                         f"prompt then acts on the whole image).")


def _once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        _log.warning(message)


def _dit(m: Any) -> dict:
    return m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})


def _record_image_tokens(executor: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """DIFFUSION_MODEL wrapper (Flux.forward(x, timestep, context, y, guidance, ref_latents, control,
    transformer_options, **kw)): the call's transformer_options gain IMAGE_TOKENS, the number of tokens of ``x``
    itself, so reference latents appended after them (Kontext) get no image term. A copy: the caller's dict is kept."""
    if len(args) >= 7 and isinstance(args[6], dict):
        patch = int(getattr(executor.class_obj, "patch_size", 2))
        tokens = ((x.shape[-2] + patch // 2) // patch) * ((x.shape[-1] + patch // 2) // patch)
        args = args[:6] + ({**args[6], IMAGE_TOKENS: tokens},) + args[7:]
    return executor(x, *args, **kwargs)


def install(m: Any, run: AdapterRun, sites: list[tuple[int, tuple[str, int, int]]]) -> None:
    """Put ``run``'s term on the given sites of the clone ``m``: (i, key) pairs, where i is the site's position in the
    adapter's site list and key = (Site.block, block index, 0)."""
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    m.remove_wrappers_with_key(kind, IMAGE_TOKENS)  # one per model, however many applies
    m.add_wrapper_with_key(kind, IMAGE_TOKENS, _record_image_tokens)
    existing = _dit(m)
    for i, key in sites:
        name = (DIT_KEYS[key[0]], key[1])
        current = existing.get(name)
        patch = current if isinstance(current, IPBlockPatch) else IPBlockPatch((), current)
        m.set_model_patch_replace(patch.with_term(run, i), "dit", name[0], name[1])


def reweight(m: Any, scaled: Callable[[AdapterRun], AdapterRun]) -> None:
    """Replace every IPA term on the clone ``m`` by ``scaled(run)``; foreign patches stay as they are."""
    for name, patch in list(_dit(m).items()):
        if isinstance(patch, IPBlockPatch):
            m.set_model_patch_replace(IPBlockPatch(tuple((scaled(r), site) for r, site in patch.terms), patch.inner),
                                      "dit", name[0], name[1])
