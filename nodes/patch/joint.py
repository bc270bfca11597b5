"""The joint block path (SD3.5's MMDiT, InstantX SD3.5 adapters): the image term added inside ComfyUI's own joint
blocks, never a copy of their code.

- ``JointPatch`` is the object stored under ``patches_replace["dit"][("double_block", i)]``, the key ComfyUI's MMDiT
  (comfy/ldm/modules/diffusionmodules/mmdit.py, forward_core_with_concat) looks up for joint block i. It wraps
  ``original_block`` (or the foreign dit patch that was at the key first, which it calls through) and lends the
  block a per-call attention override (``transformer_options["optimized_attention_override"]``, ComfyUI >= 0.3.59)
  that runs the override set before (or ComfyUI's backend) and, on the block's joint attention (context first, then
  the image tokens: q is L_ctx + L_x long; MMDiT-X's second, image-only attention is left alone), adds
  ``gate * w * joint_image_term(q, k, v, K_ip, V_ip)`` (ip_adapter_core.families.sd3) to the output's image rows:
  before the block's out-projection and gate, where diffusers' SD3IPAdapterJointAttnProcessor2_0 adds it.
- The time resampler depends on the step (tokens and temb read the model timestep), so nothing is cached across
  steps: per model call and apply, :class:`StepTokens` runs it once for the call's rows (cond rows: the image's
  features; uncond rows: the "zero features" or whatever the embeds carry; each row at its own timestep,
  model_sampling.timestep(sigma)) and the patches of every joint block share the result (cached by the identity of
  the step's sigmas tensor and the batch layout); each block then makes its own K_ip / V_ip (its adaLN reads temb).
  The model's timestep function comes from an APPLY_MODEL wrapper (key MODEL_SAMPLING: the model's current
  model_sampling object, a later ModelSamplingSD3 included), else from the model at install.
- The adapter's RMSNorms of the raw x-stream q / k are recovered from ComfyUI's normed ones through the fixed ratio
  norm_q / ln_q (and k): computed once per block at install, from the model's own ln_q / ln_k modules, and refused at
  plan time (:func:`check_model`) where they cannot be (a zero weight, another norm).
- No host sync: per step, one resampler pass and per block one small adaLN, two projections and one attention, all
  queued on the device; the ratios and features are copied to a device once.
- ``install`` / ``reweight`` / ``check_plan`` / ``check_model`` are this path's half of nodes/patch/install.py.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, NamedTuple

import comfy.patcher_extension
import torch

from ...ip_adapter_core.errors import IncompatibleError, InputError
from ...ip_adapter_core.families.sd3 import joint_image_term, norm_ratio
from .run import AdapterRun

_log = logging.getLogger("comfyui-ipa")
OVERRIDE = "optimized_attention_override"
MODEL_SAMPLING = "ipa_model_sampling"  # transformer_options key: the model's model_sampling (APPLY_MODEL wrapper)
CALL_SIGMAS = "ipa_call_sigmas"  # transformer_options key: the call's per-row sigma, for callers that set no "sigmas"
DIT_KEY = "double_block"  # ComfyUI's MMDiT looks joint block i up as ("double_block", i)
_warned: set[str] = set()


def _once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        _log.warning(message)


# ---------------------------------------------------------------------------------------------- per-call tokens

class StepTokens:
    """One apply's encoder features (cond: the reference image's, uncond: the embeds' uncond, "zero features" by
    default), each (1, N, E), and their projection for the current model call: tokens (B, T, C) and temb (B, D), one
    row per row of the call, computed once per call and device and shared by every joint block (and by the
    re-weighted copies of the apply: the weight is not in them). Never copied (``__deepcopy__`` returns itself)."""

    def __init__(self, adapter: Any, cond: torch.Tensor, uncond: torch.Tensor, model_sampling: Any) -> None:
        self.adapter = adapter
        self.cond, self.uncond = cond, uncond
        self.model_sampling = model_sampling  # the model's at install: for calls that do not pass through apply_model
        self._features: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (device, dtype) -> cond, uncond
        self._slots: dict[torch.device, tuple] = {}  # device -> (sigmas object, layout key, (tokens, temb))
        self._rows: dict[tuple, torch.Tensor] = {}  # (device, dtype, layout) -> (B, 1, 1) 1 on cond rows, 0 on uncond
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> "StepTokens":
        return self

    def _features_on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        hit = self._features.get(key)
        if hit is None:
            with self._lock:
                hit = self._features.get(key)
                if hit is None:
                    hit = self._features[key] = (self.cond.to(device=device, dtype=dtype),
                                                 self.uncond.to(device=device, dtype=dtype))
        return hit

    def project(self, options: dict, batch: int, device: torch.device,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(tokens (B, T, C), temb (B, D)) for this call's ``batch`` rows, or None when the call gives no sigma (a
        caller outside ComfyUI's samplers and apply_model). Chunks follow ``cond_or_uncond`` (0 = cond, any order);
        the step's ``sigmas`` hold one value per row of a chunk (ComfyUI's samplers) or per row of the call."""
        sigmas = options.get("sigmas")
        if sigmas is None:
            sigmas = options.get(CALL_SIGMAS)
        if sigmas is None:
            return None
        chunks = list(options.get("cond_or_uncond") or [0])
        key = (tuple(chunks), batch, dtype)
        slot = self._slots.get(device)
        if slot is not None and slot[0] is sigmas and slot[1] == key:
            return slot[2]
        n = len(chunks)
        if batch % n:
            raise ValueError(f"SD3.5 image prompt: a batch of {batch} rows does not split into {n} chunks "
                             f"({chunks})")
        per = batch // n
        sampling = options.get(MODEL_SAMPLING)
        sampling = self.model_sampling if sampling is None else sampling
        t = sampling.timestep(sigmas).to(device=device, dtype=torch.float32).reshape(-1)
        if t.shape[0] == per and per != batch:
            t = t.repeat(n)
        elif t.shape[0] != batch:
            t = t[:1].expand(batch)
        cond, uncond = self._features_on(device, dtype)
        features = torch.cat([(cond if c == 0 else uncond).expand(per, -1, -1) for c in chunks])
        tokens, temb = self.adapter.model.project(features, t)
        with self._lock:
            self._slots[device] = (sigmas, key, (tokens, temb))
        return tokens, temb

    def cond_rows(self, options: dict, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, 1): 1 on the cond rows of the call, 0 on the uncond rows (the apply's uncond_term off); cached per
        layout (it does not change with the step)."""
        chunks = tuple(options.get("cond_or_uncond") or [0])
        key = (device, dtype, chunks, batch)
        hit = self._rows.get(key)
        if hit is None:
            per = batch // max(1, len(chunks))
            rows = [1.0 if c == 0 else 0.0 for c in chunks for _ in range(per)]
            hit = torch.tensor(rows, dtype=dtype).reshape(-1, 1, 1).to(device)
            with self._lock:
                self._rows[key] = hit
        return hit

    def keep_device(self, device: torch.device) -> None:
        """On the offload to a CPU device, drop what lives on other devices (as AdapterRun.keep_device)."""
        if device.type != "cpu":
            return
        with self._lock:
            self._features = {k: v for k, v in self._features.items() if k[0] == device}
            self._slots = {k: v for k, v in self._slots.items() if k == device}
            self._rows = {k: v for k, v in self._rows.items() if k[0] == device}


# ---------------------------------------------------------------------------------------------- the norm ratios

class NormRatios:
    """norm_q / ln_q and norm_k / ln_k (d,) of one joint block, fp32 where the model's weights were at install, copied
    once per device and dtype."""

    def __init__(self, ratio_q: torch.Tensor, ratio_k: torch.Tensor) -> None:
        self.ratio_q, self.ratio_k = ratio_q, ratio_k
        self._on: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __deepcopy__(self, memo: dict) -> "NormRatios":
        return self

    def on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        hit = self._on.get(key)
        if hit is None:
            hit = self._on[key] = (self.ratio_q.to(device=device, dtype=dtype),
                                   self.ratio_k.to(device=device, dtype=dtype))
        return hit


def _x_attention(dm: Any, block: int) -> Any:
    return dm.joint_blocks[block].x_block.attn


def block_ratios(dm: Any, adapter: Any, block: int, *, where: str) -> NormRatios:
    """The ratios of joint block ``block`` of the MMDiT ``dm`` for ``adapter``; IncompatibleError naming the block
    where the model's qk-norm is not an RMSNorm with a weight of the adapter's head width, or is 0 somewhere."""
    attn = _x_attention(dm, block)
    ln_q, ln_k = getattr(attn, "ln_q", None), getattr(attn, "ln_k", None)
    w_q, w_k = getattr(ln_q, "weight", None), getattr(ln_k, "weight", None)
    if not (isinstance(w_q, torch.Tensor) and isinstance(w_k, torch.Tensor)) or "RMSNorm" not in type(ln_q).__name__:
        raise IncompatibleError(f"{where}: '{adapter.name}' ({adapter.spec.describe()}) needs joint blocks whose q / k "
                                f"are RMS-normed (SD3.5), but joint block {block} of this model uses "
                                f"{type(ln_q).__name__}; load SD3.5-Large.")
    layer = adapter.model.layers[block]
    try:
        ratio_q = norm_ratio(w_q, layer.norm_q.weight, float(getattr(ln_q, "eps", 1e-6)))
        ratio_k = norm_ratio(w_k, layer.norm_k.weight, float(getattr(ln_k, "eps", 1e-6)))
    except ValueError as e:
        raise IncompatibleError(f"{where}: '{adapter.name}' cannot be applied to joint block {block} of this model: "
                                f"{e}.") from None
    return NormRatios(ratio_q, ratio_k)


# ---------------------------------------------------------------------------------------------- the patch

class JointTerm(NamedTuple):
    run: AdapterRun
    site: int  # position in the plan's site list (the weight)
    block: int  # joint block index (the adapter's layer)
    tokens: StepTokens
    ratios: NormRatios


def _with_terms(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, txt: int,
                terms: tuple[JointTerm, ...], options: dict) -> torch.Tensor:
    """The joint attention output (B, L_ctx + L_x, C) with every term added to its image rows."""
    batch = q.shape[0]
    v = v.reshape(v.shape[0], v.shape[1], -1)  # ComfyUI hands v as (B, L, heads, d)
    image = out[:, txt:]
    for term in terms:
        projected = term.tokens.project(options, batch, q.device, q.dtype)
        if projected is None:
            _once("no-sigmas", "IPA: an SD3.5 joint block ran without the step's sigma (a caller outside ComfyUI's "
                               "samplers?); its image prompt is skipped.")
            continue
        k_ip, v_ip = term.run.adapter.model.block_kv(term.block, *projected)
        ratio_q, ratio_k = term.ratios.on(q.device, q.dtype)
        add = joint_image_term(q, k, v, k_ip, v_ip, txt_len=txt, ratio_q=ratio_q, ratio_k=ratio_k)
        add = add * term.run.plan.site_weights[term.site]
        gate = term.run.gate(options, add.dtype)
        if gate is not None:
            add = add * gate
        if not term.run.plan.uncond_term:
            add = add * term.tokens.cond_rows(options, batch, q.device, add.dtype)
        image = image + add.to(image.dtype)
    return torch.cat((out[:, :txt], image), dim=1)


class _JointTap:
    """The attention override one joint block call gets: runs the attention as it would have run (the override set
    before, else ComfyUI's backend ``func``) and adds the terms to the first call over the joint sequence."""

    __slots__ = ("previous", "terms", "txt", "length", "options", "done")

    def __init__(self, previous: Callable | None, terms: tuple, txt: int, length: int, options: dict) -> None:
        self.previous, self.terms, self.txt, self.length, self.options = previous, terms, txt, length, options
        self.done = False

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        out = self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)
        if self.done:
            return out
        q = args[0] if len(args) > 0 else kwargs.get("q")
        k = args[1] if len(args) > 1 else kwargs.get("k")
        v = args[2] if len(args) > 2 else kwargs.get("v")
        if q is None or q.dim() != 3 or q.shape[1] != self.length or out.shape[:2] != q.shape[:2]:
            return out  # not the joint call (MMDiT-X's image-only attention)
        self.done = True
        return _with_terms(out, q, k, v, self.txt, self.terms, self.options)


class JointPatch:
    """dit replacement for one SD3 joint block: the block (or the patch that was there first) plus every term."""

    __slots__ = ("terms", "inner")

    def __init__(self, terms: tuple[JointTerm, ...], inner: Callable | None) -> None:
        self.terms = terms
        self.inner = inner

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        txt = args.get("txt")
        txt_len = 0 if txt is None else int(txt.shape[1])
        tap = _JointTap(options.get(OVERRIDE), self.terms, txt_len, txt_len + int(args["img"].shape[1]), options)
        tapped = {**args, "transformer_options": {**options, OVERRIDE: tap}}
        out = self.inner(tapped, extra) if self.inner is not None else extra["original_block"](tapped)
        if not tap.done:
            _once("no-attention", "IPA: an SD3 joint block ran its attention without ComfyUI's attention wrapper "
                                  "(another node replaced it?); the image prompt is skipped there.")
        return out

    def with_term(self, term: JointTerm) -> "JointPatch":
        return JointPatch(self.terms + (term,), self.inner)

    def __deepcopy__(self, memo: dict) -> "JointPatch":
        return self

    def to(self, device_or_dtype: Any) -> "JointPatch":
        if isinstance(device_or_dtype, torch.device):
            for term in self.terms:
                term.run.keep_device(device_or_dtype)
                term.tokens.keep_device(device_or_dtype)
        return self

    def models(self) -> list:
        found = []
        for term in self.terms:
            if term.run.adapter.patcher not in found:
                found.append(term.run.adapter.patcher)
        if self.inner is not None and hasattr(self.inner, "models"):
            found += [m for m in self.inner.models() if m not in found]
        return found


# ---------------------------------------------------------------------------------------------- install.py's half

def check_plan(plan: Any, *, where: str) -> None:
    """What this path does not do is refused before any image is encoded, never silently dropped."""
    if plan.mask is not None:
        raise InputError(f"{where}: input 'attn_mask' is not supported on SD3.5 models yet; disconnect it (the image "
                         f"prompt then acts on the whole image).")
    if plan.scaling != "V only":
        raise InputError(f"{where}: input 'embeds_scaling' '{plan.scaling}' is not supported on SD3.5 models; use "
                         f"'V only' (the reference's scale).")
    if plan.unfold or plan.frame_weights is not None:
        raise InputError(f"{where}: inputs 'unfold_batch' and 'frame_weights' are not supported on SD3.5 models (one "
                         f"reference image per apply); turn unfold_batch off and clear frame_weights.")


def check_model(model: Any, adapter: Any, *, where: str) -> None:
    """The model's own qk-norms must let the adapter's norms be recovered, block by block (:func:`block_ratios`)."""
    dm = model.get_model_object("diffusion_model")
    for block in range(min(len(getattr(dm, "joint_blocks", ()) or ()), adapter.spec.num_sites)):
        block_ratios(dm, adapter, block, where=where)


def _dit(m: Any) -> dict:
    return m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})


