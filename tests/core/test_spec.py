"""Variant detection from key names and shapes (shared/reference/ip-adapter-formats.md §1, §1.1).

Every published layout is built at real size on the meta device (no memory). The expected table below is written by
hand from the formats reference, not read from ip_adapter_core or from the test kit.
"""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core import detect_spec
from ip_adapter_core.errors import NotAnIPAdapterError, UnsupportedAdapterError
from testkit.adapters import PUBLISHED, adapter_parts, published

H, G = "CLIP ViT-H", "CLIP ViT-bigG"

# name -> kind, family, num_tokens, encoder_input, encoder_dim, encoder_name, num_sites, resampler (dim, heads, depth)
# Source: formats reference §1 variant table (encoders: H embeds 1024 / penult 1280, G embeds 1280).
EXPECTED = {
    "ip-adapter_sd15": ("base", "sd15", 4, "image_embeds", 1024, H, 16, None),
    "ip-adapter_sd15_light_v11": ("base", "sd15", 4, "image_embeds", 1024, H, 16, None),
    "ip-adapter_sd15_vit-G": ("base", "sd15", 4, "image_embeds", 1280, G, 16, None),
    "ip-adapter-plus_sd15": ("plus", "sd15", 16, "penultimate", 1280, H, 16, (768, 12, 4)),
    "ip-adapter-plus-face_sd15": ("plus", "sd15", 16, "penultimate", 1280, H, 16, (768, 12, 4)),
    "ip-adapter-full-face_sd15": ("full_face", "sd15", None, "penultimate", 1280, H, 16, None),
    "ip_plus_composition_sd15": ("plus", "sd15", 16, "penultimate", 1280, H, 16, (768, 12, 4)),
    "ip-adapter_sdxl": ("base", "sdxl", 4, "image_embeds", 1280, G, 70, None),
    "ip-adapter_sdxl_vit-h": ("base", "sdxl", 4, "image_embeds", 1024, H, 70, None),
    "ip-adapter-plus_sdxl_vit-h": ("plus", "sdxl", 16, "penultimate", 1280, H, 70, (1280, 20, 4)),
    "ip-adapter-plus-face_sdxl_vit-h": ("plus", "sdxl", 16, "penultimate", 1280, H, 70, (1280, 20, 4)),
    "ip_plus_composition_sdxl": ("plus", "sdxl", 16, "penultimate", 1280, H, 70, (1280, 20, 4)),
}

# Words describe() must contain (by hand): kind, family, token count, encoder.
DESCRIBE = {
    "ip-adapter_sd15": ("base", "SD1.5", "4 tokens", "ViT-H"),
    "ip-adapter_sd15_light_v11": ("base", "SD1.5", "4 tokens", "ViT-H"),
    "ip-adapter_sd15_vit-G": ("base", "SD1.5", "4 tokens", "bigG"),
    "ip-adapter-plus_sd15": ("plus", "SD1.5", "16 tokens", "ViT-H"),
    "ip-adapter-plus-face_sd15": ("plus", "SD1.5", "16 tokens", "ViT-H"),
    "ip-adapter-full-face_sd15": ("full face", "SD1.5", None, "ViT-H"),
    "ip_plus_composition_sd15": ("plus", "SD1.5", "16 tokens", "ViT-H"),
    "ip-adapter_sdxl": ("base", "SDXL", "4 tokens", "bigG"),
    "ip-adapter_sdxl_vit-h": ("base", "SDXL", "4 tokens", "ViT-H"),
    "ip-adapter-plus_sdxl_vit-h": ("plus", "SDXL", "16 tokens", "ViT-H"),
    "ip-adapter-plus-face_sdxl_vit-h": ("plus", "SDXL", "16 tokens", "ViT-H"),
    "ip_plus_composition_sdxl": ("plus", "SDXL", "16 tokens", "ViT-H"),
}

SD15_SITE_DIMS = (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280)  # Appendix A
SDXL_SITE_DIMS = (640,) * 4 + (1280,) * 20 + (1280,) * 30 + (640,) * 6 + (1280,) * 10  # Appendix A


