"""What an adapter file is, decided from tensor names and shapes only (never from the file name, but for the one
fact tensors cannot give: FaceID Plus v1 or v2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

FAMILY_BY_CONTEXT_DIM = {768: "sd15", 2048: "sdxl"}
# Adapter families made for one base model whatever their width (4096 is T5's, Kolors' and SD3's context alike).
FAMILY_BY_ADAPTER = {"xlabs-flux": "flux", "instantx-flux": "flux", "instantx-sd3": "sd3"}
FAMILY_LABEL = {"sd15": "SD1.5", "sdxl": "SDXL", "flux": "Flux", "sd3": "SD3.5-Large"}
KIND_LABEL = {"base": "Base", "plus": "Plus", "full_face": "Full face", "faceid": "FaceID", "faceid_plus": "FaceID Plus",
              "portrait": "FaceID Portrait", "portrait_unnorm": "FaceID Portrait (unnormalised face embedding)",
              "xlabs": "XLabs Flux", "instantx_flux": "InstantX Flux", "instantx_sd3": "InstantX SD3.5"}
# Kinds whose published versions differ by token count only: kind -> {num_tokens: version}.
KIND_VERSION_BY_TOKENS = {"xlabs": {4: "v1", 16: "v2"}}
# Kinds whose tokens are per face: n faces give n * num_tokens tokens, concatenated (families/faceid.concat_faces).
PER_FACE_KINDS = frozenset({"portrait", "portrait_unnorm"})


@dataclass(frozen=True)
class AdapterSpec:
    """Everything the rest of the package needs to know about one adapter file.

    kind: "base" (Linear+LayerNorm, 4 tokens), "plus" (Perceiver resampler), "full_face" (MLP over all ViT tokens);
    FaceID (adapter_family "faceid"): "faceid" (MLP over the face embedding), "faceid_plus" (MLP + face Perceiver
    over CLIP states), "portrait" (MLP, tokens per face), "portrait_unnorm" (Resampler over the raw face embedding);
    XLabs Flux (adapter_family "xlabs-flux"): "xlabs" (Linear + LayerNorm, 4 tokens in v1, 16 in v2; one site per
    double block, cross_attention_dim = the T5 context width the tokens live in); InstantX Flux (adapter_family
    "instantx-flux"): "instantx_flux" (MLP over SigLIP's pooled output, 128 tokens; one site per double block, then
    one per single block: families/flux_instantx.site_kinds).
    encoder_input: which encoder output the projection reads: CLIP vision "image_embeds" [B, E] or "penultimate"
    [B, N, E] or SigLIP's attention-pooled "pooled" [B, E] (siglip.py); a face model's "face_normed"
    (L2-normalised) or "face_raw" embedding [B, E].
    site_dims: output width of to_k_ip/to_v_ip per cross-attention site, in checkpoint order N = 1, 3, 5, ...
    num_tokens: image tokens per image (per face for PER_FACE_KINDS); None for full face, whose count equals the
    encoder's token count.
    clip_dim: the CLIP penultimate width a FaceID Plus projection also reads (1280, ViT-H); None otherwise.
    lora_rank: rank of the LoRA the file carries (FaceID, FaceID Plus); None without one.
    plus_version: "v1" / "v2" for FaceID Plus, whose versions have the same tensors: taken from the file name.
    """

    kind: str
    cross_attention_dim: int
    encoder_input: str
    encoder_dim: int
    num_tokens: int | None
    site_dims: tuple[int, ...]
    resampler_dim: int | None = None
    resampler_heads: int | None = None
    resampler_depth: int | None = None
    adapter_family: str = "sd-unet"
    clip_dim: int | None = None
    lora_rank: int | None = None
    plus_version: str | None = None

    @property
    def family(self) -> str:
        """"sd15", "sdxl", "flux" (XLabs), or "ctx<N>" for a context width no published base model has."""
        return FAMILY_BY_ADAPTER.get(self.adapter_family) or FAMILY_BY_CONTEXT_DIM.get(
            self.cross_attention_dim, f"ctx{self.cross_attention_dim}")

    @property
    def num_sites(self) -> int:
        return len(self.site_dims)

    @property
    def encoder_name(self) -> str:
        """Name of the encoder the adapter was trained with, e.g. "CLIP ViT-H" (its family's encoder need)."""
        from .families.registry import encoder_need

        return encoder_need(self).label

    def describe(self) -> str:
        """One line for the UI and for errors: "Plus, SDXL, 16 tokens, needs CLIP ViT-H"; "FaceID Plus v2 (assumed
        from the file name: v1 and v2 have the same tensors), SDXL, 4 tokens, LoRA rank 128, needs ...";
        "XLabs Flux v2, Flux, 16 tokens, needs CLIP ViT-L"."""
        kind = KIND_LABEL.get(self.kind, self.kind)
        version = KIND_VERSION_BY_TOKENS.get(self.kind, {}).get(self.num_tokens or 0)
        if version:
            kind += f" {version}"
        if self.plus_version:
            kind += f" {self.plus_version} (assumed from the file name: v1 and v2 have the same tensors)"
        tokens = f"{self.num_tokens} tokens" if self.num_tokens else "one token per ViT patch"
        if self.num_tokens and self.kind in PER_FACE_KINDS:
            tokens += " per face"
        family = FAMILY_LABEL.get(self.family, f"context width {self.cross_attention_dim}")
        lora = f", LoRA rank {self.lora_rank}" if self.lora_rank else ""
        return f"{kind}, {family}, {tokens}{lora}, needs {self.encoder_name}"


def detect_spec(image_proj: Mapping[str, torch.Tensor], ip_adapter: Mapping[str, torch.Tensor], *, name: str = "the file") -> AdapterSpec:
    """Identify the variant from key names and shapes, through the family registry (ip_adapter_core.families).

    image_proj / ip_adapter: the two parts of the file, keys without their part prefix.
    ``name`` appears in messages; one family reads one fact from it: FaceID Plus v1 / v2, whose tensors are identical.
    XLabs Flux files (flat ``ip_adapter_proj_model.*`` + ``double_blocks.*`` keys) come here split by
    checkpoint.split_parts and are detected by their family (families/flux.py).
    Raises UnsupportedAdapterError for known families this package does not implement (Kolors FaceID) and
    NotAnIPAdapterError for anything else that does not fit, naming the families tried.
    """
    from .families.registry import detect

    return detect(image_proj, ip_adapter, name=name)
