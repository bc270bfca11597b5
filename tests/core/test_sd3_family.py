"""The InstantX SD3.5 family (families/sd3.py, sd3_resampler.py): detection from files in the original layout (tiny
random ones as .safetensors and .bin, and header-only ones at the published sizes), its messages, the files other
families keep, strict loading, and the block math against formulas written out here (recovery of the adapter's
norms from the model's normed q / k included).

The diffusers comparison is in test_sd3_oracle.py; these tests need torch and safetensors only.
"""
from __future__ import annotations

import os

import pytest
import torch

from ip_adapter_core import families
from ip_adapter_core.checkpoint import load_adapter_parts, split_parts
from ip_adapter_core.errors import NotAnIPAdapterError, UnsupportedAdapterError
from ip_adapter_core.families.sd3 import (InstantXSD3Model, block_ip_kv, joint_image_term, norm_ratio,
                                          recover_raw_normed, rms_norm, sd3_image_term)
from ip_adapter_core.families.sd3_resampler import timestep_embedding
from ip_adapter_core.scan import scan_adapter
from ip_adapter_core.spec import detect_spec
from testkit.adapters import adapter_parts, save_adapter, write_sparse_safetensors
from testkit.flux_adapters import write_xlabs
from testkit.sd3_adapters import TINY, sd3_shapes, sd3_state_dict, write_sd3

NAME = "'ip-adapter.bin'"


def spec_of(path):
    parts = load_adapter_parts(str(path))
    return detect_spec(parts.image_proj, parts.ip_adapter, name=os.path.basename(str(path)))


def tiny_parts(seed=0, **sizes):
    return split_parts(sd3_state_dict(seed=seed, **{**TINY, **sizes}), name=NAME)


def tiny_model(seed=0):
    parts = tiny_parts(seed)
    spec = detect_spec(parts.image_proj, parts.ip_adapter, name=NAME)
    return families.get("instantx-sd3").load_model(spec, parts.image_proj, parts.ip_adapter, name=NAME), parts


@pytest.mark.parametrize("filename", ["ip-adapter.bin", "ip-adapter.safetensors"])
def test_tiny_files_detect(tmp_path, filename):
    spec = spec_of(write_sd3(tmp_path / filename))
    assert (spec.adapter_family, spec.kind, spec.family, spec.encoder_input, spec.encoder_dim, spec.num_tokens,
            spec.cross_attention_dim, spec.site_dims, spec.resampler_dim, spec.resampler_heads,
            spec.resampler_depth) == ("instantx-sd3", "instantx_sd3", "sd3", "penultimate", 24, 8, 128, (128, 128),
                                      128, 2, 4)
    assert spec.describe() == ("InstantX SD3.5, SD3.5-Large, 8 tokens, needs a SigLIP vision model with 24-wide "
                               "hidden states")
    family = families.family_of(spec)
    assert (family.patch_path, family.site_blocks, family.implemented, family.presets) == ("joint", ("joint",), True, {})
    assert family.step_projection  # its embeds carry the SigLIP features: the resampler reads the step
    assert family.load_model == InstantXSD3Model.from_parts


def test_published_sizes_detect_from_the_header_alone(tmp_path):
    path = write_sparse_safetensors(tmp_path / "ip-adapter.safetensors", sd3_shapes())
    scan = scan_adapter(path)
    assert scan.problem is None, scan.problem
    spec = scan.spec
    assert (spec.num_tokens, spec.encoder_dim, spec.cross_attention_dim, spec.site_dims, spec.resampler_dim,
            spec.resampler_heads, spec.resampler_depth) == (64, 1152, 2432, (2432,) * 38, 1280, 20, 4)
    assert spec.describe() == "InstantX SD3.5, SD3.5-Large, 64 tokens, needs SigLIP so400m-patch14-384"
    need = families.encoder_need(spec)
    assert (need.kind, need.output, need.width, need.label, need.uncond) == (
        "clip_vision", "penultimate", 1152, "SigLIP so400m-patch14-384", "zero features")


def _drop(key):
    return lambda sd: sd.pop(key)


def _reshape(key, *shape):
    return lambda sd: sd.__setitem__(key, torch.zeros(*shape))


