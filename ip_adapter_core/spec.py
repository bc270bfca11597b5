"""What an adapter file is, decided from tensor names and shapes only (never from the file name)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch

from .errors import NotAnIPAdapterError, UnsupportedAdapterError

_SITE_KEY = re.compile(r"^(\d+)\.to_k_ip\.weight$")

FAMILY_BY_CONTEXT_DIM = {768: "sd15", 2048: "sdxl"}
FAMILY_LABEL = {"sd15": "SD1.5", "sdxl": "SDXL"}
KIND_LABEL = {"base": "Base", "plus": "Plus", "full_face": "Full face"}
# (encoder output the projection reads, its width) -> encoder name
_ENCODERS = {
    ("image_embeds", 1024): "CLIP ViT-H",
    ("image_embeds", 1280): "CLIP ViT-bigG",
    ("image_embeds", 768): "CLIP ViT-L",
    ("penultimate", 1280): "CLIP ViT-H",
    ("penultimate", 1664): "CLIP ViT-bigG",
    ("penultimate", 1024): "CLIP ViT-L",
}


@dataclass(frozen=True)
class AdapterSpec:
    """Everything the rest of the package needs to know about one adapter file.

    kind: "base" (Linear+LayerNorm, 4 tokens), "plus" (Perceiver resampler), "full_face" (MLP over all ViT tokens).
    encoder_input: which CLIP vision output the projection reads: "image_embeds" [B, E] or "penultimate" [B, N, E].
    site_dims: output width of to_k_ip/to_v_ip per cross-attention site, in checkpoint order N = 1, 3, 5, ...
    num_tokens: image tokens per image; None for full face, whose count equals the encoder's token count.
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

    @property
    def family(self) -> str:
        """"sd15", "sdxl", or "ctx<N>" for a context width no published base model has."""
        return FAMILY_BY_CONTEXT_DIM.get(self.cross_attention_dim, f"ctx{self.cross_attention_dim}")

    @property
    def num_sites(self) -> int:
        return len(self.site_dims)

    @property
    def encoder_name(self) -> str:
        """Name of the CLIP vision encoder the adapter was trained with, e.g. "CLIP ViT-H"."""
        return _ENCODERS.get(
            (self.encoder_input, self.encoder_dim),
            f"a CLIP vision model with {self.encoder_dim}-wide "
            + ("image embeds" if self.encoder_input == "image_embeds" else "hidden states"),
        )

    def describe(self) -> str:
        """One line for the UI and for errors: "Plus, SDXL, 16 tokens, needs CLIP ViT-H"."""
        tokens = f"{self.num_tokens} tokens" if self.num_tokens else "one token per ViT patch"
        family = FAMILY_LABEL.get(self.family, f"context width {self.cross_attention_dim}")
        return f"{KIND_LABEL[self.kind]}, {family}, {tokens}, needs {self.encoder_name}"