def test_expected_table_covers_every_published_variant():
    assert set(EXPECTED) == set(PUBLISHED) == set(DESCRIBE)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detect_published_variant(name):
    kind, family, tokens, enc_in, enc_dim, enc_name, n_sites, resampler = EXPECTED[name]
    spec = detect_spec(*published(name), name=name)
    assert spec.kind == kind
    assert spec.family == family
    assert spec.cross_attention_dim == {"sd15": 768, "sdxl": 2048}[family]
    assert spec.num_tokens == tokens
    assert spec.encoder_input == enc_in
    assert spec.encoder_dim == enc_dim
    assert spec.encoder_name == enc_name
    assert spec.num_sites == n_sites
    assert spec.site_dims == (SD15_SITE_DIMS if family == "sd15" else SDXL_SITE_DIMS)
    if resampler is None:
        assert spec.resampler_heads is None and spec.resampler_depth is None
    else:
        assert (spec.resampler_dim, spec.resampler_heads, spec.resampler_depth) == resampler


@pytest.mark.parametrize("name", sorted(DESCRIBE))
def test_describe_names_kind_family_tokens_encoder(name):
    kind, family, tokens, encoder = DESCRIBE[name]
    text = detect_spec(*published(name)).describe()
    low = text.lower()
    for word in kind.split():
        assert word in low, text
    assert family in text, text
    other_family = "SDXL" if family == "SD1.5" else "SD1.5"
    assert other_family not in text, text
    if tokens is not None:
        assert tokens in text, text
    assert encoder in text, text
    assert ("ViT-H" if encoder == "bigG" else "bigG") not in text, text


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_detection_does_not_depend_on_dtype(dtype):
    a = detect_spec(*published("ip-adapter-plus_sdxl_vit-h", dtype=dtype))
    b = detect_spec(*published("ip-adapter-plus_sdxl_vit-h", dtype=torch.float16))
    assert a == b


def test_detection_does_not_depend_on_name_argument():
    parts = published("ip-adapter_sd15")
    assert detect_spec(*parts, name="ip-adapter-plus_sdxl_vit-h.safetensors") == detect_spec(*parts, name="x.bin")


def test_kolors_plus_heads_come_from_shapes_not_family():
    # Kolors IP-Adapter-Plus: SDXL layout (ctx 2048) but Resampler dim 2048 with 12 heads (to_q rows 768) and
    # CLIP ViT-L/14-336 penultimate states (width 1024) - §1 table. A detector that hard-codes 20 heads for SDXL fails.
    p, ip = adapter_parts("plus", ctx=2048, encoder_dim=1024, site_dims=SDXL_SITE_DIMS, tokens=16,
                          resampler_dim=2048, resampler_heads=12, device="meta")
    assert p["layers.0.0.to_q.weight"].shape == (768, 2048)
    spec = detect_spec(p, ip)
    assert (spec.kind, spec.family, spec.num_tokens) == ("plus", "sdxl", 16)
    assert (spec.resampler_dim, spec.resampler_heads, spec.resampler_depth) == (2048, 12, 4)
    assert (spec.encoder_input, spec.encoder_dim) == ("penultimate", 1024)
    assert "ViT-L" in spec.encoder_name


# ---------------------------------------------------------------------------------------------------------------
# FaceID family: built here from the §1 shapes (meta tensors), independently of testkit.faceid_adapters, and
# detected as the FaceID family (no longer refused). Full coverage: tests/core/test_faceid_family.py.

def _m(*shape):
    return torch.empty(shape, device="meta", dtype=torch.float16)


def _sites(ctx, dims):
    ip = {}
    for i, h in enumerate(dims):
        ip[f"{2 * i + 1}.to_k_ip.weight"] = _m(h, ctx)
        ip[f"{2 * i + 1}.to_v_ip.weight"] = _m(h, ctx)
    return ip


