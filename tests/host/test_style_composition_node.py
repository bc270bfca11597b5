"""IPA Style & Composition in a real ComfyUI (tiny SD1.5 and SDXL-shaped models from testkit/tiny_models.py).

Both tiny models have L = 7 SpatialTransformers, t in execution order: 0 input 1, 1 input 3, 2 middle, 3 output 0,
4 output 1, 5 output 2, 6 output 3 (SDXL-shaped: depth 2 in input 3, middle, output 0, output 1).
Expected layers, from the incumbent's tables (reference §1.4) by hand:
- SD1.5 table (depth 1): style image t 0-3 (9-15 do not exist here), composition image t 4 (x0.25) and 5;
  expand_style: style image on every t but 4, 5.
- SDXL table (depth > 1): style image t 6, composition image t 3; expand_style: style image on every t but 3.
Sampled outputs are compared bit for bit with the equivalent chain of two IPA Apply (advanced) nodes.
"""
from __future__ import annotations

import pytest
import torch

SD15_KEYS = {0: [("input", 1, 0)], 1: [("input", 3, 0)], 2: [("middle", 0, 0)], 3: [("output", 0, 0)],
             4: [("output", 1, 0)], 5: [("output", 2, 0)], 6: [("output", 3, 0)]}
SDXL_KEYS = {0: [("input", 1, 0)], 1: [("input", 3, 0), ("input", 3, 1)], 2: [("middle", 0, 0), ("middle", 0, 1)],
             3: [("output", 0, 0), ("output", 0, 1)], 4: [("output", 1, 0), ("output", 1, 1)],
             5: [("output", 2, 0)], 6: [("output", 3, 0)]}
# (style t, composition t) per family and expand_style
LAYERS = {("sd15", False): ({0, 1, 2, 3}, {4, 5}), ("sd15", True): ({0, 1, 2, 3, 6}, {4, 5}),
          ("sdxl", False): ({6}, {3}), ("sdxl", True): ({0, 1, 2, 4, 5, 6}, {3})}


@pytest.fixture(scope="module")
def models(sd15, sdxl):
    return {"sd15": sd15, "sdxl": sdxl}


@pytest.fixture(scope="module")
def adapters(make_adapter_file, models, cv, host, tmp_path_factory):
    d = tmp_path_factory.mktemp("style_composition")
    return {f: host.load_adapter(make_adapter_file(d, "base", m, cv, seed=0)) for f, m in models.items()}


@pytest.fixture(scope="module")
def style_composition(run_node, adapters, models, cv, make_image):
    def do(family, *, style=0, composition=1, weight_style=1.0, weight_composition=1.0, expand_style=False,
           embeds_scaling="V only", start_at=0.0, end_at=1.0, **kw):
        return run_node("IPA_StyleComposition", model=models[family], ipadapter=adapters[family], clip_vision=cv,
                        image_style=make_image(style), image_composition=make_image(composition),
                        weight_style=weight_style, weight_composition=weight_composition, expand_style=expand_style,
                        start_at=start_at, end_at=end_at, embeds_scaling=embeds_scaling, **kw)[0]

    return do


def advanced(run_node, model, adapter, weight, weight_type, embeds_scaling, **kw):
    return run_node("IPA_ApplyAdvanced", model=model, ipadapter=adapter, weight=weight, weight_type=weight_type,
                    start_at=0.0, end_at=1.0, embeds_scaling=embeds_scaling, **kw)[0]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("expand_style", [False, True])
def test_equals_style_transfer_then_composition(family, expand_style, style_composition, run_node, adapters, models,
                                                 cv, make_image, sample):
    scaling = "K+V w/ C penalty"
    got = style_composition(family, weight_style=0.9, weight_composition=0.6, expand_style=expand_style,
                            embeds_scaling=scaling)
    style_type = "strong style transfer" if expand_style else "style transfer"
    chain = advanced(run_node, models[family], adapters[family], 0.9, style_type, scaling, image=make_image(0),
                     clip_vision=cv)
    chain = advanced(run_node, chain, adapters[family], 0.6, "composition", scaling, image=make_image(1),
                     clip_vision=cv)
    out = sample(got)
    assert torch.equal(out, sample(chain))
    assert not torch.equal(out, sample(models[family]))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("expand_style", [False, True])
def test_each_image_acts_on_its_own_layers_only(family, expand_style, style_composition, call_site, attn2_patches):
    """Swap one image at a time and call every installed patch directly: the style image changes exactly the style
    sites, the composition image exactly the composition sites; a site on neither list is unpatched (no patch, or
    one equal to plain attention)."""
    keys = SD15_KEYS if family == "sd15" else SDXL_KEYS
    base = style_composition(family, expand_style=expand_style)
    other_style = style_composition(family, style=2, expand_style=expand_style)
    other_comp = style_composition(family, composition=3, expand_style=expand_style)

    def term(model, key):
        """The image term at ``key`` (patched output - plain attention); zeros where no patch is installed."""
        if key not in attn2_patches(model):
            return 0.0
        out, plain = call_site(model, key)
        return out - plain

    style_t, comp_t = LAYERS[(family, expand_style)]
    for t, site_keys in keys.items():
        for key in site_keys:
            ref = term(base, key)
            assert bool(torch.any(torch.as_tensor(ref) != 0)) == (t in style_t | comp_t), (t, key)
            assert bool(torch.any(torch.as_tensor(term(other_style, key) - ref) != 0)) == (t in style_t), (t, key)
            assert bool(torch.any(torch.as_tensor(term(other_comp, key) - ref) != 0)) == (t in comp_t), (t, key)


def test_weights_zero_give_the_unpatched_model(style_composition, models, sample):
    assert torch.equal(sample(style_composition("sd15", weight_style=0.0, weight_composition=0.0)),
                       sample(models["sd15"]))


def test_mask_and_negative_image_reach_both_images(style_composition, run_node, adapters, models, cv, make_image,
                                                   sample):
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:, :20] = 1.0
    negative = make_image(7)
    got = style_composition("sd15", attn_mask=mask, negative_image=negative)
    chain = models["sd15"]
    for image, weight_type in ((make_image(0), "style transfer"), (make_image(1), "composition")):
        embeds = run_node("IPA_Encode", ipadapter=adapters["sd15"], clip_vision=cv, image=image,
                          negative_image=negative)[0]
        chain = advanced(run_node, chain, adapters["sd15"], 1.0, weight_type, "V only", embeds=embeds,
                         attn_mask=mask)
    out = sample(got)
    assert torch.equal(out, sample(chain))
    assert not torch.equal(out, sample(style_composition("sd15")))


def test_bad_inputs_are_refused_with_the_node_name(style_composition, pack_module):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError) as e:
        style_composition("sd15", embeds_scaling="K only")
    assert str(e.value).startswith("IPA Style & Composition") and "K only" in str(e.value)
    with pytest.raises(errors.InputError) as e:
        style_composition("sd15", start_at=0.8, end_at=0.2)
    assert str(e.value).startswith("IPA Style & Composition")
