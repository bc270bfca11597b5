"""The SD1.5 / SDXL image adapters (h94 and ostris): base (Linear + LayerNorm, 4 tokens), plus (Perceiver resampler),
full face (MLP over every ViT token), on CLIP vision, patched into the UNet's attn2 sites."""
from __future__ import annotations

import re

from ..errors import NotAnIPAdapterError
from ..projection import ImageProj, MLPProj, Resampler
from ..spec import AdapterSpec
from .registry import EncoderNeed, Family, Preset, Tensors, register

NAME = "sd-unet"
_SITE_KEY = re.compile(r"^(\d+)\.to_k_ip\.weight$")
# (encoder output the projection reads, its width) -> the CLIP vision encoder of the published adapters
ENCODERS = {
    ("image_embeds", 1024): "CLIP ViT-H",
    ("image_embeds", 1280): "CLIP ViT-bigG",
    ("image_embeds", 768): "CLIP ViT-L",
    ("penultimate", 1280): "CLIP ViT-H",
    ("penultimate", 1664): "CLIP ViT-bigG",
    ("penultimate", 1024): "CLIP ViT-L",
}


def claims(image_proj: Tensors, ip_adapter: Tensors) -> bool:
    return any(_SITE_KEY.match(k) for k in ip_adapter)


def detect(image_proj: Tensors, ip_adapter: Tensors, name: str) -> AdapterSpec:
    site_dims, ctx = site_layout(ip_adapter, name)
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
                           num_tokens=rows // c, site_dims=site_dims, adapter_family=NAME)
    if "proj.3.weight" in p and "proj.0.weight" in p:
        (c,), (_, enc) = shape("proj.3.weight", 1), shape("proj.0.weight", 2)
        _expect(c == ctx, name, f"proj.3 width {c} vs context {ctx}")
        return AdapterSpec(kind="full_face", cross_attention_dim=ctx, encoder_input="penultimate",
                           encoder_dim=enc, num_tokens=None, site_dims=site_dims, adapter_family=NAME)
    if "latents" in p and "proj_in.weight" in p:
        (_, tokens, dim), (_, enc) = shape("latents", 3), shape("proj_in.weight", 2)
        q_rows, out_rows = shape("layers.0.0.to_q.weight", 2)[0], shape("proj_out.weight", 2)[0]
        depth = len({k.split(".")[1] for k in p if k.startswith("layers.")})
        _expect(q_rows % 64 == 0 and out_rows == ctx, name,
                f"resampler latents {(1, tokens, dim)}, depth {depth}, to_q rows {q_rows}, proj_out rows {out_rows}")
        return AdapterSpec(kind="plus", cross_attention_dim=ctx, encoder_input="penultimate", encoder_dim=enc,
                           num_tokens=tokens, site_dims=site_dims, resampler_dim=dim, resampler_heads=q_rows // 64,
                           resampler_depth=depth, adapter_family=NAME)
    raise NotAnIPAdapterError(
        f"{name} has IP-Adapter layers but an image projection this package does not recognise "
        f"(keys: {', '.join(sorted(p)[:6])}...)."
    )


def site_layout(ip_adapter: Tensors, name: str) -> tuple[tuple[int, ...], int]:
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


def build_projection(spec: AdapterSpec):
    if spec.kind == "base":
        return ImageProj(encoder_dim=spec.encoder_dim, context_dim=spec.cross_attention_dim,
                         num_tokens=spec.num_tokens or 0)
    if spec.kind == "full_face":
        return MLPProj(encoder_dim=spec.encoder_dim, context_dim=spec.cross_attention_dim)
    if spec.kind == "plus":
        return Resampler(encoder_dim=spec.encoder_dim, dim=spec.resampler_dim or 0, heads=spec.resampler_heads or 0,
                         depth=spec.resampler_depth or 0, num_queries=spec.num_tokens or 0,
                         context_dim=spec.cross_attention_dim)
    raise NotAnIPAdapterError(f"the {NAME} family has no projection of kind {spec.kind!r}")


def encoder_need(spec: AdapterSpec) -> EncoderNeed:
    what = "image embeds" if spec.encoder_input == "image_embeds" else "hidden states"
    label = ENCODERS.get((spec.encoder_input, spec.encoder_dim),
                         f"a CLIP vision model with {spec.encoder_dim}-wide {what}")
    return EncoderNeed(kind="clip_vision", output=spec.encoder_input, width=spec.encoder_dim, label=label)


# ---------------------------------------------------------------------------------------------- presets

def _bigg_base(s: AdapterSpec) -> bool:
    """A base adapter reading 1280-wide image embeds: the ViT-bigG projection width."""
    return s.kind == "base" and s.encoder_dim == 1280


_STANDARD = {"sd15": "ip-adapter_sd15.safetensors", "sdxl": "ip-adapter_sdxl_vit-h.safetensors"}
_H = "CLIP ViT-H"
PRESETS: dict[str, Preset] = {
    "standard": Preset("a standard (base, ViT-H) adapter", lambda s: s.kind == "base" and not _bigg_base(s), _H,
                       _STANDARD, avoid=("light",)),
    "light": Preset("a light adapter (SD1.5 base, ViT-H)",
                    lambda s: s.kind == "base" and not _bigg_base(s) and s.family == "sd15", _H,
                    {"sd15": "ip-adapter_sd15_light_v11.bin"}, prefer=("light",)),
    "vit-G": Preset("a ViT-bigG base adapter", _bigg_base, "CLIP ViT-bigG",
                    {"sd15": "ip-adapter_sd15_vit-G.safetensors", "sdxl": "ip-adapter_sdxl.safetensors"}),
    "plus": Preset("a Plus adapter", lambda s: s.kind == "plus", _H,
                   {"sd15": "ip-adapter-plus_sd15.safetensors", "sdxl": "ip-adapter-plus_sdxl_vit-h.safetensors"},
                   avoid=("face", "composition")),
    "plus face": Preset("a Plus face adapter", lambda s: s.kind == "plus", _H,
                        {"sd15": "ip-adapter-plus-face_sd15.safetensors",
                         "sdxl": "ip-adapter-plus-face_sdxl_vit-h.safetensors"}, prefer=("face",)),
    "full face": Preset("a Full face adapter", lambda s: s.kind == "full_face", _H,
                        {"sd15": "ip-adapter-full-face_sd15.safetensors"}),
    "composition": Preset("a composition adapter (Plus layout)", lambda s: s.kind == "plus", _H,
                          {"sd15": "ip_plus_composition_sd15.safetensors", "sdxl": "ip_plus_composition_sdxl.safetensors"},
                          prefer=("composition",)),
    "any": Preset("any adapter", lambda s: s.adapter_family == NAME, _H, _STANDARD),
}

FAMILY = register(Family(name=NAME, label="SD1.5 / SDXL image adapters", claims=claims, detect=detect,
                         build_projection=build_projection, encoder_need=encoder_need, patch_path="attn2",
                         presets=PRESETS))