def _lora(ctx, dims, r=128):
    """LoRA for every processor N: even N = attn1 (k/v in = hidden), odd N = attn2 (k/v in = ctx). §1."""
    out = {}
    for i, h in enumerate(dims):
        for n, kv_in in ((2 * i, h), (2 * i + 1, ctx)):
            out[f"{n}.to_q_lora.down.weight"], out[f"{n}.to_q_lora.up.weight"] = _m(r, h), _m(h, r)
            out[f"{n}.to_k_lora.down.weight"], out[f"{n}.to_k_lora.up.weight"] = _m(r, kv_in), _m(h, r)
            out[f"{n}.to_v_lora.down.weight"], out[f"{n}.to_v_lora.up.weight"] = _m(r, kv_in), _m(h, r)
            out[f"{n}.to_out_lora.down.weight"], out[f"{n}.to_out_lora.up.weight"] = _m(r, h), _m(h, r)
    return out


def _id_mlp(ctx, tokens):
    return {"proj.0.weight": _m(1024, 512), "proj.0.bias": _m(1024),
            "proj.2.weight": _m(tokens * ctx, 1024), "proj.2.bias": _m(tokens * ctx),
            "norm.weight": _m(ctx), "norm.bias": _m(ctx)}


def _resampler(prefix, *, dim, heads, enc, out, latents=None):
    inner = heads * 64
    p = {f"{prefix}proj_in.weight": _m(dim, enc), f"{prefix}proj_in.bias": _m(dim),
         f"{prefix}proj_out.weight": _m(out, dim), f"{prefix}proj_out.bias": _m(out),
         f"{prefix}norm_out.weight": _m(out), f"{prefix}norm_out.bias": _m(out)}
    if latents:
        p[f"{prefix}latents"] = _m(1, latents, dim)
    for i in range(4):
        a, f = f"{prefix}layers.{i}.0.", f"{prefix}layers.{i}.1."
        for n in ("norm1", "norm2"):
            p[a + n + ".weight"], p[a + n + ".bias"] = _m(dim), _m(dim)
        p[a + "to_q.weight"], p[a + "to_kv.weight"], p[a + "to_out.weight"] = _m(inner, dim), _m(2 * inner, dim), _m(dim, inner)
        p[f + "0.weight"], p[f + "0.bias"] = _m(dim), _m(dim)
        p[f + "1.weight"], p[f + "3.weight"] = _m(4 * dim, dim), _m(dim, 4 * dim)
    return p


def _faceid_layouts():
    sd, xl = (768, SD15_SITE_DIMS), (2048, SDXL_SITE_DIMS)
    return {
        "faceid_sd15": (_id_mlp(768, 4), {**_sites(*sd), **_lora(*sd)}),
        "faceid_sdxl": (_id_mlp(2048, 4), {**_sites(*xl), **_lora(*xl)}),
        "faceid-plusv2_sd15": ({**_id_mlp(768, 4), **_resampler("perceiver_resampler.", dim=768, heads=12, enc=1280, out=768)},
                               {**_sites(*sd), **_lora(*sd)}),
        "faceid-plusv2_sdxl": ({**_id_mlp(2048, 4), **_resampler("perceiver_resampler.", dim=2048, heads=32, enc=1280, out=2048)},
                               {**_sites(*xl), **_lora(*xl)}),
        # portrait: norm + proj.2 (16 tokens), no proj.3, no LoRA
        "portrait_sd15": (_id_mlp(768, 16), _sites(*sd)),
        "portrait_sdxl": (_id_mlp(2048, 16), _sites(*xl)),
        # portrait unnorm: a Resampler over the raw 512-d insightface embedding
        "portrait_sdxl_unnorm": (_resampler("", dim=1280, heads=20, enc=512, out=2048, latents=16), _sites(*xl)),
    }


