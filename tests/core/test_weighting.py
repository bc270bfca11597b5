"""Weight types, layer weights and embeds scaling (ip_adapter_core.weighting, attention.scale_kv) as pure data.

Expectations are written by hand from the incumbent reference (incumbent-and-users.md §1.4 tables, §1.5 formulas),
keyed by the incumbent's layer index t (SpatialTransformers in execution order input -> middle -> output), through
the explicit t tables of testkit/adapters.py, not through the code under test. Float comparisons: rel 1e-12 (pure
Python floats).
"""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core.attention import EMBEDS_SCALINGS, scale_kv, site_kv
from ip_adapter_core.errors import InputError
from ip_adapter_core.sites import SD15_LAYOUT, SDXL_LAYOUT, Site, expand_layout
from ip_adapter_core.weighting import (WEIGHT_TYPES, num_transformers, parse_layer_weights, site_weights,
                                       swapped_sites, transformer_indices)
from testkit.adapters import SD15_T, SDXL_T

SD15 = expand_layout(SD15_LAYOUT)
SDXL = expand_layout(SDXL_LAYOUT)

W, WC = 0.8, 0.3


def t_of(site, table):
    return table[(site.block, site.block_id)]


def expected(sites, table, by_t):
    """by_t: t -> factor (missing = 0)."""
    return [by_t.get(t_of(s, table), 0.0) for s in sites]


def close(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=1e-12, abs=1e-12), (i, g, w)


# --------------------------------------------------------------------------------------------- layer numbering

@pytest.mark.parametrize("sites,table,n", [(SD15, SD15_T, 16), (SDXL, SDXL_T, 11)])
def test_transformer_index_is_the_incumbents(sites, table, n):
    assert num_transformers(sites) == n
    assert transformer_indices(sites) == [t_of(s, table) for s in sites]


def test_sdxl_style_block_is_output_1_and_layout_block_is_input_8():
    assert [s.key for s, t in zip(SDXL, transformer_indices(SDXL)) if t == 6] == [("output", 1, i) for i in range(10)]
    assert [s.key for s, t in zip(SDXL, transformer_indices(SDXL)) if t == 3] == [("input", 8, i) for i in range(10)]


# --------------------------------------------------------------------------------------------- curves

def curve_table(kind, n):
    half = n / 2
    f = {"linear": lambda t: 1.0,
         "ease in": lambda t: 0.05 + 0.95 * (1 - t / n),
         "ease out": lambda t: 0.05 + 0.95 * (t / n),
         "ease in-out": lambda t: 0.05 + 0.95 * (1 - abs(t - half) / half),
         "reverse in-out": lambda t: 0.05 + 0.95 * (abs(t - half) / half)}[kind]
    return {t: W * f(t) for t in range(n)}


@pytest.mark.parametrize("kind", ["linear", "ease in", "ease out", "ease in-out", "reverse in-out"])
@pytest.mark.parametrize("sites,table,n", [(SD15, SD15_T, 16), (SDXL, SDXL_T, 11)])
def test_curves(kind, sites, table, n):
    close(site_weights(kind, sites, weight=W), expected(sites, table, curve_table(kind, n)))


def test_curve_spot_values():
    sd15 = dict(zip(transformer_indices(SD15), site_weights("ease in", SD15, weight=1.0)))
    assert sd15[0] == pytest.approx(0.05 + 0.95 * (1 - 0 / 16))  # = 1.0
    assert sd15[15] == pytest.approx(0.05 + 0.95 / 16)
    xl = dict(zip(transformer_indices(SDXL), site_weights("ease in-out", SDXL, weight=1.0)))
    assert xl[0] == pytest.approx(0.05) and xl[5] == pytest.approx(0.05 + 0.95 * (1 - 0.5 / 5.5))


def test_linear_is_exactly_the_weight():
    for sites in (SD15, SDXL):
        assert site_weights("linear", sites, weight=0.37) == tuple([0.37] * len(sites))


@pytest.mark.parametrize("kind,weak", [("weak input", {"input"}), ("weak output", {"output"}),
                                       ("weak middle", {"middle"}), ("strong middle", {"input", "output"})])
@pytest.mark.parametrize("sites", [SD15, SDXL])
def test_weak_and_strong_blocks(kind, weak, sites):
    close(site_weights(kind, sites, weight=W), [0.2 * W if s.block in weak else W for s in sites])


# --------------------------------------------------------------------------------------------- layer maps

