"""Site order: checkpoint layer N -> ComfyUI attn2 key (block, id, t) and width.

Expected rows are written by hand from Appendix A / §4 of shared/reference/ip-adapter-formats.md, and cross-checked
against diffusers' own processor registration order on real-config UNets built on the meta device (no memory).
"""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core import detect_spec
from ip_adapter_core.sites import SD15_LAYOUT, SDXL_LAYOUT, expand_layout, layer_number
from testkit.adapters import PUBLISHED, published

# Appendix A, SD15: N -> (block, id, t), hidden
SD15_TABLE = {
    1: (("input", 1, 0), 320), 3: (("input", 2, 0), 320), 5: (("input", 4, 0), 640), 7: (("input", 5, 0), 640),
    9: (("input", 7, 0), 1280), 11: (("input", 8, 0), 1280),
    13: (("output", 3, 0), 1280), 15: (("output", 4, 0), 1280), 17: (("output", 5, 0), 1280),
    19: (("output", 6, 0), 640), 21: (("output", 7, 0), 640), 23: (("output", 8, 0), 640),
    25: (("output", 9, 0), 320), 27: (("output", 10, 0), 320), 29: (("output", 11, 0), 320),
    31: (("middle", 0, 0), 1280),
}

# §4, SDXL: N = base + 2t  -> rows (block, id, transformer count, hidden, base N)
SDXL_BLOCKS = (
    ("input", 4, 2, 640, 1), ("input", 5, 2, 640, 5), ("input", 7, 10, 1280, 9), ("input", 8, 10, 1280, 29),
    ("output", 0, 10, 1280, 49), ("output", 1, 10, 1280, 69), ("output", 2, 10, 1280, 89),
    ("output", 3, 2, 640, 109), ("output", 4, 2, 640, 113), ("output", 5, 2, 640, 117),
    ("middle", 0, 10, 1280, 121),
)
SDXL_TABLE = {base + 2 * t: ((b, i, t), h) for b, i, depth, h, base in SDXL_BLOCKS for t in range(depth)}

# Spot checks copied from Appendix A rows (independent of the §4 summary above).
SDXL_SPOT = {
    1: (("input", 4, 0), 640), 3: (("input", 4, 1), 640), 27: (("input", 7, 9), 1280), 47: (("input", 8, 9), 1280),
    49: (("output", 0, 0), 1280), 107: (("output", 2, 9), 1280), 109: (("output", 3, 0), 640),
    119: (("output", 5, 1), 640), 121: (("middle", 0, 0), 1280), 139: (("middle", 0, 9), 1280),
}


def _by_n(sites):
    return {layer_number(i): (s.key, s.hidden) for i, s in enumerate(sites)}


def test_layer_number_is_odd_sequence():
    assert [layer_number(i) for i in range(5)] == [1, 3, 5, 7, 9]


def test_sd15_sites_match_appendix_a():
    sites = expand_layout(SD15_LAYOUT)
    assert len(sites) == 16
    assert _by_n(sites) == SD15_TABLE


def test_sdxl_sites_match_appendix_a():
    sites = expand_layout(SDXL_LAYOUT)
    assert len(sites) == 70
    assert sorted(SDXL_TABLE) == list(range(1, 140, 2))
    got = _by_n(sites)
    assert got == SDXL_TABLE
    for n, row in SDXL_SPOT.items():
        assert got[n] == row, n


def test_site_key_is_three_tuple_including_middle():
    # ComfyUI keys the middle block ("middle", 0, t) - not ("middle", 1, t) (formats reference §4, cubiq bug).
    for layout in (SD15_LAYOUT, SDXL_LAYOUT):
        middle = [s.key for s in expand_layout(layout) if s.block == "middle"]
        assert middle and all(k[:2] == ("middle", 0) and len(k) == 3 for k in middle)


def test_expand_layout_order_does_not_depend_on_row_order():
    assert expand_layout(reversed(SDXL_LAYOUT)) == expand_layout(SDXL_LAYOUT)
    assert expand_layout(reversed(SD15_LAYOUT)) == expand_layout(SD15_LAYOUT)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_site_dims_follow_layout(name):
    spec = detect_spec(*published(name))
    layout = SD15_LAYOUT if spec.family == "sd15" else SDXL_LAYOUT
    assert spec.site_dims == tuple(s.hidden for s in expand_layout(layout))


# --- independent oracle: diffusers' attn_processors order on the real UNet configs (meta device) ---------------

def _diffusers_sites(unet):
    """attn2 processors in registration order -> (N, LDM key, hidden), using the §4 name mapping."""
    out = {}
    for n, name in enumerate(unet.attn_processors):
        if not name.endswith("attn2.processor"):
            continue
        parts = name.split(".")
        if parts[0] == "mid_block":
            block, bid, t = "middle", 0, int(parts[4])
        else:
            i, j, t = int(parts[1]), int(parts[3]), int(parts[5])
            block, bid = ("input", 3 * i + j + 1) if parts[0] == "down_blocks" else ("output", 3 * i + j)
        attn = unet.get_submodule(name.rsplit(".", 1)[0])
        out[n] = ((block, bid, t), attn.to_k.weight.shape[0])
    return out


@pytest.fixture(scope="module")
def diffusers_unets():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd15 = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # SD1.5 config (defaults)
        sdxl = UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        )
    return sd15, sdxl


def test_sites_match_diffusers_registration_order(diffusers_unets):
    sd15, sdxl = diffusers_unets
    assert _diffusers_sites(sd15) == _by_n(expand_layout(SD15_LAYOUT))
    assert _diffusers_sites(sdxl) == _by_n(expand_layout(SDXL_LAYOUT))
