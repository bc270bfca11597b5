"""Style & composition weight types and region-slot validation (ip_adapter_core.regions), pure.

The style & composition expectations are the incumbent's own "style and composition" / "strong style and
composition" tables (incumbent-and-users.md §1.4, IPAdapterPlus.py), written out by hand per layer index t, and
compared with the sum of the two terms this pack uses (style image + composition image). Pure Python floats:
exact equality.
"""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core.errors import InputError
from ip_adapter_core.regions import Region, connected_regions, style_composition_types
from ip_adapter_core.sites import SD15_LAYOUT, SDXL_LAYOUT, expand_layout
from ip_adapter_core.weighting import site_weights
from testkit.adapters import SD15_T, SDXL_T

SD15 = expand_layout(SD15_LAYOUT)
SDXL = expand_layout(SDXL_LAYOUT)
W, WC = 0.8, 0.3


def per_t(sites, t_table, weights):
    """{t: weight} of per-site weights (every site of one SpatialTransformer must agree); zeros dropped."""
    out = {}
    for site, w in zip(sites, weights):
        t = t_table[(site.block, site.block_id)]
        assert out.setdefault(t, w) == w
    return {t: w for t, w in out.items() if w != 0.0}


def terms(sites, t_table, expand):
    style_type, comp_type = style_composition_types(expand)
    return (per_t(sites, t_table, site_weights(style_type, sites, weight=W)),
            per_t(sites, t_table, site_weights(comp_type, sites, weight=WC)))


def test_sdxl_style_and_composition_is_the_incumbent_table_split_by_image():
    style, comp = terms(SDXL, SDXL_T, expand=False)
    # incumbent "style and composition": {3: wc, 6: w}; the composition image on 3 (cond_alt), the style image on 6
    assert style == {6: W} and comp == {3: WC}


def test_sdxl_expand_style_is_the_strong_table_split_by_image():
    style, comp = terms(SDXL, SDXL_T, expand=True)
    # incumbent "strong style and composition": 0-2, 4-10 at w (style image), 3 at wc (composition image)
    assert style == {0: W, 1: W, 2: W, 4: W, 5: W, 6: W, 7: W, 8: W, 9: W, 10: W} and comp == {3: WC}


def test_sd15_style_and_composition_is_the_incumbent_table_split_by_image():
    style, comp = terms(SD15, SD15_T, expand=False)
    # incumbent SD1.5 "style and composition": {0-3: w, 4: 0.25 wc, 5: wc, 9-15: w}
    assert style == {0: W, 1: W, 2: W, 3: W, 9: W, 10: W, 11: W, 12: W, 13: W, 14: W, 15: W}
    assert comp == {4: 0.25 * WC, 5: WC}


def test_sd15_expand_style_puts_style_everywhere_but_the_composition_layers():
    style, comp = terms(SD15, SD15_T, expand=True)
    assert style == {t: W for t in range(16) if t not in (4, 5)}
    # documented choice: the composition image keeps the 'composition' table (0.25 on t 4) with expand_style too
    assert comp == {4: 0.25 * WC, 5: WC}


def test_complete_slots_become_regions_in_order():
    m1, m3 = torch.ones(8, 8), torch.zeros(2, 4, 4)
    regions = connected_regions(["a", None, "c", None], [m1, None, m3, None], [0.5, 1.0, 2.0, 1.0],
                                ["p", None, None, None])
    assert [r.index for r in regions] == [1, 3]
    assert regions[0] == Region(1, "a", regions[0].mask, 0.5, "p")
    assert regions[0].mask.shape == (1, 8, 8) and torch.equal(regions[0].mask[0], m1)
    assert regions[1].mask is m3 and regions[1].weight == 2.0 and regions[1].prompt is None


@pytest.mark.parametrize("image,mask,given,missing", [("img", None, "image_2", "mask_2"),
                                                      (None, torch.ones(4, 4), "mask_2", "image_2")])
def test_half_a_region_names_both_inputs(image, mask, given, missing):
    with pytest.raises(InputError) as e:
        connected_regions(["a", image], [torch.ones(4, 4), mask], [1.0, 1.0], [None, None])
    msg = str(e.value)
    assert f"'{given}'" in msg and f"'{missing}'" in msg


def test_prompt_without_its_mask_is_refused():
    with pytest.raises(InputError, match="'prompt_2'.*'mask_2'"):
        connected_regions(["a", None], [torch.ones(4, 4), None], [1.0, 1.0], [None, "p"])


def test_no_region_and_bad_masks_are_refused():
    with pytest.raises(InputError, match="image_1 and mask_1"):
        connected_regions([None], [None], [1.0], [None])
    with pytest.raises(InputError, match="'mask_3'.*shape \\(4,\\)"):
        connected_regions([None, None, "a"], [None, None, torch.ones(4)], [1.0] * 3, [None] * 3)
    with pytest.raises(InputError, match="'mask_1'.*str"):
        connected_regions(["a"], ["not a mask"], [1.0], [None])
