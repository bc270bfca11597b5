"""The FaceID test kit against independent published facts: parameter totals × 2 bytes (fp16) reproduce the published
file sizes (shared/reference/ip-adapter-formats.md, "Checked by running code"), and its LoRA keys are the ones
ip_adapter_core.lora maps onto a real SD1.5 / SDXL site layout (ip_adapter_core.sites, Appendix A)."""
from __future__ import annotations

import pytest

from ip_adapter_core.lora import lora_rank, lora_targets
from ip_adapter_core.sites import SD15_LAYOUT, SDXL_LAYOUT, checkpoint_order, expand_layout
from testkit.adapters import SD15_SITES, SDXL_SITES
from testkit.faceid_adapters import PUBLISHED_FACEID, faceid_parts, parameter_count, published_faceid

# stem -> published size in MB (10^6 bytes) as the formats reference gives it, and the digits it gives
PUBLISHED_MB = {
    "ip-adapter-faceid_sd15": (96.7, 1),
    "ip-adapter-faceid-plus_sd15": (157, 0),
    "ip-adapter-faceid-plusv2_sd15": (157, 0),
    "ip-adapter-faceid_sdxl": (1071, 0),
    "ip-adapter-faceid-plusv2_sdxl": (1487, 0),
    "ip-adapter-faceid-portrait_sd15": (64.6, 1),
    "ip-adapter-faceid-portrait-v11_sd15": (64.6, 1),
    "ip-adapter-faceid-portrait_sdxl": (750, 0),
}


@pytest.mark.parametrize("stem", sorted(PUBLISHED_MB))
def test_parameter_totals_reproduce_the_published_file_sizes(stem):
    mb, digits = PUBLISHED_MB[stem]
    size = parameter_count(*published_faceid(stem)) * 2 / 1e6
    assert round(size, digits) == mb, f"{stem}: {size:.3f} MB, published {mb}"


def test_every_published_layout_but_unnorm_has_a_published_size():
    # portrait_sdxl_unnorm.bin stores its image_proj in fp32 (formats §0), so its size is no fp16 total
    assert set(PUBLISHED_FACEID) - set(PUBLISHED_MB) == {"ip-adapter-faceid-portrait_sdxl_unnorm"}


@pytest.mark.parametrize("layout, widths, ctx", [(SD15_LAYOUT, SD15_SITES, 768), (SDXL_LAYOUT, SDXL_SITES, 2048)])
def test_lora_keys_fit_the_real_site_layout(layout, widths, ctx):
    sites = checkpoint_order(expand_layout(layout))
    assert tuple(s.hidden for s in sites) == widths
    _, ip = faceid_parts("faceid", ctx=ctx, site_dims=widths, lora_rank=128, device="meta")
    targets = lora_targets(ip, sites, ctx, adapter_name="kit", where="test")
    assert len(targets) == len(sites) * 2 * 4  # q, k, v, out on attn1 and attn2 of every site
    assert lora_rank(ip) == 128


def test_tiny_parts_are_random_and_seeded():
    a, _ = faceid_parts("faceid_plus", ctx=64, site_dims=(32,), clip_dim=16, seed=3)
    b, _ = faceid_parts("faceid_plus", ctx=64, site_dims=(32,), clip_dim=16, seed=3)
    c, _ = faceid_parts("faceid_plus", ctx=64, site_dims=(32,), clip_dim=16, seed=4)
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["proj.2.weight"] == c["proj.2.weight"]).all()
    assert "latents" not in " ".join(a) and a["perceiver_resampler.proj_in.weight"].shape == (64, 16)