SD15_STYLE = {t: W for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}
MAPS = {
    ("style transfer", "sdxl"): {6: W},
    ("style transfer", "sd15"): SD15_STYLE,
    ("composition", "sdxl"): {3: W},
    ("composition", "sd15"): {4: 0.25 * W, 5: W},
    ("strong style transfer", "sdxl"): {t: W for t in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)},
    ("strong style transfer", "sd15"): {t: W for t in range(16) if t not in (4, 5)},
    ("style and composition", "sdxl"): {3: WC, 6: W},
    ("style and composition", "sd15"): {**SD15_STYLE, 4: 0.25 * WC, 5: WC},
    ("style transfer precise", "sdxl"): {3: W, 6: W},
    ("style transfer precise", "sd15"): {**SD15_STYLE, 4: 0.25 * W, 5: W},
    ("composition precise", "sdxl"): {0: 0.1 * W, 1: 0.1 * W, 2: 0.1 * W, 3: W, 4: 0.1 * W, 5: 0.1 * W, 6: W,
                                      7: 0.1 * W, 8: 0.1 * W, 9: 0.1 * W, 10: 0.1 * W},
    ("composition precise", "sd15"): {0: W, 1: W, 2: W, 3: W, 4: 0.25 * W, 5: W, 6: 0.1 * W, 7: 0.1 * W,
                                      8: 0.1 * W, 9: W, 10: W, 11: W, 12: W, 13: W, 14: W, 15: W},
}
MODELS = {"sd15": (SD15, SD15_T), "sdxl": (SDXL, SDXL_T)}


@pytest.mark.parametrize("kind,model", sorted(MAPS))
def test_layer_maps(kind, model):
    sites, table = MODELS[model]
    close(site_weights(kind, sites, weight=W, weight_composition=WC), expected(sites, table, MAPS[(kind, model)]))


# The incumbent's precise tables with an explicit boost B (IPAdapterPlus.py:326-338: style_boost / composition_boost
# = B_ABS), written out by hand; this pack takes the boost as a factor on the weight: precise_boost = B_ABS / W.
B_ABS = 1.4
BOOSTED = {
    ("style transfer precise", "sdxl"): {3: B_ABS, 6: W},
    ("style transfer precise", "sd15"): {**SD15_STYLE, 4: 0.25 * B_ABS, 5: B_ABS},
    ("composition precise", "sdxl"): {0: 0.1 * B_ABS, 1: 0.1 * B_ABS, 2: 0.1 * B_ABS, 3: W, 4: 0.1 * B_ABS,
                                      5: 0.1 * B_ABS, 6: B_ABS, 7: 0.1 * B_ABS, 8: 0.1 * B_ABS, 9: 0.1 * B_ABS,
                                      10: 0.1 * B_ABS},
    ("composition precise", "sd15"): {0: B_ABS, 1: B_ABS, 2: B_ABS, 3: B_ABS, 4: 0.25 * W, 5: W, 6: 0.1 * B_ABS,
                                      7: 0.1 * B_ABS, 8: 0.1 * B_ABS, 9: B_ABS, 10: B_ABS, 11: B_ABS, 12: B_ABS,
                                      13: B_ABS, 14: B_ABS, 15: B_ABS},
}


@pytest.mark.parametrize("kind,model", sorted(BOOSTED))
def test_precise_boost_reproduces_the_incumbents_boosted_tables(kind, model):
    sites, table = MODELS[model]
    close(site_weights(kind, sites, weight=W, precise_boost=B_ABS / W), expected(sites, table, BOOSTED[(kind, model)]))


def test_precise_boost_leaves_the_other_types_alone():
    for kind in WEIGHT_TYPES:
        if "precise" not in kind:
            for sites in (SD15, SDXL):
                assert site_weights(kind, sites, weight=W, precise_boost=3.0) == site_weights(kind, sites, weight=W)


def test_sdxl_style_transfer_only_output_1():
    got = site_weights("style transfer", SDXL, weight=W)
    assert [s.key for s, w in zip(SDXL, got) if w != 0] == [("output", 1, i) for i in range(10)]
    assert all(w == W for w in got if w != 0)


def test_every_type_has_a_table():
    for kind in WEIGHT_TYPES:
        for sites in (SD15, SDXL):
            assert len(site_weights(kind, sites, weight=1.0)) == len(sites)


def test_unknown_weight_type_is_an_input_error():
    with pytest.raises(InputError, match="weight_type.*'linear'"):
        site_weights("lienar", SD15, weight=1.0)


# --------------------------------------------------------------------------------------------- precise swap

@pytest.mark.parametrize("kind,model,swap_t", [
    ("style transfer precise", "sdxl", {3}), ("style transfer precise", "sd15", {4, 5}),
    ("composition precise", "sdxl", set(range(11)) - {3}), ("composition precise", "sd15", set(range(16)) - {4, 5}),
])
def test_precise_types_swap(kind, model, swap_t):
    sites, table = MODELS[model]
    assert swapped_sites(kind, sites) == {i for i, s in enumerate(sites) if t_of(s, table) in swap_t}


def test_other_types_do_not_swap():
    for kind in WEIGHT_TYPES:
        if "precise" not in kind:
            assert swapped_sites(kind, SDXL) == frozenset()


