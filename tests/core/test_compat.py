"""Pre-sampling checks: adapter vs model sites, adapter vs CLIP vision encoder, image input, start/end range.

Adapters are the published layouts on the meta device; model sites are written here by hand (not taken from
ip_adapter_core.sites) so a wrong reference layout would not hide a wrong check.
"""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core import detect_spec
from ip_adapter_core.compat import check_encoder, check_model, check_range, prepare_images
from ip_adapter_core.errors import IncompatibleError, InputError
from ip_adapter_core.sites import Site
from ip_adapter_core.spec import AdapterSpec
from testkit.adapters import published

WHERE = "IPA Apply"


def sd15_sites():
    rows = [("input", 1, 320), ("input", 2, 320), ("input", 4, 640), ("input", 5, 640), ("input", 7, 1280),
            ("input", 8, 1280), ("output", 3, 1280), ("output", 4, 1280), ("output", 5, 1280), ("output", 6, 640),
            ("output", 7, 640), ("output", 8, 640), ("output", 9, 320), ("output", 10, 320), ("output", 11, 320),
            ("middle", 0, 1280)]
    return [Site(b, i, 0, h) for b, i, h in rows]


def sdxl_sites():
    rows = [("input", 4, 2, 640), ("input", 5, 2, 640), ("input", 7, 10, 1280), ("input", 8, 10, 1280),
            ("output", 0, 10, 1280), ("output", 1, 10, 1280), ("output", 2, 10, 1280), ("output", 3, 2, 640),
            ("output", 4, 2, 640), ("output", 5, 2, 640), ("middle", 0, 10, 1280)]
    return [Site(b, i, t, h) for b, i, n, h in rows for t in range(n)]


def spec(name):
    return detect_spec(*published(name))


# --- check_model ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,sites,ctx", [("ip-adapter_sd15", sd15_sites, 768),
                                            ("ip-adapter-plus_sdxl_vit-h", sdxl_sites, 2048),
                                            ("ip-adapter-full-face_sd15", sd15_sites, 768)])
def test_matching_model_passes(name, sites, ctx):
    check_model(spec(name), sites(), ctx, adapter_name=name, where=WHERE)


def test_sdxl_adapter_on_sd15_model():
    with pytest.raises(IncompatibleError) as e:
        check_model(spec("ip-adapter_sdxl"), sd15_sites(), 768, adapter_name="ip-adapter_sdxl.safetensors", where=WHERE)
    msg = str(e.value)
    for word in ("SDXL", "SD1.5", "2048", "768", WHERE, "ip-adapter_sdxl.safetensors"):
        assert word in msg, msg
    assert "SD1.5 adapter" in msg or "ip-adapter_sd15" in msg, msg  # suggests the right kind of file


def test_sd15_adapter_on_sdxl_model():
    with pytest.raises(IncompatibleError) as e:
        check_model(spec("ip-adapter-plus_sd15"), sdxl_sites(), 2048, adapter_name="plus_sd15", where=WHERE)
    msg = str(e.value)
    for word in ("SDXL", "SD1.5", "2048", "768"):
        assert word in msg, msg
    assert "SDXL adapter" in msg or "ip-adapter_sdxl" in msg, msg  # suggests the right kind of file


def test_unknown_context_width():
    # e.g. an SD2.x UNet (context 1024): named by width, no made-up family
    with pytest.raises(IncompatibleError) as e:
        check_model(spec("ip-adapter_sd15"), sd15_sites(), 1024, adapter_name="a", where=WHERE)
    assert "1024" in str(e.value)


def test_wrong_site_count():
    sites = sd15_sites()[:-1]  # middle block missing
    with pytest.raises(IncompatibleError) as e:
        check_model(spec("ip-adapter_sd15"), sites, 768, adapter_name="a", where=WHERE)
    assert "16" in str(e.value) and "15" in str(e.value)


def test_wrong_site_widths_same_count():
    sites = sd15_sites()
    sites[0], sites[2] = sites[0]._replace(hidden=640), sites[2]._replace(hidden=320)
    with pytest.raises(IncompatibleError):
        check_model(spec("ip-adapter_sd15"), sites, 768, adapter_name="a", where=WHERE)


def test_same_widths_in_wrong_order():
    # Same multiset of widths, different order: must still be rejected (site i reads checkpoint layer 2i+1).
    sites = sd15_sites()
    sites = sites[-1:] + sites[:-1]
    with pytest.raises(IncompatibleError):
        check_model(spec("ip-adapter_sd15"), sites, 768, adapter_name="a", where=WHERE)


@pytest.mark.parametrize("ctx", [None, 4096])
def test_no_unet_sites(ctx):
    with pytest.raises(IncompatibleError) as e:
        check_model(spec("ip-adapter_sdxl"), [], ctx, adapter_name="a", where=WHERE)
    assert WHERE in str(e.value)


# --- check_encoder (CLIP ViT-H: hidden 1280, projection 1024; ViT-bigG: hidden 1664, projection 1280) ---------------

H = dict(hidden=1280, projection=1024)
BIGG = dict(hidden=1664, projection=1280)


@pytest.mark.parametrize("name,enc", [("ip-adapter_sd15", H), ("ip-adapter-plus_sd15", H),
                                      ("ip-adapter-full-face_sd15", H), ("ip-adapter-plus_sdxl_vit-h", H),
                                      ("ip-adapter_sdxl_vit-h", H), ("ip-adapter_sdxl", BIGG),
                                      ("ip-adapter_sd15_vit-G", BIGG)])