# name -> kind, family, tokens, encoder_input, clip_dim, lora_rank, plus_version, resampler (dim, heads, depth);
# by hand from the §1 table (v2 from the file name: the tensors of v1 and v2 are identical).
FACEID_EXPECTED = {
    "faceid_sd15": ("faceid", "sd15", 4, "face_normed", None, 128, None, None),
    "faceid_sdxl": ("faceid", "sdxl", 4, "face_normed", None, 128, None, None),
    "faceid-plusv2_sd15": ("faceid_plus", "sd15", 4, "face_normed", 1280, 128, "v2", (768, 12, 4)),
    "faceid-plusv2_sdxl": ("faceid_plus", "sdxl", 4, "face_normed", 1280, 128, "v2", (2048, 32, 4)),
    "portrait_sd15": ("portrait", "sd15", 16, "face_normed", None, None, None, None),
    "portrait_sdxl": ("portrait", "sdxl", 16, "face_normed", None, None, None, None),
    "portrait_sdxl_unnorm": ("portrait_unnorm", "sdxl", 16, "face_raw", None, None, None, (1280, 20, 4)),
}


@pytest.mark.parametrize("name", sorted(_faceid_layouts()))
def test_faceid_family_is_detected_not_misdetected(name):
    p, ip = _faceid_layouts()[name]
    spec = detect_spec(p, ip, name=f"'{name}.bin'")
    kind, family, tokens, enc_in, clip_dim, rank, version, resampler = FACEID_EXPECTED[name]
    assert spec.adapter_family == "faceid"
    assert (spec.kind, spec.family, spec.num_tokens, spec.encoder_input, spec.encoder_dim) == (
        kind, family, tokens, enc_in, 512)
    assert (spec.clip_dim, spec.lora_rank, spec.plus_version) == (clip_dim, rank, version)
    if resampler is not None:
        assert (spec.resampler_dim, spec.resampler_heads, spec.resampler_depth) == resampler
    assert spec.site_dims == (SD15_SITE_DIMS if family == "sd15" else SDXL_SITE_DIMS)
    assert "face model" in spec.describe()


def test_faceid_lora_with_a_base_projection_is_named_not_misdetected():
    # The LoRA key is the FaceID signature even when the projection would otherwise pass as something else: such a
    # file is neither a base adapter nor a FaceID one, and the message says so.
    p, ip = published("ip-adapter_sd15")
    ip = {**ip, **_lora(768, SD15_SITE_DIMS)}
    with pytest.raises(NotAnIPAdapterError) as e:
        detect_spec(p, ip, name="'odd.bin'")
    assert not isinstance(e.value, UnsupportedAdapterError)
    assert "FaceID LoRA keys" in str(e.value) and "'odd.bin'" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# Not adapters at all -> NotAnIPAdapterError (and not UnsupportedAdapterError, which means "known family").

def _sd15_base():
    p, ip = published("ip-adapter_sd15")
    return dict(p), dict(ip)


def _without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def _bad_layouts():
    p, ip = _sd15_base()
    gaps = {k: v for k, v in ip.items() if k.split(".")[0] in ("1", "3", "7")}
    zero_based = {f"{int(k.split('.')[0]) - 1}.{k.split('.', 1)[1]}": v for k, v in ip.items()}
    mixed = dict(ip)
    mixed["3.to_k_ip.weight"], mixed["3.to_v_ip.weight"] = _m(320, 2048), _m(320, 2048)
    v_shape = dict(ip)
    v_shape["5.to_v_ip.weight"] = _m(1280, 768)
    wrong_norm = dict(p)
    wrong_norm["norm.weight"], wrong_norm["norm.bias"] = _m(1024), _m(1024)
    return {
        "no to_k_ip keys": (p, {k: v for k, v in ip.items() if "to_k_ip" not in k}),
        "empty ip_adapter": (p, {}),
        "gaps in N (1, 3, 7)": (p, gaps),
        "N starting at 0": (p, zero_based),
        "missing one to_v_ip": (p, _without(ip, "9.to_v_ip.weight")),
        "to_v_ip shape differs from to_k_ip": (p, v_shape),
        "mixed context widths": (p, mixed),
        "base norm width != context": (wrong_norm, ip),
        "unknown image projection": ({"foo.weight": _m(8, 8)}, ip),
        "empty image_proj": ({}, ip),
    }