def test_swap_puts_cond_on_the_uncond_chunk_and_zero_on_cond():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g)
    wk, wv = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    k, v = site_kv(lambda t: (t @ wk.T, t @ wv.T), cond, uncond, weight=0.5, cond_or_uncond=[0, 1], per_chunk=1,
                   heads=2, device=torch.device("cpu"), dtype=torch.float32, swap=True)
    merge = lambda t: t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)  # noqa: E731
    assert torch.equal(merge(k)[0], torch.zeros(4, 16)) and torch.equal(merge(v)[0], torch.zeros(4, 16))
    torch.testing.assert_close(merge(k)[1], cond[0] @ wk.T)
    torch.testing.assert_close(merge(v)[1], 0.5 * (cond[0] @ wv.T))


# --------------------------------------------------------------------------------------------- layer weights

def test_layer_weights_by_transformer_index():
    got = parse_layer_weights("3:1.0, 6:0.5", SDXL)
    close(got, expected(SDXL, SDXL_T, {3: 1.0, 6: 0.5}))
    close(site_weights("linear", SDXL, weight=2.0, layer_weights=got), expected(SDXL, SDXL_T, {3: 2.0, 6: 1.0}))


def test_layer_weights_by_checkpoint_number_and_key():
    # SDXL checkpoint order: input 4 (2), 5 (2), 7 (10), 8 (10), output 0..: N = 2i+1; output 1 starts at i = 34.
    got = parse_layer_weights("N1:0.25\noutput.1.3:0.8; output.5:-1", SDXL)
    want = [0.0] * len(SDXL)
    want[0] = 0.25
    want[[s.key for s in SDXL].index(("output", 1, 3))] = 0.8
    for i, s in enumerate(SDXL):
        if (s.block, s.block_id) == ("output", 5):
            want[i] = -1.0
    close(got, want)
    assert parse_layer_weights("n69:2", SDXL)[34] == 2.0 and SDXL[34].key == ("output", 1, 0)


def test_layer_weights_later_entries_override():
    middle = [s.block for s in SD15].index("middle")
    assert parse_layer_weights("6:1, middle.0.0:0.1", SD15)[middle] == 0.1
    assert parse_layer_weights("middle.0.0:0.1, 6:1", SD15)[middle] == 1.0
    assert sum(1 for f in parse_layer_weights("6:1", SD15) if f) == 1


def test_old_pack_mode_skips_transformers_the_model_lacks(caplog):
    """An SD1.5 string (0-15) on SDXL (0-10): the old pack ignores 11-15; its compatibility mode does too, and says so."""
    text = "3:0.5, 10:2, 15:1"
    with pytest.raises(InputError, match="SpatialTransformer 15"):
        parse_layer_weights(text, SDXL)
    with caplog.at_level("WARNING"):
        got = parse_layer_weights(text, SDXL, skip_missing=True)
    assert got == parse_layer_weights("3:0.5, 10:2", SDXL)
    assert "'15:1'" in caplog.text


@pytest.mark.parametrize("text", ["", "  ", " , \n"])
def test_empty_layer_weights_mean_none(text):
    assert parse_layer_weights(text, SD15) is None


@pytest.mark.parametrize("text,match", [
    ("3=1.0", "cannot read '3=1.0'.*target:value"),
    ("3:abc", "cannot read"),
    ("x:1", "cannot read"),
    ("16:1", "SpatialTransformer 16.*16.*0-15"),
    ("N2:1", "odd numbers N1-N31"),
    ("N33:1", "odd numbers N1-N31"),
    ("output.0.0:1", "names no cross-attention site"),
    ("input.1.1:1", "names no cross-attention site"),
])
def test_malformed_layer_weights_name_what_was_expected(text, match):
    with pytest.raises(InputError, match=match):
        parse_layer_weights(text, SD15)


# --------------------------------------------------------------------------------------------- embeds scaling

def kv(c, seed=0, t=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, t, c, generator=g), torch.randn(2, t, c, generator=g)


def test_v_only_is_the_official_scale():
    k, v = kv(640)
    k2, v2 = scale_kv(k, v, weight=0.7, scaling="V only", width=640)
    assert k2 is k and torch.equal(v2, v * 0.7)


def test_k_and_v():
    k, v = kv(320)
    k2, v2 = scale_kv(k, v, weight=2.0, scaling="K+V", width=320)
    assert torch.equal(k2, 2 * k) and torch.equal(v2, 2 * v)


@pytest.mark.parametrize("c,factor", [(320, 0.25), (640, 0.5), (1280, 1.0)])
def test_c_penalty(c, factor):
    k, v = kv(c)
    k2, v2 = scale_kv(k, v, weight=2.0, scaling="K+V w/ C penalty", width=c)
    torch.testing.assert_close(k2, k * 2.0 * factor, rtol=0, atol=1e-6)
    torch.testing.assert_close(v2, v * 2.0 * factor, rtol=0, atol=1e-6)