# mutation of a tiny file -> the key the message must name
DAMAGE = {
    "missing latents": (_drop("image_proj.latents"), "image_proj.latents"),
    "2-D latents": (_reshape("image_proj.latents", 8, 128), "image_proj.latents"),
    "missing time embedding bias": (_drop("image_proj.time_embedding.linear_2.bias"),
                                    "image_proj.time_embedding.linear_2.bias"),
    "time embedding of another sinusoid width": (_reshape("image_proj.time_embedding.linear_1.weight", 128, 256),
                                                 "image_proj.time_embedding.linear_1.weight"),
    "proj_in of another width": (_reshape("image_proj.proj_in.weight", 96, 24), "image_proj.proj_in.weight"),
    "missing adaLN of the last layer": (_drop("image_proj.layers.3.2.1.weight"), "image_proj.layers.3.2.1.weight"),
    "to_q rows not a multiple of 64": (_reshape("image_proj.layers.0.0.to_q.weight", 100, 128),
                                       "image_proj.layers.0.0.to_q.weight"),
    "missing norm_ip of the last block": (_drop("ip_adapter.1.norm_ip.linear.bias"), "ip_adapter.1.norm_ip.linear.bias"),
    "missing to_v_ip": (_drop("ip_adapter.0.to_v_ip.weight"), "ip_adapter.0.to_v_ip.weight"),
    "norm_ip of another width": (_reshape("ip_adapter.1.norm_ip.linear.weight", 128, 128),
                                 "ip_adapter.1.norm_ip.linear.weight"),
    "norm_q of another head width": (_reshape("ip_adapter.0.norm_q.weight", 32), "ip_adapter.0.norm_q.weight"),
    "to_k_ip reading another width": (_reshape("ip_adapter.1.to_k_ip.weight", 128, 96), "ip_adapter.1.to_k_ip.weight"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_file_names_itself_and_the_key(case):
    damage, key = DAMAGE[case]
    sd = sd3_state_dict(**TINY)
    damage(sd)
    parts = split_parts(sd, name=NAME)
    with pytest.raises(NotAnIPAdapterError) as e:
        detect_spec(parts.image_proj, parts.ip_adapter, name=NAME)
    assert not isinstance(e.value, UnsupportedAdapterError)
    assert NAME in str(e.value) and f"'{key}'" in str(e.value), (case, str(e.value))


@pytest.mark.parametrize("depth", [3, 5])
def test_a_resampler_of_another_depth_is_refused_by_name(depth):
    parts = tiny_parts(depth=depth)
    with pytest.raises(UnsupportedAdapterError) as e:
        detect_spec(parts.image_proj, parts.ip_adapter, name=NAME)
    assert NAME in str(e.value) and f"{depth}-layer" in str(e.value) and "exactly 4" in str(e.value)


def test_a_resampler_of_another_ff_ratio_is_refused_by_name():
    parts = tiny_parts(ffn=2)
    with pytest.raises(UnsupportedAdapterError, match=r"FF ratio other than the reference's 4") as e:
        detect_spec(parts.image_proj, parts.ip_adapter, name=NAME)
    assert "'image_proj.layers.0.1.1.weight'" in str(e.value)


def test_the_sd35_refusal_is_gone():
    assert "sd35" not in [f.name for f in families.registered()]
    # a file with only the SD3.5 signature is now this family's, which names what is missing
    _, ip = adapter_parts("base", ctx=768, encoder_dim=1024, site_dims=(320, 640))
    with pytest.raises(NotAnIPAdapterError) as e:
        detect_spec({"time_embedding.linear_1.weight": torch.zeros(1280, 320)}, ip, name=NAME)
    assert not isinstance(e.value, UnsupportedAdapterError)
    assert "InstantX SD3.5" in str(e.value) and "'image_proj.latents' is missing" in str(e.value)


def test_sd15_and_flux_files_keep_their_families(tmp_path):
    path = save_adapter(str(tmp_path / "ip-adapter_sd15.safetensors"),
                        *adapter_parts("base", ctx=768, encoder_dim=1024, site_dims=(320, 640)))
    assert (spec_of(path).adapter_family, spec_of(path).kind) == ("sd-unet", "base")
    flux = spec_of(write_xlabs(tmp_path / "ip_adapter.safetensors", tokens=4))
    assert (flux.adapter_family, flux.kind) == ("xlabs-flux", "xlabs")
    plus = save_adapter(str(tmp_path / "ip-adapter-plus_sd15.safetensors"),
                        *adapter_parts("plus", ctx=768, encoder_dim=1280, site_dims=(320, 640), tokens=16,
                                       resampler_dim=768, resampler_heads=12))
    assert (spec_of(plus).adapter_family, spec_of(plus).kind) == ("sd-unet", "plus")  # a resampler without time


def test_the_model_loads_every_key_and_refuses_others():
    model, parts = tiny_model()
    assert isinstance(model, InstantXSD3Model)
    keys = set(model.state_dict())
    assert keys == {f"image_proj.{k}" for k in parts.image_proj} | {f"layers.{k}" for k in parts.ip_adapter}
    assert model.layers[1].to_k_ip.weight.data_ptr() == parts.ip_adapter["1.to_k_ip.weight"].data_ptr()  # no copy
    spec = model.spec
    with pytest.raises(NotAnIPAdapterError, match="something_else") as e:
        InstantXSD3Model.from_parts(spec, parts.image_proj, {**parts.ip_adapter, "0.something_else.weight": torch.zeros(2)},
                                    name=NAME)
    assert NAME in str(e.value)
    short = {k: v for k, v in parts.ip_adapter.items() if k != "1.norm_k.weight"}
    with pytest.raises(NotAnIPAdapterError, match=r"layers\.1\.norm_k\.weight"):
        InstantXSD3Model.from_parts(spec, parts.image_proj, short, name=NAME)


# ---------------------------------------------------------------------------------------------- the math

def _close(got, want, rel=1e-5, atol=1e-7):
    err, size = (got - want).abs().max().item(), want.abs().max().item()
    assert size > 0 and err <= rel * size + atol, (err, size)


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    t = torch.tensor([0.0, 250.0, 1000.0])
    emb = timestep_embedding(t)
    assert emb.shape == (3, 320) and emb.dtype == torch.float32
    freqs = 10000.0 ** (-torch.arange(160, dtype=torch.float64) / 160)
    angle = t.double()[:, None] * freqs
    # float32 angles up to 1000 rad are exact to ~6e-5 (their ulp), as diffusers computes them; a swap is O(1)
    _close(emb.double(), torch.cat([angle.cos(), angle.sin()], -1), atol=2e-4)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        timestep_embedding(t[:, None])


def test_the_zero_feature_uncond_is_not_zero_and_depends_on_sigma():
    model, _ = tiny_model()
    zeros = torch.zeros(1, 6, 24)
    a, temb_a = model.project(zeros, torch.tensor([900.0]))
    b, temb_b = model.project(zeros, torch.tensor([200.0]))
    assert a.abs().max() > 0.1 and (a - b).abs().max() > 0.01 * a.abs().max()
    assert (temb_a - temb_b).abs().max() > 0.01 * temb_a.abs().max()
    with pytest.raises(ValueError, match="one timestep per row"):
        model.project(zeros, torch.tensor([900.0, 200.0]))


def test_block_kv_is_shift_first_adaptive_layernorm_then_rms_normed_keys():
    model, parts = tiny_model(seed=2)
    g = torch.Generator().manual_seed(3)
    tokens, temb = torch.randn(2, 8, 128, generator=g), torch.randn(2, 128, generator=g)
    ip = parts.ip_adapter
    emb = torch.nn.functional.silu(temb) @ ip["1.norm_ip.linear.weight"].T + ip["1.norm_ip.linear.bias"]
    shift, scale = emb[:, :128], emb[:, 128:]
    mean, var = tokens.mean(-1, keepdim=True), tokens.var(-1, unbiased=False, keepdim=True)
    n = (tokens - mean) / torch.sqrt(var + 1e-6) * (1 + scale[:, None]) + shift[:, None]
    k = (n @ ip["1.to_k_ip.weight"].T).reshape(2, 8, 2, 64).transpose(1, 2)
    k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + 1e-6) * ip["1.norm_ip_k.weight"]
    v = (n @ ip["1.to_v_ip.weight"].T).reshape(2, 8, 2, 64).transpose(1, 2)
    got_k, got_v = model.block_kv(1, tokens, temb)
    assert got_k.shape == got_v.shape == (2, 2, 8, 64)
    _close(got_k, k), _close(got_v, v)
    assert torch.equal(got_k, block_ip_kv(model.layers[1], tokens, temb, 2)[0])


def test_the_adapter_norm_is_recovered_exactly_from_the_models_normed_query():
    g = torch.Generator().manual_seed(4)
    raw = 3.0 * torch.randn(2, 2, 7, 64, generator=g)
    w_ln, w_ip = 1.0 + 0.5 * torch.randn(64, generator=g), 1.0 + 0.5 * torch.randn(64, generator=g)
    w_ln[0] = -0.05  # a small, negative weight is fine
    want = rms_norm(raw, w_ip)
    _close(recover_raw_normed(rms_norm(raw, w_ln), w_ln, w_ip), want)
    assert (rms_norm(raw, w_ln) - want).abs().max() > 0.1 * want.abs().max()  # the two norms really differ
    half = recover_raw_normed(rms_norm(raw, w_ln).half(), w_ln, w_ip)
    assert half.dtype == torch.float16 and (half.float() - want).abs().max() <= 4e-3 * want.abs().max()
    w_ln[5] = 0.0
    with pytest.raises(ValueError, match=r"is 0 at head dims \[5\]"):
        norm_ratio(w_ln, w_ip)
    with pytest.raises(ValueError, match="eps"):
        norm_ratio(w_ip, w_ip, eps=1e-5)


def test_image_term_attends_over_image_keys_and_ip_keys_only():
    g = torch.Generator().manual_seed(5)
    b, heads, d, l_x, l_txt, t = 2, 2, 64, 6, 4, 5
    q, k, v = (torch.randn(b, heads, l_txt + l_x, d, generator=g) for _ in range(3))
    k_ip, v_ip = torch.randn(b, heads, t, d, generator=g), torch.randn(b, heads, t, d, generator=g)
    got = sd3_image_term(q[:, :, l_txt:], k[:, :, l_txt:], v[:, :, l_txt:], k_ip, v_ip)
    want = torch.empty(b, l_x, heads * d)
    for h in range(heads):
        keys = torch.cat([k[:, h, l_txt:], k_ip[:, h]], 1)
        w = torch.softmax(q[:, h, l_txt:] @ keys.transpose(1, 2) / d ** 0.5, dim=-1)
        want[..., h * d:(h + 1) * d] = w @ torch.cat([v[:, h, l_txt:], v_ip[:, h]], 1)
    assert got.shape == (b, l_x, heads * d)
    _close(got, want)
    # the joint (context first, heads flat) form with unit ratios slices the same image tokens
    flat = [x.transpose(1, 2).reshape(b, l_txt + l_x, heads * d) for x in (q, k, v)]
    ones = torch.ones(d)
    _close(joint_image_term(*flat, k_ip, v_ip, txt_len=l_txt, ratio_q=ones, ratio_k=ones), want)
    with pytest.raises(ValueError, match="do not fit"):
        sd3_image_term(q, k, v, k_ip[:, :1], v_ip[:, :1])


def test_joint_blocks_weigh_like_the_other_dit_blocks():
    """Each joint block is one "layer": the curve types ramp over them, layer weights address them by index or key
    (``joint.i``), the UNet types are refused."""
    from ip_adapter_core.errors import InputError
    from ip_adapter_core.sites import Site
    from ip_adapter_core.weighting import parse_layer_weights, site_weights

    sites = [Site("joint", i, 0, 128) for i in range(4)]
    assert site_weights("linear", sites, weight=0.5) == (0.5,) * 4
    ramp = site_weights("ease out", sites, weight=1.0)
    assert list(ramp) == sorted(ramp) and ramp[0] < ramp[-1]
    assert parse_layer_weights("joint.2:0.5, 0:1", sites) == (1.0, 0.0, 0.5, 0.0)
    assert parse_layer_weights("1, 0.9, 0.8, 0.7", sites) == (1.0, 0.9, 0.8, 0.7)
    with pytest.raises(InputError, match="'style transfer' names UNet layers"):
        site_weights("style transfer", sites, weight=1.0)


def test_sd35_embeds_carry_features_and_are_checked_by_width(tmp_path):
    """The resampler reads the step, so SD3.5's ImageTokens hold the encoder features (E wide, spec.encoder_dim),
    not tokens; check_fits and the embeds file take that width and refuse the token width."""
    from ip_adapter_core.embeds import ImageTokens, carries_features, payload_width
    from ip_adapter_core.embeds_io import from_safetensors_dict, to_safetensors_dict
    from ip_adapter_core.errors import CorruptFileError, IncompatibleError

    spec = spec_of(write_sd3(tmp_path / "ip-adapter.safetensors"))
    assert carries_features(spec) and payload_width(spec) == TINY["enc"] != spec.cross_attention_dim
    features = ImageTokens(cond=torch.randn(1, 6, TINY["enc"]), uncond=torch.zeros(1, 6, TINY["enc"]), spec=spec,
                           adapter_id="a", adapter_name="x")
    features.check_fits(spec, "a", "x", where="t")
    loaded = from_safetensors_dict(*to_safetensors_dict(features), name="f.safetensors")
    assert torch.equal(loaded.cond, features.cond) and loaded.spec == spec
    tokens = ImageTokens(cond=torch.randn(1, 8, spec.cross_attention_dim),
                         uncond=torch.zeros(1, 8, spec.cross_attention_dim), spec=spec, adapter_id="a",
                         adapter_name="x")
    with pytest.raises(IncompatibleError, match=r"reads encoder features \(N, T, 24\)"):
        tokens.check_fits(spec, "a", "x", where="t")
    with pytest.raises(CorruptFileError, match=r"expected \(N, T, 24\)"):
        from_safetensors_dict(*to_safetensors_dict(tokens), name="f.safetensors")
