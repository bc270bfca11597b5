"""The DiT block path (Flux): the image term added around ComfyUI's own blocks, never a copy of their code.

- ``IPBlockPatch`` is the object stored under one ``patches_replace["dit"][("double_block" | "single_block", i)]``
  key. It wraps ``original_block`` (or the foreign dit patch that was at the key first, which it calls through) and
  lends the block a per-call attention override (``transformer_options["optimized_attention_override"]``, ComfyUI
  >= 0.3.59) that records the block's joint query and runs the override that was set before, or ComfyUI's own
  backend. The query's RoPE is undone exactly (ip_adapter_core.rope.unrope: the rotation is orthogonal) and each term
  adds ``gate * SDPA(q, K', w*V')`` where its family puts it (``Family.block_term``):
  "after": to the block's image output (XLabs: after the MLP residual, no out-projection, no gate), double blocks;
  "inside": to the attention output itself, before the out-projection (InstantX): a double block's image rows, a
  single block's text and image rows.
- Several adapters on one block add up (one patch, several terms); a clone's patch is never changed (``with_term``
  returns a new one); K' / V' come from the run's cache (constant over the steps), so a step adds one small
  attention per block and no host sync.
- Kontext: reference latents join the image stream after the latent's own tokens; they get no term. A
  DIFFUSION_MODEL wrapper (one per patched model, key IMAGE_TOKENS) puts the latent's own token count and the text
  length into the call's transformer_options, and the terms cover only those tokens.
- ``install`` / ``reweight`` are this path's half of nodes/patch/install.py, which dispatches by family.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import comfy.patcher_extension
import torch

from ...ip_adapter_core import families
from ...ip_adapter_core.attention import add_image_term
from ...ip_adapter_core.errors import IncompatibleError, InputError
from ...ip_adapter_core.rope import unrope
from .run import AdapterRun, TermsPatch

_log = logging.getLogger("comfyui-ipa")
OVERRIDE = "optimized_attention_override"
IMAGE_TOKENS = "ipa_image_tokens"  # transformer_options key: the latent's own image tokens (Kontext references after)
TEXT_TOKENS = "ipa_text_tokens"  # transformer_options key: the text tokens (a single block's stream starts with them)
DIT_KEYS = {"double": "double_block", "single": "single_block"}  # Site.block -> the dit patch key's kind
_warned: set[str] = set()


def _place(run: AdapterRun) -> str:
    """Where a family's term goes (Family.block_term): "after" the block's output (XLabs), or "inside" its
    attention output, before the out-projection (InstantX)."""
    return getattr(families.family_of(run.adapter.spec), "block_term", "after")


def _queries(q: torch.Tensor, pe: torch.Tensor | None, start: int, stop: int, dtype: torch.dtype):
    """The recorded joint query (B, heads, L, d; after RoPE) -> (its pre-RoPE rows start:stop as (B, n, heads*d) in
    ``dtype``, heads)."""
    q = q if pe is None else unrope(q, pe)
    b, heads, _, d = q.shape
    return q[:, :, start:stop].transpose(1, 2).reshape(b, stop - start, heads * d).to(dtype), heads


def _with_terms(x: torch.Tensor, start: int, stop: int, q: torch.Tensor, heads: int, terms, options: dict):
    """x (B, L, C) with every term added to its rows start:stop (the other rows, e.g. Kontext references, kept)."""
    cond_or_uncond = options.get("cond_or_uncond") or [0]
    whole = start == 0 and stop == x.shape[1]
    part = x if whole else x[:, start:stop]
    for run, site in terms:
        k_ip, v_ip = run.kv(site, q, heads, cond_or_uncond)
        part = add_image_term(part, q, k_ip, v_ip, run.gate(options, x.dtype))
    if whole:
        return part
    return torch.cat((x[:, :start], part, x[:, stop:]), dim=1)


class _QueryTap:
    """The attention override one block call gets: records the first query (B, heads, L, d; after RoPE), runs the
    attention as it would have run (the override set before, else ComfyUI's backend ``func``) and, for the "inside"
    terms, adds them to that attention's output rows start:stop."""

    __slots__ = ("previous", "q", "inside", "pe", "span", "options")

    def __init__(self, previous: Callable | None, inside: tuple, pe: torch.Tensor | None, span: tuple[int, int],
                 options: dict) -> None:
        self.previous, self.inside, self.pe, self.span, self.options = previous, inside, pe, span, options
        self.q: torch.Tensor | None = None

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        first = self.q is None
        if first:
            self.q = args[0] if args else kwargs.get("q")
        out = self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)
        if first and self.inside:
            q, heads = _queries(self.q, self.pe, *self.span, out.dtype)
            out = _with_terms(out, *self.span, q, heads, self.inside, self.options)
        return out


class IPBlockPatch(TermsPatch):
    """dit replacement for one Flux block: the block (or the patch that was there first) plus every image term."""

    __slots__ = ()

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        single = "txt" not in args  # a single block: args["img"] is text + image
        length = args["img"].shape[1]
        if single:  # the term acts on the text and the latent's own image tokens (not on Kontext references)
            own = options.get(IMAGE_TOKENS)
            span = (0, min(length, int(options.get(TEXT_TOKENS, 0)) + int(own)) if own else length)
        else:
            txt = args["txt"].shape[1]
            span = (txt, txt + min(length, int(options.get(IMAGE_TOKENS) or length)))
        inside = tuple(t for t in self.terms if _place(t[0]) == "inside")
        after = tuple(t for t in self.terms if _place(t[0]) != "inside")
        tap = _QueryTap(options.get(OVERRIDE), inside, args.get("pe"), span, options)
        tapped = {**args, "transformer_options": {**options, OVERRIDE: tap}}
        out = self.inner(tapped, extra) if self.inner is not None else extra["original_block"](tapped)
        if tap.q is None:
            _once("no-attention", "IPA: a Flux block ran its attention without ComfyUI's attention wrapper (another "
                                  "node replaced it?); the image prompt is skipped there.")
            return out
        if not after:
            return out
        img = out["img"]
        q, heads = _queries(tap.q, args.get("pe"), *span, img.dtype)
        shift = 0 if single else span[0]  # out["img"] of a double block holds the image tokens only
        return {**out, "img": _with_terms(img, span[0] - shift, span[1] - shift, q, heads, after, options)}


def check_family(adapter: Any, *, where: str) -> None:
    """Families whose blocks this path does not patch yet (SD3.5's joint blocks) are named, before anything runs."""
    family = families.family_of(adapter.spec)
    missing = [k for k in family.site_blocks if k not in DIT_KEYS]
    if missing:
        raise IncompatibleError(f"{where}: '{adapter.name}' is one of the {family.label} ({adapter.spec.describe()}); "
                                f"this version recognises it but cannot apply it yet (its {', '.join(missing)} "
                                f"blocks are not patched). Use an SD1.5 / SDXL or Flux adapter.")


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
        text = args[1].shape[1] if isinstance(args[1], torch.Tensor) and args[1].dim() == 3 else 0
        args = args[:6] + ({**args[6], IMAGE_TOKENS: tokens, TEXT_TOKENS: text},) + args[7:]
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
            m.set_model_patch_replace(patch.reweighted(scaled), "dit", name[0], name[1])