def test_k_mean_v_scales_only_the_token_mean():
    k, v = kv(640)
    k2, v2 = scale_kv(k, v, weight=2.0, scaling="K+mean(V) w/ C penalty", width=640)  # w' = 1.0
    torch.testing.assert_close(k2, k, rtol=0, atol=1e-6)
    torch.testing.assert_close(v2, v, rtol=0, atol=1e-6)
    k3, v3 = scale_kv(k, v, weight=1.0, scaling="K+mean(V) w/ C penalty", width=640)  # w' = 0.5
    m = v.mean(dim=1, keepdim=True)
    torch.testing.assert_close(k3, 0.5 * k, rtol=0, atol=1e-6)
    torch.testing.assert_close(v3, v - 0.5 * m, rtol=0, atol=1e-6)
    torch.testing.assert_close(v3.mean(dim=1), 0.5 * m[:, 0], rtol=0, atol=1e-6)


def test_k_mean_v_at_weight_zero_is_no_term():
    k, v = kv(640)
    assert not scale_kv(k, v, weight=0.0, scaling="K+mean(V) w/ C penalty", width=640)[1].any()


def test_site_kv_scaling_default_is_v_only():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g)
    wk, wv = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    args = dict(weight=1.5, cond_or_uncond=[1, 0], per_chunk=2, heads=2, device=torch.device("cpu"),
                dtype=torch.float32)
    to_kv = lambda t: (t @ wk.T, t @ wv.T)  # noqa: E731
    default = site_kv(to_kv, cond, uncond, **args)
    explicit = site_kv(to_kv, cond, uncond, scaling="V only", swap=False, **args)
    assert all(torch.equal(a, b) for a, b in zip(default, explicit))
    kpv = site_kv(to_kv, cond, uncond, scaling="K+V", **args)
    assert torch.equal(kpv[1], default[1]) and torch.equal(kpv[0], default[0] * 1.5)


def test_unknown_scaling_is_an_input_error():
    k, v = kv(64)
    with pytest.raises(InputError, match="embeds_scaling.*'V only'"):
        scale_kv(k, v, weight=1.0, scaling="V", width=64)
    assert EMBEDS_SCALINGS[0] == "V only"


# ---------------------------------------------------------------------------------------------- DiT blocks (Flux)

FLUX_DOUBLE = [Site("double", i, 0, 3072) for i in range(19)]


def test_dit_blocks_take_the_curve_types_over_their_order():
    assert site_weights("linear", FLUX_DOUBLE, weight=0.7) == (0.7,) * 19
    ramp = site_weights("ease out", FLUX_DOUBLE, weight=1.0)  # block i at 0.05 + 0.95 * i / 19
    assert ramp[0] == pytest.approx(0.05) and ramp[18] == pytest.approx(0.05 + 0.95 * 18 / 19)
    assert list(ramp) == sorted(ramp)
    assert swapped_sites("linear", FLUX_DOUBLE) == frozenset()


@pytest.mark.parametrize("weight_type", ["style transfer", "weak input", "composition precise", "strong middle"])
def test_dit_blocks_refuse_the_types_that_name_unet_layers(weight_type):
    with pytest.raises(InputError, match=f"'{weight_type}' names UNet layers.*ease in"):
        site_weights(weight_type, FLUX_DOUBLE, weight=1.0)


def test_layer_weights_address_dit_blocks_by_index_or_key():
    got = parse_layer_weights("3:0.5, double.5:2", FLUX_DOUBLE)
    assert got[3] == 0.5 and got[5] == 2.0 and sum(1 for f in got if f) == 2
    with pytest.raises(InputError, match="SpatialTransformer 19"):
        parse_layer_weights("19:1", FLUX_DOUBLE)


def test_a_plain_list_gives_each_block_or_transformer_its_factor():
    ramp = ", ".join(f"{1 - i / 20:.2f}" for i in range(19))  # XLabs' per-block strengths: 19 values
    got = parse_layer_weights(ramp, FLUX_DOUBLE)
    assert got == tuple(round(1 - i / 20, 2) for i in range(19))
    sdxl = parse_layer_weights(" ".join(["0"] * 6 + ["1"] + ["0"] * 4), SDXL)  # SDXL's 11 transformers, t 6 on
    assert sdxl == parse_layer_weights("6:1", SDXL)
    with pytest.raises(InputError, match="3 plain values, but this model has 19 blocks"):
        parse_layer_weights("1, 0.5, 0.2", FLUX_DOUBLE)
    with pytest.raises(InputError, match="layer_weights"):
        parse_layer_weights("1, x, 0.2", FLUX_DOUBLE)
