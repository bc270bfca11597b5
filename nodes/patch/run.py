"""The per-apply run: one adapter applied to one model, independent of how the model is patched.

``AdapterRun`` holds the image tokens, the weights (per site), embeds scaling, sigma range, schedule, mask and
frames of one apply (from an ip_adapter_core.plan.ApplyPlan), and caches what the patch path needs per site:
- K' / w*V' per (site, device, dtype, chunk layout, heads, window), every weight factor and scaling folded in, built
  on the first call and reused for every later step and run. It is shared, never copied: ``__deepcopy__`` returns
  itself.
- the step gate: (on/off for the sigma range) * schedule factor, one (1,1,1) tensor per step, none for the full
  range without a schedule; nothing in it syncs with the host.
- the attention mask per (site, latent shape, device, dtype, batch layout).
- Batches and animation (ip_adapter_core.frames): unfolded images (image i -> latent i) and per-frame weights are
  laid out per latent inside the cached K'/V'; AnimateDiff context windows (extra_options["ad_params"]: sub_idxs,
  full_length) pick the window's frames, and the caches are then keyed by the window too.
- Devices and threads: caches are keyed by device, and :meth:`AdapterRun.keep_device` drops the other devices'
  caches only on the offload to a CPU device. ComfyUI 0.33's multi-GPU work units share one patch between per-GPU
  clones and move it to their device from worker threads every step: each device keeps its own K'/V' and gate, and
  cache misses and pruning take a lock (hits take none).
A patch path (attn2.py for UNets; a block path for DiTs) calls :meth:`kv`, :meth:`gate` and :meth:`site_mask`.
"""
from __future__ import annotations

import copy
import dataclasses
import threading
from typing import Any

import torch

from ...ip_adapter_core.attention import concat_images, sigma_gate, site_kv
from ...ip_adapter_core.embeds import ImageTokens
from ...ip_adapter_core.frames import frame_factors, frame_indices, full_length, pick
from ...ip_adapter_core.masks import batch_mask, site_mask
from ...ip_adapter_core.plan import ApplyPlan
from ...ip_adapter_core.schedule import schedule_factor, step_progress

_MAX_CACHED_LAYOUTS = 64


