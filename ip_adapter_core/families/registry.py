"""The family registry itself: Family / EncoderNeed / Preset and the lookups (detect, build_projection,
encoder_need, presets). It imports no module of the package but errors, so spec.py and projection.py can ask it
without an import loop; ip_adapter_core.families (the package) re-exports it and registers the built-in families.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import NotAnIPAdapterError

# An ip_adapter_core.spec.AdapterSpec. Not imported: spec.py and projection.py ask this registry, which therefore
# imports none of the modules that call it.
AdapterSpec = Any

Tensors = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class EncoderNeed:
    """What the encoder stage must give a family's projection: the encoder ``kind`` ("clip_vision" or "face"), which
    ``output`` of it (CLIP vision: "image_embeds" (B, E) or "penultimate" (B, N, E), or for SigLIP "pooled" (B, E):
    its attention-pooling head, ip_adapter_core.siglip, over the last hidden state; face: "normed" or "raw" (B, E)),
    its ``width`` E, and ``label``, the encoder to name in messages ("CLIP ViT-H"). ``clip``: a second encoder the
    projection also reads (FaceID Plus: the CLIP vision penultimate states of the aligned face), None for most.
    ``uncond``: what the reference implementation encodes for the negative side: "zero" (the zero embedding, or an
    all-zero normalised image for token features: h94's training) or "black image" (the encoder run on a black
    image: XLabs Flux, as diffusers and XLabs build their negative image prompt) or "zero features" (all-zero
    encoder features, no encoder run, through the projection like any features: InstantX SD3.5, whose diffusers
    uncond is zeros_like(the penultimate states), (1, N, E) with N the encoder's token count, 729 for SigLIP 384)."""

    kind: str
    output: str
    width: int
    label: str
    clip: "EncoderNeed | None" = None
    uncond: str = "zero"
    squash: bool = False  # the image resized to the encoder's square without a centre crop (SigLIP's processor)


@dataclass(frozen=True)
class Preset:
    """A unified-loader preset. label: what it selects, for messages. accepts: the test on the detected variant.
    encoder: the encoder to suggest. examples: base model family -> the published file to suggest (missing = none
    published). prefer / avoid: words that order files whose tensors are identical (standard / light, plus / plus
    face / composition), after the tensors decided."""

    label: str
    accepts: Callable[[AdapterSpec], bool]
    encoder: str
    examples: dict[str, str]
    prefer: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    claims: Callable[[Tensors, Tensors], bool]
    detect: Callable[[Tensors, Tensors, str], AdapterSpec]
    build_projection: Callable[[AdapterSpec], nn.Module] | None = None
    encoder_need: Callable[[AdapterSpec], EncoderNeed] | None = None
    patch_path: str = "attn2"
    presets: Mapping[str, Preset] = field(default_factory=dict)
    implemented: bool = True
    # load_model(spec, image_proj, ip_adapter, name=...) -> the loaded adapter module, for families whose layers are
    # not to_k_ip / to_v_ip per site (XLabs Flux: biased K/V per double block); None: projection.IPAdapterModel.from_parts.
    load_model: Callable[..., nn.Module] | None = None
    # DiT families ("blocks" / "joint" paths): the kinds of block that are their sites, in the model's order
    # ("double", "single": Flux; "joint": SD3.5's MMDiT); () = the UNet's attn2 sites.
    site_blocks: tuple[str, ...] = ()
    # True where the projection also reads the model's timestep (InstantX SD3.5's time resampler): its embeds
    # (ImageTokens) then carry the encoder features, and the patch path projects them at every model call.
    step_projection: bool = False
    # "blocks" path: where the term goes: "after" the block's image output (XLabs), or "inside" the block's
    # attention output, before its out-projection (InstantX Flux)
    block_term: str = "after"


_FAMILIES: list[Family] = []


def register(family: Family, *, first: bool = False) -> Family:
    """Add ``family`` (replacing one of the same name); ``first``: ask it before the others."""
    unregister(family.name)
    _FAMILIES.insert(0, family) if first else _FAMILIES.append(family)
    return family


def unregister(name: str) -> None:
    _FAMILIES[:] = [f for f in _FAMILIES if f.name != name]


def registered() -> tuple[Family, ...]:
    return tuple(_FAMILIES)


def get(name: str) -> Family:
    for family in _FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"no adapter family {name!r}; registered: {', '.join(f.name for f in _FAMILIES)}")


def family_of(spec: AdapterSpec) -> Family:
    return get(spec.adapter_family)


def detect(image_proj: Tensors, ip_adapter: Tensors, *, name: str = "the file") -> AdapterSpec:
    """The spec of a file's two parts (keys without their part prefix), from the first family that claims them."""
    for family in _FAMILIES:
        if family.claims(image_proj, ip_adapter):
            return family.detect(image_proj, ip_adapter, name)
    tried = ", ".join(f.label for f in _FAMILIES)
    raise NotAnIPAdapterError(f"{name} is not an adapter this package knows (families tried: {tried}); keys: "
                              f"{', '.join(sorted([*image_proj, *ip_adapter])[:6])}...")


def build_projection(spec: AdapterSpec) -> nn.Module:
    family = family_of(spec)
    if family.build_projection is None:
        raise NotAnIPAdapterError(f"the {family.label} family builds no projection")
    return family.build_projection(spec)


def encoder_need(spec: AdapterSpec) -> EncoderNeed:
    family = family_of(spec)
    if family.encoder_need is None:
        raise NotAnIPAdapterError(f"the {family.label} family has no encoder stage")
    return family.encoder_need(spec)


def presets() -> dict[str, Preset]:
    """Every family's unified-loader presets, in registration order (a later family cannot reuse a name)."""
    out: dict[str, Preset] = {}
    for family in _FAMILIES:
        for name, preset in family.presets.items():
            if name in out:
                raise ValueError(f"preset {name!r} of {family.name} is already defined by another family")
            out[name] = preset
    return out


# ---------------------------------------------------------------------------------------------- helpers of the families

def tensor_shape(part: Tensors, key: str, expected: tuple[int | None, ...], name: str, *, prefix: str = "",
                 layout: str) -> tuple[int, ...]:
    """The shape of ``part[key]``, which must match ``expected`` (None: any size on that axis); NotAnIPAdapterError
    naming the file, the ``layout`` it otherwise has and the key when it is missing or shaped otherwise."""
    t = part.get(key)
    shape = None if t is None else tuple(int(d) for d in t.shape)
    if shape is None or len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        want = "(" + ", ".join("any" if e is None else str(e) for e in expected) + ")"
        found = "missing" if shape is None else f"shaped {shape}"
        raise NotAnIPAdapterError(f"{name} has the {layout} layout but '{prefix}{key}' is {found} "
                                  f"(expected {want}); the file is incomplete or damaged.")
    return shape


def assign_parts(model: nn.Module, spec: AdapterSpec, image_proj: Tensors, ip_adapter: Tensors, *,
                 name: str) -> nn.Module:
    """A family module built on the meta device, given the file's tensors (no copy): ``image_proj.*`` and
    ``layers.*`` (the ip_adapter part's keys), every key fitting and none left; NotAnIPAdapterError naming the file and
    what does not fit. Returns the module in eval mode."""
    state = {**{f"image_proj.{k}": v for k, v in image_proj.items()}, **{f"layers.{k}": v for k, v in ip_adapter.items()}}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        detail = str(e).split("\n\t", 1)[-1].strip()
        raise NotAnIPAdapterError(f"{name} does not match the {spec.describe()} layout: {detail}") from None
    return model.eval()
