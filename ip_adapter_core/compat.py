"""Checks that adapter, base model, encoders (CLIP vision, face model) and image input belong together, before
sampling starts."""
from __future__ import annotations

from typing import Sequence

import torch

from . import families
from .errors import IncompatibleError, InputError
from .sites import Site
from .spec import FAMILY_BY_CONTEXT_DIM, FAMILY_LABEL, AdapterSpec

_EXAMPLE_FILE = {"sd15": "ip-adapter_sd15.safetensors", "sdxl": "ip-adapter_sdxl_vit-h.safetensors"}


def _family_label(ctx: int) -> str:
    fam = FAMILY_BY_CONTEXT_DIM.get(ctx)
    return f"{FAMILY_LABEL[fam]} ({ctx})" if fam else f"a model with cross-attention width {ctx}"


def check_model(spec: AdapterSpec, sites: Sequence[Site], context_dim: int | None, *, adapter_name: str, where: str) -> None:
    """The adapter's layers must match the model's sites one for one (count and widths): the UNet's cross-attention
    sites, or a DiT's blocks for the families that patch blocks (Flux, SD3.5: ``Family.site_blocks``)."""
    dit = bool(families.family_of(spec).site_blocks)
    if dit and (not sites or context_dim is None):
        base = FAMILY_LABEL.get(spec.family, "DiT")
        raise IncompatibleError(
            f"{where}: '{adapter_name}' is an {spec.describe()} adapter, for {base} models, but this model has no "
            f"{base} blocks (is it an SD1.5 / SDXL UNet?); load a {base} model, or an adapter made for this model.")
    if not sites or context_dim is None:
        raise IncompatibleError(
            f"{where}: the model has no UNet cross-attention layers (is it a DiT such as Flux or SD3?); "
            f"'{adapter_name}' is an {spec.describe()} adapter for UNet models."
        )
    if context_dim != spec.cross_attention_dim:
        fam = FAMILY_BY_CONTEXT_DIM.get(context_dim)
        fix = f"; load an {FAMILY_LABEL[fam]} adapter such as {_example(spec, fam, adapter_name)}" if fam else ""
        raise IncompatibleError(
            f"{where}: the adapter '{adapter_name}' is {_family_label(spec.cross_attention_dim)} but the model is "
            f"{_family_label(context_dim)}{fix}."
        )
    widths = tuple(s.hidden for s in sites)
    if widths != spec.site_dims:
        raise IncompatibleError(
            f"{where}: the adapter '{adapter_name}' has {spec.num_sites} {'blocks' if dit else 'cross-attention layers'} "
            f"{_summary(spec.site_dims)} but the model has {len(sites)} {_summary(widths)}; this adapter was trained "
            f"for a different {'model' if dit else 'UNet'} layout."
        )


def _example(spec: AdapterSpec, fam: str, adapter_name: str) -> str:
    """A published file of the adapter's kind for base model family ``fam`` (a FaceID adapter suggests a FaceID
    file): from the first of its family's presets that accepts it and names one, those whose words fit the adapter's
    file name first (plusv2 -> the v2 file), else the standard adapter."""
    low = adapter_name.lower()

    def misfit(preset: families.Preset) -> bool:
        return (bool(preset.prefer) and not any(w in low for w in preset.prefer)) or any(w in low for w in preset.avoid)

    fitting = [p for p in families.family_of(spec).presets.values() if p.accepts(spec) and fam in p.examples]
    fitting.sort(key=misfit)
    return fitting[0].examples[fam] if fitting else _EXAMPLE_FILE[fam]


def _summary(widths: Sequence[int]) -> str:
    return "(widths " + ", ".join(f"{w}x{widths.count(w)}" for w in sorted(set(widths))) + ")"


def clip_vision_need(spec: AdapterSpec) -> families.EncoderNeed | None:
    """What the adapter reads from a CLIP vision encoder: its family's encoder need, or that need's second encoder
    (FaceID Plus: the face crop's penultimate states); None when it reads none (FaceID, portrait)."""
    need = families.encoder_need(spec)
    return need if need.kind == "clip_vision" else need.clip


def check_encoder(spec: AdapterSpec, *, hidden: int, projection: int | None, adapter_name: str, where: str) -> None:
    """The CLIP vision encoder must produce what the adapter's projection reads (its family's encoder need, or the
    CLIP part of it for FaceID Plus)."""
    need = clip_vision_need(spec)
    if need is None:
        raise IncompatibleError(f"{where}: '{adapter_name}' ({spec.describe()}) reads "
                                f"{families.encoder_need(spec).label}, not a CLIP vision encoder.")
    found = projection if need.output == "image_embeds" else hidden
    if found != need.width:
        what = "image embeds" if need.output == "image_embeds" else "hidden states"
        raise IncompatibleError(
            f"{where}: the CLIP vision model gives {found}-wide {what} (width {hidden}, projection {projection}) but "
            f"'{adapter_name}' ({spec.describe()}) needs {need.width}-wide {what}; load {need.label} "
            f"in the CLIP Vision loader."
        )


def check_face_encoder(spec: AdapterSpec, *, width: int, adapter_name: str, where: str) -> None:
    """The face model must give embeddings as wide as the adapter's projection reads (FaceID: 512)."""
    need = families.encoder_need(spec)
    if need.kind != "face":
        raise IncompatibleError(f"{where}: '{adapter_name}' ({spec.describe()}) reads {need.label}, not a face "
                                f"model; use a FaceID adapter with a face model.")
    if width != need.width:
        raise IncompatibleError(f"{where}: the face model gives {width}-wide embeddings but '{adapter_name}' "
                                f"({spec.describe()}) reads {need.width}-wide ones; load {need.label}.")


def prepare_images(image: torch.Tensor, *, where: str) -> torch.Tensor:
    """IMAGE (B, H, W, C) with C in 1..4 -> (B, H, W, 3) float: alpha dropped, gray expanded; rejects bad batches."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"{where}: expected an IMAGE batch [B, H, W, C], got {shape}.")
    b, h, w, c = image.shape
    if b == 0 or h == 0 or w == 0:
        raise InputError(f"{where}: the image batch is empty (shape {tuple(image.shape)}); connect at least one image.")
    if c not in (1, 2, 3, 4):
        raise InputError(f"{where}: images have {c} channels; expected RGB (3), RGBA (4), gray (1) or gray+alpha (2).")
    if c in (1, 2):
        image = image[..., :1].expand(-1, -1, -1, 3)
    elif c == 4:
        image = image[..., :3]
    if not bool(torch.isfinite(image).all()):
        raise InputError(f"{where}: the image contains NaN or infinite values; fix the node that produced it.")
    return image.float()


def check_range(start_at: float, end_at: float, *, where: str) -> None:
    if start_at > end_at:
        raise InputError(f"{where}: start_at ({start_at}) is after end_at ({end_at}); "
                         "start_at must be <= end_at (0 = first step, 1 = last).")