def detect_spec(image_proj: Mapping[str, torch.Tensor], ip_adapter: Mapping[str, torch.Tensor], *, name: str = "the file") -> AdapterSpec:
    """Identify the variant from key names and shapes.

    image_proj / ip_adapter: the two parts of the file, keys without their part prefix.
    Raises UnsupportedAdapterError for known families this package does not implement (FaceID, XLabs Flux, SD3.5)
    and NotAnIPAdapterError for anything else that does not fit.
    """
    if "time_embedding.linear_1.weight" in image_proj or any(".norm_ip." in k for k in ip_adapter):
        raise UnsupportedAdapterError(f"{name} is the InstantX SD3.5 IP-Adapter; SD3.5 is not supported yet.")
    site_dims, ctx = _site_dims(ip_adapter, name)
    if "0.to_q_lora.down.weight" in ip_adapter or "perceiver_resampler.proj_in.weight" in image_proj:
        raise UnsupportedAdapterError(
            f"{name} is an IP-Adapter FaceID model (it needs insightface face embeddings); FaceID is not supported yet. "
            "Use a standard, plus or full-face adapter."
        )
    p = image_proj

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        t = p.get(key)
        if t is None or t.dim() != ndim:
            found = "missing" if t is None else f"shaped {tuple(t.shape)}"
            raise NotAnIPAdapterError(f"{name} has an IP-Adapter layout but 'image_proj.{key}' is {found} "
                                      f"(expected a {ndim}-D tensor); the file is damaged or not an IP-Adapter.")
        return tuple(t.shape)

    if "proj.weight" in p and "norm.weight" in p:
        (c,), (rows, enc) = shape("norm.weight", 1), shape("proj.weight", 2)
        _expect(c == ctx and rows % c == 0, name, f"proj.weight {(rows, enc)} with norm width {c} and context {ctx}")
        return AdapterSpec(kind="base", cross_attention_dim=ctx, encoder_input="image_embeds", encoder_dim=enc,
                           num_tokens=rows // c, site_dims=site_dims)
    if "proj.3.weight" in p and "proj.0.weight" in p:
        (c,), (_, enc) = shape("proj.3.weight", 1), shape("proj.0.weight", 2)
        _expect(c == ctx, name, f"proj.3 width {c} vs context {ctx}")
        return AdapterSpec(kind="full_face", cross_attention_dim=ctx, encoder_input="penultimate",
                           encoder_dim=enc, num_tokens=None, site_dims=site_dims)
    if "norm.weight" in p and "proj.2.weight" in p:
        raise UnsupportedAdapterError(f"{name} is an IP-Adapter FaceID / portrait model; FaceID is not supported yet.")
    if "latents" in p and "proj_in.weight" in p:
        (_, tokens, dim), (_, enc) = shape("latents", 3), shape("proj_in.weight", 2)
        q_rows, out_rows = shape("layers.0.0.to_q.weight", 2)[0], shape("proj_out.weight", 2)[0]
        depth = len({k.split(".")[1] for k in p if k.startswith("layers.")})
        _expect(q_rows % 64 == 0 and out_rows == ctx, name,
                f"resampler latents {(1, tokens, dim)}, depth {depth}, to_q rows {q_rows}, proj_out rows {out_rows}")
        if enc == 512:
            raise UnsupportedAdapterError(f"{name} is the FaceID portrait (unnorm) model; FaceID is not supported yet.")
        return AdapterSpec(kind="plus", cross_attention_dim=ctx, encoder_input="penultimate", encoder_dim=enc,
                           num_tokens=tokens, site_dims=site_dims, resampler_dim=dim, resampler_heads=q_rows // 64,
                           resampler_depth=depth)
    raise NotAnIPAdapterError(
        f"{name} has IP-Adapter layers but an image projection this package does not recognise "
        f"(keys: {', '.join(sorted(p)[:6])}...)."
    )


def _site_dims(ip_adapter: Mapping[str, torch.Tensor], name: str) -> tuple[tuple[int, ...], int]:
    """Per-site widths in N order, and the context width; checks N = 1, 3, 5, ... with k and v of equal shape."""
    ns = sorted(int(m.group(1)) for k in ip_adapter if (m := _SITE_KEY.match(k)))
    if not ns:
        raise NotAnIPAdapterError(f"{name} has no '<N>.to_k_ip.weight' keys, so it is not an IP-Adapter.")
    expected = list(range(1, 2 * len(ns), 2))
    if ns != expected:
        raise NotAnIPAdapterError(f"{name}: cross-attention layers are numbered {ns[:5]}..., expected 1, 3, 5, ... "
                                  f"up to {expected[-1]}; the file is incomplete or not an IP-Adapter.")
    dims = []
    ctx = None
    for n in ns:
        k = ip_adapter[f"{n}.to_k_ip.weight"]
        v = ip_adapter.get(f"{n}.to_v_ip.weight")
        if v is None or k.dim() != 2 or v.shape != k.shape:
            raise NotAnIPAdapterError(f"{name}: layer {n} has to_k_ip {tuple(k.shape)} but to_v_ip "
                                      f"{None if v is None else tuple(v.shape)}; expected two equal [hidden, context] matrices.")
        if ctx is None:
            ctx = k.shape[1]
        elif k.shape[1] != ctx:
            raise NotAnIPAdapterError(f"{name}: layer {n} reads context width {k.shape[1]}, layer 1 reads {ctx}.")
        dims.append(k.shape[0])
    return tuple(dims), int(ctx)


def _expect(ok: bool, name: str, found: str) -> None:
    if not ok:
        raise NotAnIPAdapterError(f"{name} has an IP-Adapter layout but inconsistent shapes: {found}.")