def test_right_encoder_passes(name, enc):
    check_encoder(spec(name), adapter_name=name, where=WHERE, **enc)


def test_plus_vit_h_adapter_with_bigg_encoder():
    with pytest.raises(IncompatibleError) as e:
        check_encoder(spec("ip-adapter-plus_sdxl_vit-h"), adapter_name="plus", where=WHERE, **BIGG)
    msg = str(e.value)
    assert "CLIP ViT-H" in msg and "1664" in msg and "1280" in msg, msg


@pytest.mark.parametrize("name,enc,needs", [("ip-adapter_sdxl", H, "ViT-bigG"), ("ip-adapter_sd15", BIGG, "ViT-H"),
                                            ("ip-adapter_sd15_vit-G", H, "ViT-bigG")])
def test_base_adapter_checks_projection_width(name, enc, needs):
    with pytest.raises(IncompatibleError) as e:
        check_encoder(spec(name), adapter_name=name, where=WHERE, **enc)
    assert needs in str(e.value)


def test_base_adapter_does_not_confuse_hidden_with_projection():
    # ViT-H's hidden width (1280) equals bigG's projection width: a bigG-embeds adapter must still reject ViT-H.
    with pytest.raises(IncompatibleError):
        check_encoder(spec("ip-adapter_sdxl"), adapter_name="a", where=WHERE, hidden=1280, projection=1024)
    # ... and a ViT-H-embeds adapter takes ViT-H, although its hidden width 1280 != 1024.
    check_encoder(spec("ip-adapter_sdxl_vit-h"), adapter_name="a", where=WHERE, hidden=1280, projection=1024)


def test_encoder_without_projection():
    # A vision model without visual projection cannot feed a base adapter.
    with pytest.raises(IncompatibleError):
        check_encoder(spec("ip-adapter_sd15"), adapter_name="a", where=WHERE, hidden=1280, projection=None)
    check_encoder(spec("ip-adapter-plus_sd15"), adapter_name="a", where=WHERE, hidden=1280, projection=None)


# --- prepare_images -----------------------------------------------------------------------------------------------

def img(c, b=2, h=5, w=6, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def test_rgb_passes_through():
    x = img(3)
    y = prepare_images(x, where=WHERE)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.equal(y, x)


def test_rgba_drops_alpha():
    x = img(4)
    y = prepare_images(x, where=WHERE)
    assert y.shape == (2, 5, 6, 3)
    assert torch.equal(y, x[..., :3])


@pytest.mark.parametrize("c", [1, 2])
def test_gray_becomes_three_equal_channels(c):
    x = img(c)
    y = prepare_images(x, where=WHERE)
    assert y.shape == (2, 5, 6, 3)
    for ch in range(3):
        assert torch.equal(y[..., ch], x[..., 0])


def test_half_precision_image_becomes_float32():
    y = prepare_images(img(3).half(), where=WHERE)
    assert y.dtype == torch.float32


def test_input_not_modified():
    x = img(4)
    saved = x.clone()
    prepare_images(x, where=WHERE)
    assert torch.equal(x, saved)


def _nan():
    x = img(3)
    x[1, 2, 3, 0] = float("nan")
    return x


def _inf():
    x = img(3)
    x[0, 0, 0, 2] = float("inf")
    return x


BAD = {
    "empty batch": lambda: img(3, b=0),
    "zero height": lambda: img(3, h=0),
    "NaN": _nan,
    "inf": _inf,
    "5 channels": lambda: img(5),
    "0 channels": lambda: img(0),
    "3-D tensor": lambda: img(3)[0],
    "5-D tensor": lambda: img(3)[None],
    "not a tensor": lambda: [[0.0]],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_images_raise_input_error(case):
    with pytest.raises(InputError) as e:
        prepare_images(BAD[case](), where=WHERE)
    assert WHERE in str(e.value)


# --- check_range --------------------------------------------------------------------------------------------------

def test_start_after_end_raises():
    with pytest.raises(InputError) as e:
        check_range(0.8, 0.2, where=WHERE)
    msg = str(e.value)
    assert WHERE in msg and "0.8" in msg and "0.2" in msg


@pytest.mark.parametrize("start,end", [(0.5, 0.5), (0.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.2, 0.8)])
def test_valid_ranges_pass(start, end):
    check_range(start, end, where=WHERE)


XLABS = AdapterSpec(kind="xlabs", cross_attention_dim=4096, encoder_input="image_embeds", encoder_dim=768, num_tokens=4,
                    site_dims=(3072,) * 19, adapter_family="xlabs-flux")


def test_a_flux_adapter_on_a_unet_model_names_both():
    """An XLabs Flux adapter on SD1.5 (the UNet has no Flux double blocks: no sites of its kind)."""
    with pytest.raises(IncompatibleError, match=r"'x.safetensors' is an XLabs Flux v1, Flux, 4 tokens.*for Flux models.*"
                                                r"no Flux blocks \(is it an SD1.5 / SDXL UNet\?\)"):
        check_model(XLABS, [], 768, adapter_name="x.safetensors", where="IPA Apply")


def test_a_flux_adapter_for_another_depth_says_blocks():
    sites = [Site("double", i, 0, 3072) for i in range(8)]
    with pytest.raises(IncompatibleError, match=r"has 19 blocks .* but the model has 8 .*different model layout"):
        check_model(XLABS, sites, 4096, adapter_name="x.safetensors", where="IPA Apply")
    check_model(XLABS, [Site("double", i, 0, 3072) for i in range(19)], 4096, adapter_name="x", where="IPA Apply")