def _record_model_sampling(executor: Any, x: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """APPLY_MODEL wrapper (BaseModel.apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kw)):
    the call's transformer_options gain the model's current model_sampling (the timestep function the diffusion model
    is called with) and the call's per-row sigma t. A copy: the caller's dict is kept."""
    extra = {MODEL_SAMPLING: getattr(executor.class_obj, "model_sampling", None), CALL_SIGMAS: t}
    if len(args) >= 4 and isinstance(args[3], dict):
        args = args[:3] + ({**args[3], **extra},) + args[4:]
    elif isinstance(kwargs.get("transformer_options"), dict):
        kwargs = {**kwargs, "transformer_options": {**kwargs["transformer_options"], **extra}}
    return executor(x, t, *args, **kwargs)


def install(m: Any, run: AdapterRun, sites: list[tuple[int, tuple[str, int, int]]]) -> None:
    """Put ``run``'s term on the given sites of the clone ``m``: (i, key) pairs, where i is the site's position in the
    adapter's site list and key = ("joint", block index, 0). One reference image per apply (diffusers' SD3 adapter
    has no multi-image path): several are refused by name."""
    images = int(run.images.shape[0])
    if images != 1:
        raise InputError(f"'{run.adapter.name}' ({run.adapter.spec.describe()}) takes one reference image per apply; "
                         f"the embeds hold {images}. Apply each image with its own IPA Apply (their terms add up).")
    if not sites:  # weight 0 everywhere: nothing to patch (install.py records the apply as silent)
        return
    tokens = StepTokens(run.adapter, run.images[:1], run.uncond[:1, :run.images.shape[1]],
                        m.get_model_object("model_sampling"))
    kind = comfy.patcher_extension.WrappersMP.APPLY_MODEL
    m.remove_wrappers_with_key(kind, MODEL_SAMPLING)  # one per model, however many applies
    m.add_wrapper_with_key(kind, MODEL_SAMPLING, _record_model_sampling)
    dm = m.get_model_object("diffusion_model")
    existing = _dit(m)
    for i, key in sites:
        block = int(key[1])
        term = JointTerm(run, i, block, tokens, block_ratios(dm, run.adapter, block, where=run.adapter.name))
        current = existing.get((DIT_KEY, block))
        patch = current if isinstance(current, JointPatch) else JointPatch((), current)
        m.set_model_patch_replace(patch.with_term(term), "dit", DIT_KEY, block)


def reweight(m: Any, scaled: Callable[[AdapterRun], AdapterRun]) -> None:
    """Replace every IPA term on the clone ``m`` by one of ``scaled(run)``; foreign patches stay as they are."""
    for name, patch in list(_dit(m).items()):
        if isinstance(patch, JointPatch):
            terms = tuple(t._replace(run=scaled(t.run)) for t in patch.terms)
            m.set_model_patch_replace(JointPatch(terms, patch.inner), "dit", name[0], name[1])
