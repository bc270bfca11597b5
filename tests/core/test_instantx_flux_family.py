"""The InstantX Flux family (families/flux_instantx.py): detection from files in the published layout (tiny random
ones as nested .bin and flat .safetensors, header-only ones at the published size), no stealing either way with the
SD / FaceID files that share its key names, its messages and strict loading, site_kinds, and its math (projection,
per-head RMS-normalised K and V, the block term, unrope) against formulas written out here head by head.

The whole-model comparison against a Shakker-style reference processor in diffusers' Flux is
test_instantx_flux_oracle.py.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from ip_adapter_core import families
from ip_adapter_core.attention import site_kv
from ip_adapter_core.checkpoint import load_adapter_parts
from ip_adapter_core.errors import IncompatibleError, NotAnIPAdapterError
from ip_adapter_core.families.flux_instantx import (InstantXModel, claims, instantx_kv, instantx_term, rms_heads,
                                                    site_kinds)
from ip_adapter_core.rope import unrope
from ip_adapter_core.scan import scan_adapter
from ip_adapter_core.spec import detect_spec
from testkit.adapters import SD15_SITES, SDXL_SITES, adapter_parts, published, save_adapter, write_sparse_safetensors
from testkit.faceid_adapters import published_faceid
from testkit.flux_adapters import comfy_apply_rope1, comfy_pe, flux_ids
from testkit.instantx_flux_adapters import TINY, flat_shapes, instantx_parts, instantx_shapes, write_instantx

NAME = "'ip-adapter.bin'"
HEAD_DIM = 16  # TINY: hidden 32 = 2 heads of 16


def spec_of(path):
    parts = load_adapter_parts(str(path))
    return detect_spec(parts.image_proj, parts.ip_adapter, name=os.path.basename(str(path)))


def _close(got, want, rel=1e-5):
    err, size = (got - want).abs().max().item(), want.abs().max().item()
    assert size > 0 and err <= rel * size, (err, size)


# ---------------------------------------------------------------------------------------------- detection

@pytest.mark.parametrize("file", ["ip-adapter.bin", "ip-adapter.safetensors"])
def test_tiny_files_detect(tmp_path, file):
    spec = spec_of(write_instantx(tmp_path / file))
    assert (spec.adapter_family, spec.kind, spec.family, spec.num_tokens, spec.encoder_input, spec.encoder_dim,
            spec.cross_attention_dim, spec.site_dims) == ("instantx-flux", "instantx_flux", "flux", 4, "pooled", 12,
                                                          16, (32,) * 5)
    assert spec.describe() == "InstantX Flux, Flux, 4 tokens, needs a SigLIP vision model with a 12-wide pooled output"
    family = families.family_of(spec)
    assert (family.patch_path, family.site_blocks, family.load_model) == ("blocks", ("double", "single"),
                                                                         InstantXModel.from_parts)


def test_the_published_size_detects_from_the_header_alone(tmp_path):
    path = write_sparse_safetensors(tmp_path / "ip-adapter.safetensors", flat_shapes())
    scan = scan_adapter(path)
    assert scan.problem is None, scan.problem
    spec = scan.spec
    assert (spec.num_tokens, spec.encoder_dim, spec.cross_attention_dim, spec.site_dims) == (128, 1152, 4096,
                                                                                              (3072,) * 57)
    assert spec.describe() == "InstantX Flux, Flux, 128 tokens, needs SigLIP so400m (pooled)"
    need = families.encoder_need(spec)
    assert (need.kind, need.output, need.width, need.label, need.uncond) == ("clip_vision", "pooled", 1152,
                                                                             "SigLIP so400m (pooled)", "black image")
    kinds = site_kinds(spec, 19, 38)
    assert kinds[:19] == tuple(("double", i) for i in range(19))
    assert kinds[19:] == tuple(("single", j) for j in range(38))
    assert site_kinds(spec, 19) == kinds


@pytest.mark.parametrize("double, single", [(19, 37), (20, 38), (57, 1), (58, None), (-1, None)])
def test_site_kinds_refuses_a_model_whose_blocks_do_not_add_up(double, single):
    shapes = instantx_shapes()
    spec = detect_spec(*({k: torch.empty(v, device="meta") for k, v in shapes[part].items()}
                         for part in ("image_proj", "ip_adapter")))
    with pytest.raises(IncompatibleError, match="57 sites"):
        site_kinds(spec, double, single)


SD_FILES = {  # name -> (image_proj, ip_adapter) at real size on meta, and the (family, kind) they must keep
    "ip-adapter-full-face_sd15": (lambda: published("ip-adapter-full-face_sd15"), ("sd-unet", "full_face")),
    "full face SDXL (ViT-H penultimate, 2048 context)": (
        lambda: adapter_parts("full_face", ctx=2048, encoder_dim=1280, site_dims=SDXL_SITES, device="meta"),
        ("sd-unet", "full_face")),
    "ip-adapter_sd15": (lambda: published("ip-adapter_sd15"), ("sd-unet", "base")),
    "ip-adapter-faceid-portrait_sd15": (lambda: published_faceid("ip-adapter-faceid-portrait_sd15"),
                                        ("faceid", "portrait")),
    "ip-adapter-faceid-portrait_sdxl": (lambda: published_faceid("ip-adapter-faceid-portrait_sdxl"),
                                        ("faceid", "portrait")),
    "ip-adapter-faceid_sdxl": (lambda: published_faceid("ip-adapter-faceid_sdxl"), ("faceid", "faceid")),
}


@pytest.mark.parametrize("name", sorted(SD_FILES))
def test_sd_and_faceid_files_keep_their_family(name):
    """Full face shares proj.0 / proj.2 and to_k_ip keys, FaceID / portrait the whole MLP (proj.0 (2E, E), proj.2,
    norm): their sites are numbered 1, 3, 5, ..., never 0, so this family, asked first, leaves them alone."""
    make, want = SD_FILES[name]
    image_proj, ip_adapter = make()
    assert not claims(image_proj, ip_adapter)
    spec = detect_spec(image_proj, ip_adapter, name=name)
    assert (spec.adapter_family, spec.kind) == want


def test_sd_files_written_to_disk_are_still_full_face(tmp_path):
    path = save_adapter(str(tmp_path / "ip-adapter-full-face_sd15.bin"),
                        *adapter_parts("full_face", ctx=768, encoder_dim=1280, site_dims=SD15_SITES[:2]))
    spec = spec_of(path)
    assert (spec.adapter_family, spec.kind, spec.family) == ("sd-unet", "full_face", "sd15")


def test_this_family_is_asked_before_the_ones_that_would_take_its_files():
    image_proj, ip_adapter = instantx_parts(**TINY)
    names = [f.name for f in families.registered()]
    for other in ("sd-unet", "faceid"):
        assert families.get(other).claims(image_proj, ip_adapter)  # their key signatures match InstantX files too
        assert names.index("instantx-flux") < names.index(other)
    # SD3.5's InstantX file (norm_ip, biased layers) is not claimed
    assert not claims(image_proj, {**ip_adapter, "0.norm_ip.linear.weight": torch.zeros(2, 2)})
    assert not claims(image_proj, {**ip_adapter, "0.to_k_ip.bias": torch.zeros(2)})
    assert not claims({**image_proj, "proj.3.weight": torch.zeros(16)}, ip_adapter)


def _drop(part, key):
    return lambda p, ip: (p if part == "image_proj" else ip).pop(key)


def _set(part, key, *shape):
    return lambda p, ip: (p if part == "image_proj" else ip).__setitem__(key, torch.zeros(*shape))


DAMAGE = {  # mutation of a tiny file -> the key the message must name
    "missing middle site k": (_drop("ip_adapter", "2.to_k_ip.weight"), "ip_adapter.2.to_k_ip.weight"),
    "missing last site v": (_drop("ip_adapter", "4.to_v_ip.weight"), "ip_adapter.4.to_v_ip.weight"),
    "v of another width": (_set("ip_adapter", "1.to_v_ip.weight", 33, 16), "ip_adapter.1.to_v_ip.weight"),
    "k reading another context": (_set("ip_adapter", "3.to_k_ip.weight", 32, 15), "ip_adapter.3.to_k_ip.weight"),
    "missing proj.2 bias": (_drop("image_proj", "proj.2.bias"), "image_proj.proj.2.bias"),
    "proj.0 not twice as wide": (_set("image_proj", "proj.0.weight", 20, 12), "image_proj.proj.0.weight"),
    "proj.2 rows not a multiple": (_set("image_proj", "proj.2.weight", 63, 24), "image_proj.proj.2.weight"),
    "norm bias of another width": (_set("image_proj", "norm.bias", 17), "image_proj.norm.bias"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_file_names_itself_and_the_key(case):
    damage, key = DAMAGE[case]
    image_proj, ip_adapter = instantx_parts(**TINY)
    damage(image_proj, ip_adapter)
    with pytest.raises(NotAnIPAdapterError) as e:
        detect_spec(image_proj, ip_adapter, name=NAME)
    assert NAME in str(e.value) and f"'{key}'" in str(e.value), (case, str(e.value))


def test_loading_is_strict_and_names_the_file_and_the_key():
    image_proj, ip_adapter = instantx_parts(**TINY)
    spec = detect_spec(image_proj, ip_adapter, name=NAME)
    extra = {**ip_adapter, "0.to_out_ip.weight": torch.zeros(2, 2)}
    with pytest.raises(NotAnIPAdapterError, match="to_out_ip") as e:
        InstantXModel.from_parts(spec, image_proj, extra, name=NAME)
    assert NAME in str(e.value)
    model = families.get("instantx-flux").load_model(spec, image_proj, ip_adapter, name=NAME)
    # assigned, not copied
    assert model.layers[3]["to_v_ip"].weight.data_ptr() == ip_adapter["3.to_v_ip.weight"].data_ptr()
    assert model.image_proj.proj[2].bias.data_ptr() == image_proj["proj.2.bias"].data_ptr()


# ---------------------------------------------------------------------------------------------- the math

def _gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def test_projection_is_mlp_with_exact_gelu_then_layernorm_per_token():
    image_proj, ip_adapter = instantx_parts(**TINY, seed=3)
    model = InstantXModel.from_parts(detect_spec(image_proj, ip_adapter), image_proj, ip_adapter, head_dim=HEAD_DIM)
    e = 3.0 * torch.randn(2, 12, generator=torch.Generator().manual_seed(1))  # wide enough that tanh-GELU differs
    p = image_proj
    hidden = _gelu_erf(e @ p["proj.0.weight"].T + p["proj.0.bias"])
    want = _layer_norm((hidden @ p["proj.2.weight"].T + p["proj.2.bias"]).reshape(2, 4, 16), p["norm.weight"],
                       p["norm.bias"])
    got = model.project(e)
    assert got.shape == (2, 4, 16)
    _close(got, want)


def _kv_by_hand(tokens, w, heads, eps=1e-5):
    """Per head h: x_h = tokens W[h]^T, x_h / sqrt(mean_d x_h^2 + eps), stacked as (B, heads, T, d)."""
    d = w.shape[0] // heads
    out = []
    for h in range(heads):
        x = tokens @ w[h * d:(h + 1) * d].T
        out.append(x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))
    return torch.stack(out, dim=1)


def _attention_by_hand(q, k, v):
    """softmax(q k^T / sqrt(d)) v per head, heads merged: (B, heads, L, d) -> (B, L, heads * d)."""
    b, heads, n, d = q.shape
    out = torch.empty(b, n, heads * d)
    for h in range(heads):
        w = torch.softmax(q[:, h] @ k[:, h].transpose(1, 2) / math.sqrt(d), dim=-1)
        out[..., h * d:(h + 1) * d] = w @ v[:, h]
    return out


@pytest.mark.parametrize("kv_scale", [1.0, 1e-3])  # 1e-3: per-head RMS near sqrt(eps), where eps matters
def test_kv_is_rms_normalised_per_head_k_and_v_alike(kv_scale):
    image_proj, ip_adapter = instantx_parts(**TINY, seed=4, kv_scale=kv_scale)
    model = InstantXModel.from_parts(detect_spec(image_proj, ip_adapter), image_proj, ip_adapter, head_dim=HEAD_DIM)
    tokens = model.project(torch.randn(3, 12, generator=torch.Generator().manual_seed(2)))
    for i in (0, 4):
        kw, vw = ip_adapter[f"{i}.to_k_ip.weight"], ip_adapter[f"{i}.to_v_ip.weight"]
        want_k, want_v = _kv_by_hand(tokens, kw, 2), _kv_by_hand(tokens, vw, 2)
        k, v = instantx_kv(tokens, kw, vw, heads=2)
        _close(k, want_k)
        _close(v, want_v)
        # the model's route, split into heads as the host's cache does
        k2, v2 = (t.reshape(3, 4, 2, HEAD_DIM).transpose(1, 2) for t in model.site_kv(i, tokens))
        _close(k2, want_k)
        _close(v2, want_v)


def test_the_host_cache_folds_the_weight_after_the_norm():
    """attention.site_kv (the host's K/V cache: weight folded into V, head split) over model.site_kv: the term with
    those K, V is s * the term with unscaled ones (SDPA is linear in V; the norm ran before the fold)."""
    image_proj, ip_adapter = instantx_parts(**TINY, seed=5)
    model = InstantXModel.from_parts(detect_spec(image_proj, ip_adapter), image_proj, ip_adapter, head_dim=HEAD_DIM)
    g = torch.Generator().manual_seed(3)
    cond, uncond = model.project(torch.randn(1, 12, generator=g)), model.project(torch.zeros(1, 12))
    k, v = site_kv(lambda t: model.site_kv(2, t), cond, uncond, weight=0.6, cond_or_uncond=[1, 0], per_chunk=2,
                   heads=2, device=torch.device("cpu"), dtype=torch.float32)
    q = torch.randn(4, 2, 7, HEAD_DIM, generator=g)
    kc, vc = instantx_kv(cond, ip_adapter["2.to_k_ip.weight"], ip_adapter["2.to_v_ip.weight"], heads=2)
    ku, vu = instantx_kv(uncond, ip_adapter["2.to_k_ip.weight"], ip_adapter["2.to_v_ip.weight"], heads=2)
    got = instantx_term(q, k, v)
    _close(got[:2], 0.6 * _attention_by_hand(q[:2], ku.expand(2, -1, -1, -1), vu.expand(2, -1, -1, -1)))
    _close(got[2:], 0.6 * _attention_by_hand(q[2:], kc.expand(2, -1, -1, -1), vc.expand(2, -1, -1, -1)))


def test_term_is_per_head_softmax_attention():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(2, 3, 9, 8, generator=g)
    k, v = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 5, 8, generator=g)
    got = instantx_term(q, k, v)
    assert got.shape == (2, 9, 24)
    _close(got, _attention_by_hand(q, k, v))
    with pytest.raises(ValueError, match="do not share"):
        instantx_term(q, k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match="does not split"):
        rms_heads(torch.zeros(2, 3, 20), 16)


@pytest.mark.parametrize("block", ["double", "single"])
def test_unrope_then_term_equals_the_term_on_the_query_before_rope(block):
    """The host's override sees q after RoPE (ComfyUI's pe, txt then img); unrope gives back the pre-RoPE q whose
    image slice (double) or whole length (single) makes the term."""
    txt, grid, heads, d = 5, (3, 4), 2, 16
    g = torch.Generator().manual_seed(7)
    q = 2.0 * torch.randn(2, heads, txt + grid[0] * grid[1], d, generator=g)
    k, v = instantx_kv(torch.randn(2, 4, 16, generator=g), torch.randn(32, 16, generator=g),
                       torch.randn(32, 16, generator=g), heads)
    pe = comfy_pe(flux_ids(*grid, txt=txt).expand(2, -1, -1), (4, 6, 6))
    roped = comfy_apply_rope1(q, pe)
    part = slice(txt, None) if block == "double" else slice(None)
    want = instantx_term(q[:, :, part], k, v)
    assert (instantx_term(roped[:, :, part], k, v) - want).abs().max() > 0.01 * want.abs().max()  # RoPE matters
    _close(instantx_term(unrope(roped, pe)[:, :, part], k, v), want)
