"""IPA Apply (advanced) in a real ComfyUI: weight types, embeds scaling, layer weights and the precise swap.

Tiny SD1.5 (7 sites, L = 7 SpatialTransformers: t 0 input 1, 1 input 3, 2 middle, 3 output 0, 4-6 output 1-3) and
SDXL-shaped (11 sites, same 7 SpatialTransformers, depth 2 in input 3, middle, output 0-1) models from
testkit/tiny_models.py.
The layer-map types use the SD1.5 table on the first and the SDXL table on the second (depth > 1).
Sampled outputs of equivalent settings are compared bit for bit; hand computations (SDPA on the file's weights) at
atol 1e-5 (fp32, values ~1).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

ATOL = 1e-5
HEADS = 8


def sdpa(q, k, v, heads):
    b, n, hd = q.shape

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, hd // heads).transpose(1, 2)

    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, hd)


def patches(model):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"]


def call(patch, site, order, heads=HEADS, per=1, seed=5):
    """Run an installed attn2 patch directly on random q/k/v; returns (q, k, v, out). patch None (a site the apply
    left without a patch, e.g. weight 0 there) runs what ComfyUI runs then: the plain attention."""
    g = torch.Generator().manual_seed(seed)
    b = per * len(order)
    q, k, v = (torch.randn(b, n, site.hidden, generator=g) for n in (16, 77, 77))
    extra = {"n_heads": heads, "dim_head": site.hidden // heads, "attn_precision": None,
             "cond_or_uncond": list(order), "sigmas": torch.full((b,), 5.0), "block": site.key[:2],
             "block_index": site.key[2]}
    return q, k, v, (plain(q, k, v, heads) if patch is None else patch(q, k, v, extra))


def plain(q, k, v, heads=HEADS):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, heads)


def file_weights(path, index):
    from safetensors.torch import load_file

    sd = load_file(path)
    n = 2 * index + 1
    return sd[f"ip_adapter.{n}.to_k_ip.weight"].float(), sd[f"ip_adapter.{n}.to_v_ip.weight"].float()


@pytest.fixture(scope="module")
def files(make_adapter_file, sd15, sdxl, cv, tmp_path_factory):
    d = tmp_path_factory.mktemp("controls")
    return {"sd15": make_adapter_file(d, "base", sd15, cv, seed=0),
            "sdxl": make_adapter_file(d, "base", sdxl, cv, seed=0)}


@pytest.fixture(scope="module")
def embeds(files, host, run_node, cv, make_image):
    image = make_image(0)
    return {m: run_node("IPA_Encode", ipadapter=host.load_adapter(p), clip_vision=cv, image=image)[0]
            for m, p in files.items()}


@pytest.fixture(scope="module")
def advanced(run_node, host, files, embeds):
    def do(model, family, weight=1.0, weight_type="linear", embeds_scaling="V only", **kw):
        return run_node("IPA_ApplyAdvanced", model=model, ipadapter=host.load_adapter(files[family]), weight=weight,
                        weight_type=weight_type, start_at=0.0, end_at=1.0, embeds_scaling=embeds_scaling,
                        embeds=embeds[family], **kw)[0]

    return do


def test_linear_v_only_is_bit_identical_to_ipa_apply(sd15, advanced, run_node, host, files, embeds, cv, make_image,
                                                     sample):
    simple = run_node("IPA_Apply", model=sd15, ipadapter=host.load_adapter(files["sd15"]), weight=0.7, start_at=0.0,
                      end_at=1.0, embeds=embeds["sd15"])[0]
    adv = advanced(sd15, "sd15", weight=0.7)
    assert torch.equal(sample(adv), sample(simple))
    # the image route too (its own encode), with the optional inputs left at their defaults
    adv_img = run_node("IPA_ApplyAdvanced", model=sd15, ipadapter=host.load_adapter(files["sd15"]), weight=0.7,
                       weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only", image=make_image(0),
                       clip_vision=cv, layer_weights="", weight_composition=1.0)[0]
    assert torch.equal(sample(adv_img), sample(simple))


def test_zeroed_site_equals_the_unpatched_attention(sd15, advanced, host):
    # SD1.5 style transfer table: t 4-6 (output 1-3 here) are not in the map -> weight 0.
    patched = advanced(sd15, "sd15", weight=1.0, weight_type="style transfer")
    sites = host.model_sites(sd15)
    for site in sites:
        q, k, v, out = call(patches(patched).get(site.key), site, [1, 0])
        if site.block == "output" and site.block_id >= 1:
            assert torch.equal(out, plain(q, k, v)), site.key
        else:
            assert not torch.equal(out, plain(q, k, v)), site.key


def test_sdxl_style_transfer_changes_only_output_sites(sdxl, advanced, host, sample):
    patched = advanced(sdxl, "sdxl", weight=1.0, weight_type="style transfer")
    changed = []
    for site in host.model_sites(sdxl):
        q, k, v, out = call(patches(patched).get(site.key), site, [0, 1], heads=site.hidden // 64)
        if not torch.equal(out, plain(q, k, v, site.hidden // 64)):
            changed.append(site.key)
    assert changed and all(key[0] == "output" for key in changed), changed
    assert not torch.equal(sample(patched), sample(sdxl))


def test_k_plus_v_differs_from_v_only_and_matches_the_formula(sd15, advanced, host, files, embeds, sample):
    v_only = advanced(sd15, "sd15", weight=2.0)
    k_v = advanced(sd15, "sd15", weight=2.0, embeds_scaling="K+V")
    assert not torch.equal(sample(k_v), sample(v_only))
    index, site = 1, host.model_sites(sd15)[1]
    q, k, v, out = call(patches(k_v)[site.key], site, [0, 1])
    wk, wv = file_weights(files["sd15"], index)
    e = embeds["sd15"]
    term = torch.cat([sdpa(q[i:i + 1], 2.0 * (tok @ wk.T), 2.0 * (tok @ wv.T), HEADS)
                      for i, tok in enumerate((e.cond, e.uncond))])
    torch.testing.assert_close(out, plain(q, k, v) + term, atol=ATOL, rtol=0)


def test_precise_swap_puts_cond_tokens_on_the_uncond_chunk(sd15, advanced, host, files, embeds):
    # style transfer precise, SD1.5 table: t 4 (output 1) at 0.25 w and t 5 (output 2) at w, both swapped.
    w = 0.6
    patched = advanced(sd15, "sd15", weight=w, weight_type="style transfer precise")
    sites = host.model_sites(sd15)
    e = embeds["sd15"]
    for key, factor in ((("output", 1, 0), 0.25), (("output", 2, 0), 1.0)):
        index = [s.key for s in sites].index(key)
        site = sites[index]
        q, k, v, out = call(patches(patched)[key], site, [0, 1])
        wk, wv = file_weights(files["sd15"], index)
        base = plain(q, k, v)
        torch.testing.assert_close(out[:1], base[:1], atol=ATOL, rtol=0)  # cond chunk: zero tokens -> no term
        swapped = sdpa(q[1:], e.cond @ wk.T, factor * w * (e.cond @ wv.T), HEADS)
        torch.testing.assert_close(out[1:], base[1:] + swapped, atol=ATOL, rtol=0)
    # an unswapped site keeps cond on the cond chunk
    index = [s.key for s in sites].index(("input", 1, 0))
    q, k, v, out = call(patches(patched)[("input", 1, 0)], sites[index], [0, 1])
    wk, wv = file_weights(files["sd15"], index)
    torch.testing.assert_close(out[:1], plain(q, k, v)[:1] + sdpa(q[:1], e.cond @ wk.T, w * (e.cond @ wv.T), HEADS),
                               atol=ATOL, rtol=0)


def test_layer_weights_address_single_sites(sd15, advanced, host):
    patched = advanced(sd15, "sd15", weight=1.0, layer_weights="N3:1.0")  # checkpoint layer 3 = site 1 (input 3)
    for i, site in enumerate(host.model_sites(sd15)):
        q, k, v, out = call(patches(patched).get(site.key), site, [1, 0])
        assert torch.equal(out, plain(q, k, v)) == (i != 1), site.key


def test_malformed_layer_weights_stop_the_node_with_its_name(sd15, advanced, pack_module):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError, match=r"^IPA Apply \(advanced\): input 'layer_weights'.*'3=1'"):
        advanced(sd15, "sd15", layer_weights="3=1")