class AdapterRun:
    """One adapter applied to one model. adapter: LoadedAdapter (host.py); tokens: ImageTokens made by it."""

    def __init__(self, adapter: Any, tokens: ImageTokens, plan: ApplyPlan, *, sigma_start: float,
                 sigma_end: float) -> None:
        """plan: the apply's validated controls (ip_adapter_core.plan): per-site weights, scaling and the precise
        types' swapped sites are folded into the cached K'/V', so a step costs the same whatever they are; the mask
        is resized once per site and latent shape (then one multiply per site and step); the schedule joins the
        step's gate (see :meth:`gate`); unfold / frame_weights lay the images and factors out per latent.
        sigma_start / sigma_end: the plan's start/end fractions as the model's sigmas (the host converts them)."""
        self.adapter = adapter
        self.plan = plan
        self.images = tokens.cond
        self.cond, self.uncond = concat_images(tokens.cond, tokens.uncond)
        if plan.unfold:
            self.uncond = tokens.uncond[:1]
        self.sigma_start, self.sigma_end = float(sigma_start), float(sigma_end)
        self._values: dict[torch.device, torch.Tensor] = {}
        self._kv: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._masks: dict[tuple, torch.Tensor] = {}
        self._gates: dict[torch.device, tuple] = {}  # device -> (sigmas object, dtype, gate)
        self._lock = threading.Lock()

    @property
    def weight(self) -> float:
        return self.plan.weight

    def __deepcopy__(self, memo: dict) -> "AdapterRun":
        return self

    @property
    def per_frame(self) -> bool:
        """True when K'/V' differ per latent (unfold or frame weights), so they depend on the context window."""
        return self.plan.unfold or self.plan.frame_weights is not None

    def kv(self, site: int, q: torch.Tensor, heads: int, cond_or_uncond: list[int],
           frames: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """K', w*V' of ``site`` for this batch layout (split into heads), from the cache after the first call.
        frames: the context window's frame of each latent of a chunk (ip_adapter_core.frames.window_frames)."""
        per = q.shape[0] // len(cond_or_uncond)
        frames = frames if self.per_frame else None
        key = (site, q.device, q.dtype, tuple(cond_or_uncond), per, heads, frames)
        hit = self._kv.get(key)
        if hit is None:
            with self._lock:
                return self._kv_miss(key, site, q, heads, cond_or_uncond, per, frames)
        return hit

    def _kv_miss(self, key: tuple, site: int, q: torch.Tensor, heads: int, cond_or_uncond: list[int], per: int,
                 frames: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._kv.get(key)  # another thread may have built it meanwhile
        if hit is None:
            if len(self._kv) >= _MAX_CACHED_LAYOUTS * max(1, self.adapter.spec.num_sites):
                self._kv = {}
            model = self.adapter.model
            plan = self.plan
            index = frame_indices(frames, per)
            cond = self.images[list(pick(self.images.shape[0], index))] if plan.unfold else self.cond
            factors = None if plan.frame_weights is None else frame_factors(plan.frame_weights, index)
            # models that normalise K / V per head (InstantX Flux) get the model's head width
            kw = {"head_dim": q.shape[-1] // heads} if getattr(model, "NORMS_PER_HEAD", False) else {}
            hit = site_kv(lambda t: model.site_kv(site, t, **kw), cond, self.uncond, weight=plan.site_weights[site],
                          cond_or_uncond=cond_or_uncond, per_chunk=per, heads=heads, device=q.device, dtype=q.dtype,
                          scaling=plan.scaling, swap=site in plan.swap_sites, frame_weights=factors,
                          uncond_factor=1.0 if plan.uncond_term else 0.0)
            self._kv[key] = hit
        return hit

    def site_mask(self, site: int, q: torch.Tensor, extra_options: dict, cond_or_uncond: list[int],
                  frames: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """None without a mask; else the (B, Nq, 1) multiplier of ``site`` for this latent shape and batch layout,
        the same for cond and uncond chunks, from the cache after the first call. In a context window (``frames``)
        a mask batch as long as the whole video gives latent i the mask of its frame."""
        mask = self.plan.mask
        if mask is None:
            return None
        shape = extra_options.get("original_shape")
        latent_hw = tuple(shape[-2:]) if shape is not None and len(shape) >= 4 else tuple(mask.shape[-2:])
        per = q.shape[0] // len(cond_or_uncond)
        length = None if frames is None else full_length(extra_options.get("ad_params"))
        window = (frames, length) if length is not None and length == mask.shape[0] else None
        key = (site, latent_hw, q.shape[1], q.device, q.dtype, per, len(cond_or_uncond), window)
        hit = self._masks.get(key)
        if hit is None:
            with self._lock:
                hit = self._masks.get(key)
                if hit is None:
                    if len(self._masks) >= _MAX_CACHED_LAYOUTS * max(1, self.adapter.spec.num_sites):
                        self._masks = {}
                    m = site_mask(mask.to(q.device), latent_hw=latent_hw, tokens=q.shape[1],
                                  resize=self.plan.mask_resize)
                    hit = batch_mask(m, per_chunk=per, chunks=len(cond_or_uncond), frames=frames,
                                     full_length=length).to(q.dtype)
                    self._masks[key] = hit
        return hit

    def gate(self, extra_options: dict, dtype: torch.dtype) -> torch.Tensor | None:
        """None for the full range without a schedule; else one (1,1,1) tensor = (on/off for the sigma range) *
        (schedule factor at this step's progress), recomputed only when the step's sigmas object changes (one slot
        per device: each multi-GPU worker has its own step tensors).

        The schedule needs extra_options["sample_sigmas"] (the run's schedule, set by ComfyUI's samplers) to find the
        step; without it the factor is 1. Without "sigmas" (a caller outside ComfyUI's samplers) the term stays on."""
        sigmas = extra_options.get("sigmas")
        plan = self.plan
        if sigmas is None or (plan.full_range and plan.schedule.is_constant):
            return None
        slot = self._gates.get(sigmas.device)
        if slot is None or slot[0] is not sigmas or slot[1] != dtype:
            gate = None if plan.full_range else sigma_gate(sigmas, sigma_start=self.sigma_start,
                                                           sigma_end=self.sigma_end, dtype=dtype)
            sample_sigmas = extra_options.get("sample_sigmas")
            if not plan.schedule.is_constant and sample_sigmas is not None:
                progress = step_progress(sigmas, sample_sigmas, start=plan.start_at, end=plan.end_at)
                factor = schedule_factor(plan.schedule.kind, progress, values=self._values_on(sigmas.device))
                factor = factor.to(dtype).reshape(1, 1, 1)
                gate = factor if gate is None else gate * factor
            slot = (sigmas, dtype, gate)
            with self._lock:
                self._gates[sigmas.device] = slot
        return slot[2]

    def _values_on(self, device: torch.device) -> torch.Tensor | None:
        """The custom schedule's values on ``device`` (copied there once), None for the other kinds."""
        if self.plan.schedule.kind != "custom":
            return None
        hit = self._values.get(device)
        if hit is None:
            with self._lock:
                hit = self._values[device] = torch.tensor(self.plan.schedule.values, dtype=torch.float32, device=device)
        return hit

    def reweighted(self, factor: float) -> "AdapterRun":
        """The same run with every weight multiplied by ``factor`` (tokens, adapter, range, mask and schedule shared).
        Its K'/V' cache starts empty, since the weights are folded into K'/V'."""
        run = copy.copy(self)
        run.plan = dataclasses.replace(self.plan, weight=self.plan.weight * factor,
                                       site_weights=tuple(w * factor for w in self.plan.site_weights))
        run._kv, run._gates, run._lock = {}, {}, threading.Lock()
        with self._lock:
            run._masks, run._values = dict(self._masks), dict(self._values)
        return run

    def keep_device(self, device: torch.device) -> None:
        """Drop the caches that live on other devices, on the offload to a CPU device (ComfyUI moving the model off
        its GPU). A move to an accelerator drops nothing: multi-GPU workers move the shared patch to their own device
        every step, and each keeps its caches."""
        if device.type != "cpu":
            return
        with self._lock:
            self._kv = {k: v for k, v in self._kv.items() if k[1] == device}
            self._masks = {k: v for k, v in self._masks.items() if k[3] == device}
            self._values = {k: v for k, v in self._values.items() if k == device}
            self._gates = {k: v for k, v in self._gates.items() if k == device}


class TermsPatch:
    """What every patch object of this pack shares (attn2.IPAttn2Patch, blocks.IPBlockPatch): immutable ``terms``,
    (AdapterRun, site) pairs, and the foreign patch ``inner`` it calls through; shared, never copied, by clones
    (``__deepcopy__``); moved with the model (``to``: a CPU offload drops the runs' caches elsewhere); ``models()``
    gives ComfyUI the adapters' ModelPatchers (and the inner patch's) to load and offload with the model."""

    __slots__ = ("terms", "inner")

    def __init__(self, terms: tuple[tuple[AdapterRun, int], ...], inner: Any = None) -> None:
        self.terms = terms
        self.inner = inner

    def with_term(self, run: AdapterRun, site: int):
        return type(self)(self.terms + ((run, site),), self.inner)

    def reweighted(self, scaled) -> "TermsPatch":
        """The same patch with every run replaced by ``scaled(run)`` (IPA Re-weight)."""
        return type(self)(tuple((scaled(r), site) for r, site in self.terms), self.inner)

    def __deepcopy__(self, memo: dict):
        return self

    def to(self, device_or_dtype: Any):
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