@pytest.mark.parametrize("case", sorted(_bad_layouts()))
def test_not_an_adapter(case):
    p, ip = _bad_layouts()[case]
    with pytest.raises(NotAnIPAdapterError) as e:
        detect_spec(p, ip, name="'broken.safetensors'")
    assert not isinstance(e.value, UnsupportedAdapterError)
    assert "broken.safetensors" in str(e.value)


def test_errors_are_value_errors():
    # ARCHITECTURE: typed exceptions, subclasses of ValueError.
    assert issubclass(NotAnIPAdapterError, ValueError) and issubclass(UnsupportedAdapterError, ValueError)


def _sd35_instantx():
    """InstantX SD3.5-Large IP-Adapter (§1 table, §7; diffusers SD3IPAdapterJointAttnProcessor2_0 shapes):
    time-conditioned Resampler image_proj, and per joint block N = 0..37 norm_ip / to_k_ip / to_v_ip / RMSNorms."""
    hidden, temb = 2432, 1280
    p = _resampler("", dim=1280, heads=20, enc=1152, out=hidden, latents=64)
    p.update({"time_embedding.linear_1.weight": _m(1280, 320), "time_embedding.linear_1.bias": _m(1280),
              "time_embedding.linear_2.weight": _m(1280, 1280), "time_embedding.linear_2.bias": _m(1280)})
    for i in range(4):
        p[f"layers.{i}.2.1.weight"], p[f"layers.{i}.2.1.bias"] = _m(4 * 1280, 1280), _m(4 * 1280)
    ip = {}
    for n in range(38):
        ip[f"{n}.norm_ip.linear.weight"], ip[f"{n}.norm_ip.linear.bias"] = _m(2 * hidden, temb), _m(2 * hidden)
        ip[f"{n}.to_k_ip.weight"], ip[f"{n}.to_v_ip.weight"] = _m(hidden, hidden), _m(hidden, hidden)
        for norm in ("norm_q", "norm_k", "norm_ip_k"):
            ip[f"{n}.{norm}.weight"] = _m(64)
    return p, ip


def test_sd35_instantx_is_detected():
    # SD3.5 is implemented now (families/sd3.py): the published layout is its family's, widths from the tensors
    spec = detect_spec(*_sd35_instantx(), name="'ip-adapter.bin'")
    assert (spec.adapter_family, spec.kind, spec.family, spec.encoder_input, spec.encoder_dim, spec.num_tokens,
            spec.cross_attention_dim, spec.site_dims, spec.resampler_dim, spec.resampler_heads,
            spec.resampler_depth) == ("instantx-sd3", "instantx_sd3", "sd3", "penultimate", 1152, 64, 2432,
                                      (2432,) * 38, 1280, 20, 4)


# ---------------------------------------------------------------------------------------------------------------
# Damaged files with a recognisable layout: still a typed NotAnIPAdapterError (never KeyError / IndexError /
# an unpacking ValueError), so the node can show a readable message. ARCHITECTURE.md "Errors".

def _damaged():
    base_p, base_ip = _sd15_base()
    plus_p, plus_ip = (dict(d) for d in published("ip-adapter-plus_sd15"))
    return {
        "plus without proj_out.weight": (_without(plus_p, "proj_out.weight"), plus_ip),
        "plus with 2-D latents": ({**plus_p, "latents": _m(16, 768)}, plus_ip),
        "plus without layers.0.0.to_q.weight": (_without(plus_p, "layers.0.0.to_q.weight"), plus_ip),
        "base with 3-D proj.weight": ({**base_p, "proj.weight": _m(3072, 1024, 1)}, base_ip),
        "base with 1-D proj.weight": ({**base_p, "proj.weight": _m(3072)}, base_ip),
        "base with 0-D norm.weight": ({**base_p, "norm.weight": _m()}, base_ip),
    }


@pytest.mark.parametrize("case", sorted(_damaged()))
def test_damaged_layout_raises_typed_error(case):
    p, ip = _damaged()[case]
    with pytest.raises(NotAnIPAdapterError):
        detect_spec(p, ip, name="'damaged.safetensors'")
