"""The XLabs Flux family (families/flux.py): detection from files written in the published layout (tiny random ones,
and header-only ones at the published sizes), its messages, its projection and K/V layers, the block term's math
against a hand-written softmax attention, and rope.unrope against ComfyUI's RoPE.

The diffusers comparison is in test_flux_oracle.py; these tests need torch and safetensors only.
"""
from __future__ import annotations

import ast
import os

import pytest
import torch

from ip_adapter_core import families
from ip_adapter_core.checkpoint import load_adapter_parts, split_parts
from ip_adapter_core.errors import NotAnIPAdapterError
from ip_adapter_core.families.flux import XLabsModel, kv_for_tokens, layer_key, xlabs_image_term
from ip_adapter_core.rope import unrope
from ip_adapter_core.scan import scan_adapter
from ip_adapter_core.spec import detect_spec
from testkit.adapters import adapter_parts, save_adapter, write_sparse_safetensors
from testkit.comfyui_env import find_comfyui
from testkit.flux_adapters import (PUBLISHED_TOKENS, comfy_apply_rope1, comfy_pe, flux_ids, write_xlabs, xlabs_shapes,
                                  xlabs_state_dict)

TINY = dict(clip_dim=12, ctx=16, hidden=8, blocks=3)
NAME = "'ip_adapter.safetensors'"


def spec_of(path):
    parts = load_adapter_parts(str(path))
    return detect_spec(parts.image_proj, parts.ip_adapter, name=os.path.basename(str(path)))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tiny_files_detect_as_v1_and_v2(tmp_path, version):
    tokens = PUBLISHED_TOKENS[version]
    spec = spec_of(write_xlabs(tmp_path / "ip_adapter.safetensors", tokens=tokens, **TINY))
    assert (spec.adapter_family, spec.kind, spec.family, spec.num_tokens, spec.encoder_input, spec.encoder_dim,
            spec.cross_attention_dim, spec.site_dims) == ("xlabs-flux", "xlabs", "flux", tokens, "image_embeds", 12,
                                                          16, (8, 8, 8))
    assert spec.describe() == (f"XLabs Flux {version}, Flux, {tokens} tokens, needs a CLIP vision model with "
                               "12-wide image embeds")
    assert families.family_of(spec).patch_path == "blocks"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_published_sizes_detect_from_the_header_alone(tmp_path, version):
    tokens = PUBLISHED_TOKENS[version]
    path = write_sparse_safetensors(tmp_path / f"flux-ip-adapter-{version}.safetensors", xlabs_shapes(tokens=tokens))
    scan = scan_adapter(path)
    assert scan.problem is None, scan.problem
    spec = scan.spec
    assert (spec.num_tokens, spec.encoder_dim, spec.cross_attention_dim, spec.site_dims) == (tokens, 768, 4096,
                                                                                              (3072,) * 19)
    assert spec.describe() == f"XLabs Flux {version}, Flux, {tokens} tokens, needs CLIP ViT-L"
    need = families.encoder_need(spec)
    assert (need.kind, need.output, need.width, need.label) == ("clip_vision", "image_embeds", 768, "CLIP ViT-L")


def _drop(key):
    return lambda sd: sd.pop(key)


def _reshape(key, *shape):
    return lambda sd: sd.__setitem__(key, torch.zeros(*shape))


# mutation of a tiny v1 file -> the key the message must name
DAMAGE = {
    "missing middle block k weight": (_drop(layer_key(1, "k", "weight")), layer_key(1, "k", "weight")),
    "missing v bias": (_drop(layer_key(2, "v", "bias")), layer_key(2, "v", "bias")),
    "v weight of another width": (_reshape(layer_key(1, "v", "weight"), 9, 16), layer_key(1, "v", "weight")),
    "k weight reading another context": (_reshape(layer_key(2, "k", "weight"), 8, 15), layer_key(2, "k", "weight")),
    "2-D k bias": (_reshape(layer_key(0, "k", "bias"), 8, 1), layer_key(0, "k", "bias")),
    "missing projection bias": (_drop("ip_adapter_proj_model.proj.bias"), "ip_adapter_proj_model.proj.bias"),
    "norm of another width": (_reshape("ip_adapter_proj_model.norm.bias", 17), "ip_adapter_proj_model.norm.bias"),
    "proj rows not a multiple": (_reshape("ip_adapter_proj_model.proj.weight", 63, 12),
                                 "ip_adapter_proj_model.proj.weight"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_file_names_itself_and_the_key(case):
    damage, key = DAMAGE[case]
    sd = xlabs_state_dict(tokens=4, **TINY)
    damage(sd)
    parts = split_parts(sd, name=NAME)
    with pytest.raises(NotAnIPAdapterError) as e:
        detect_spec(parts.image_proj, parts.ip_adapter, name=NAME)
    assert NAME in str(e.value) and f"'{key}'" in str(e.value), (case, str(e.value))


def test_sd15_files_are_still_sd_unet(tmp_path):
    path = save_adapter(str(tmp_path / "ip-adapter_sd15.safetensors"),
                        *adapter_parts("base", ctx=768, encoder_dim=1024, site_dims=(320, 640)))
    spec = spec_of(path)
    assert (spec.adapter_family, spec.kind, spec.family) == ("sd-unet", "base", "sd15")
    assert spec.describe() == "Base, SD1.5, 4 tokens, needs CLIP ViT-H"


def test_a_flux_model_file_is_not_taken_for_an_adapter():
    # ComfyUI's Flux checkpoints have double_blocks.* keys too, but no ip_adapter_proj_model.*
    sd = {"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)}
    with pytest.raises(NotAnIPAdapterError, match="diffusion model"):
        split_parts(sd, name=NAME)


def _layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


@pytest.mark.parametrize("tokens", [4, 16])
def test_projection_loads_the_file_strictly_and_computes_linear_then_layernorm(tokens):
    sd = xlabs_state_dict(tokens=tokens, **TINY, seed=3)
    parts = split_parts(sd, name=NAME)
    spec = detect_spec(parts.image_proj, parts.ip_adapter, name=NAME)
    proj = families.build_projection(spec)
    proj.load_state_dict(parts.image_proj, strict=True)
    e = torch.randn(2, 12)
    p = lambda k: sd[f"ip_adapter_proj_model.{k}"]  # noqa: E731
    want = _layer_norm((e @ p("proj.weight").T + p("proj.bias")).reshape(2, tokens, 16), p("norm.weight"), p("norm.bias"))
    got = proj(e)
    assert got.shape == (2, tokens, 16)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_the_model_loads_every_key_and_its_site_kv_has_the_biases():
    sd = xlabs_state_dict(tokens=4, **TINY, seed=4)
    parts = split_parts(sd, name=NAME)
    spec = detect_spec(parts.image_proj, parts.ip_adapter, name=NAME)
    family = families.get("xlabs-flux")
    assert family.site_blocks == ("double",) and families.get("sd-unet").site_blocks == ()
    model = family.load_model(spec, parts.image_proj, parts.ip_adapter, name=NAME)
    assert isinstance(model, XLabsModel)
    assert sorted(k.removeprefix("layers.") for k in model.state_dict() if k.startswith("layers.")) == sorted(parts.ip_adapter)
    tokens = torch.randn(2, 4, 16)
    k, v = model.site_kv(2, tokens)
    for got, kv in ((k, "k"), (v, "v")):
        want = tokens @ sd[layer_key(2, kv, "weight")].T + sd[layer_key(2, kv, "bias")]
        assert (got - want).abs().max() <= 1e-6 * want.abs().max()


def test_the_model_refuses_a_key_it_does_not_know():
    sd = xlabs_state_dict(tokens=4, **TINY)
    parts = split_parts(sd, name=NAME)
    spec = detect_spec(parts.image_proj, parts.ip_adapter, name=NAME)
    extra = {**parts.ip_adapter, "double_blocks.0.processor.something_else.weight": torch.zeros(2)}
    with pytest.raises(NotAnIPAdapterError, match="something_else"):
        XLabsModel.from_parts(spec, parts.image_proj, extra, name=NAME)


def test_block_term_is_per_head_softmax_attention_with_biased_kv():
    """kv_for_tokens + xlabs_image_term against attention written out head by head (softmax(q k^T / sqrt(d)) v)."""
    g = torch.Generator().manual_seed(5)
    b, heads, d, l_img, t, ctx = 2, 3, 4, 7, 5, 10
    q = torch.randn(b, heads, l_img, d, generator=g)
    tokens = torch.randn(b, t, ctx, generator=g)
    kw, kb, vw, vb = (torch.randn(heads * d, ctx, generator=g), torch.randn(heads * d, generator=g),
                      torch.randn(heads * d, ctx, generator=g), torch.randn(heads * d, generator=g))
    k_ip, v_ip = kv_for_tokens(tokens, kw, kb, vw, vb, heads)
    got = xlabs_image_term(q, k_ip, v_ip)
    k_all, v_all = tokens @ kw.T + kb, tokens @ vw.T + vb
    want = torch.empty(b, l_img, heads * d)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[:, h] @ k_all[..., cols].transpose(1, 2) / d ** 0.5, dim=-1)
        want[..., cols] = w @ v_all[..., cols]
    assert got.shape == (b, l_img, heads * d)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


# ---------------------------------------------------------------------------------------------- RoPE

def _rope_case(seed: int = 6):
    g = torch.Generator().manual_seed(seed)
    pe = comfy_pe(flux_ids(3, 4, txt=5).expand(2, -1, -1), (4, 6, 6))
    x = 3.0 * torch.randn(2, 2, 17, 16, generator=g)
    return x, pe


def test_unrope_inverts_comfyuis_rope():
    x, pe = _rope_case()
    y = comfy_apply_rope1(x, pe)
    assert (y - x).abs().max() > 0.1 * x.abs().max()  # the rotation does something
    assert (unrope(y, pe) - x).abs().max() <= 1e-5 * x.abs().max()
    assert (comfy_apply_rope1(y, pe) - x).abs().max() > 0.1 * x.abs().max()  # the forward rotation does not undo itself


def test_unrope_keeps_the_dtype_and_inverts_16_bit_queries_to_their_precision():
    x, pe = _rope_case()
    y = comfy_apply_rope1(x.to(torch.bfloat16), pe)
    back = unrope(y, pe)
    assert back.dtype == torch.bfloat16
    assert (back.float() - x).abs().max() <= 2 * 2 ** -7 * x.abs().max()


def test_unrope_refuses_a_pe_of_another_length():
    x, pe = _rope_case()
    with pytest.raises(ValueError, match="does not fit"):
        unrope(x[:, :, :-1], pe)


def test_unrope_inverts_the_apply_rope1_in_comfyuis_source():
    """The function itself, taken from comfy/ldm/flux/math.py by parsing it (nothing of ComfyUI is imported)."""
    root, why = find_comfyui()
    path = os.path.join(root or "", "comfy", "ldm", "flux", "math.py")
    if root is None or not os.path.isfile(path):
        pytest.skip(f"ComfyUI's flux/math.py is not here ({why}); the written-out copy of apply_rope1 was checked")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    # 0.33 keeps the torch code in _apply_rope1 (apply_rope1 dispatches to comfy.quant_ops' kernel, the same math);
    # 0.3.64 has it in apply_rope1
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    name = "_apply_rope1" if "_apply_rope1" in functions else "apply_rope1"
    if name not in functions:
        pytest.skip(f"{path} has no apply_rope1 any more: look at how this ComfyUI applies RoPE")
    namespace = {"torch": torch, "Tensor": torch.Tensor}
    module = ast.Module(body=[functions[name]], type_ignores=[])
    exec(compile(module, path, "exec"), namespace)  # noqa: S102 (trusted local source)
    x, pe = _rope_case()
    y = namespace[name](x, pe)
    assert (y - comfy_apply_rope1(x, pe)).abs().max() <= 1e-6 * x.abs().max()
    assert (unrope(y, pe) - x).abs().max() <= 1e-5 * x.abs().max()
