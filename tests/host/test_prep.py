"""IPA Prep Image through ComfyUI: output size from the CLIP vision encoder, and what IPA Encode then sees."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def adapters(make_adapter_file, host, sd15, cv, tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    return {kind: host.load_adapter(make_adapter_file(d, kind, sd15, cv, seed=40 + i))
            for i, kind in enumerate(("base", "plus"))}


def prep(run_node, image, **kw):
    settings = dict(crop="center", interpolation="bicubic", sharpening=0.0)
    return run_node("IPA_PrepImage", image=image, **{**settings, **kw})[0]


def encode(run_node, adapter, cv, image):
    return run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image)[0]


def test_size_input_without_clip_vision_and_encoder_size_with_it(run_node, make_image, cv):
    image = make_image(0, batch=2, height=40, width=60, channels=4)
    assert prep(run_node, image).shape == (2, 224, 224, 3)
    assert prep(run_node, image, size=48, crop="pad", interpolation="lanczos", sharpening=0.5).shape == (2, 48, 48, 3)
    out = prep(run_node, image, clip_vision=cv, size=100)
    assert out.shape == (2, int(cv.image_size), int(cv.image_size), 3)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_center_bicubic_prep_leaves_the_encoding_unchanged(run_node, make_image, adapters, cv, kind):
    """A square image of exactly the encoder size passes through unchanged; a non-square one is cropped to the
    same pixels as ComfyUI's CLIP preprocessing (same antialiased bicubic, same rounding, same offset), so the
    tokens are bit-identical in both cases."""
    size = int(cv.image_size)
    for image in (make_image(1, height=size, width=size), make_image(2, height=45, width=70)):
        prepped = prep(run_node, image, clip_vision=cv)
        direct, via_prep = encode(run_node, adapters[kind], cv, image), encode(run_node, adapters[kind], cv, prepped)
        assert torch.equal(direct.cond, via_prep.cond)
        assert torch.equal(direct.uncond, via_prep.uncond)


def test_pad_and_positions_change_what_the_encoder_sees(run_node, make_image, adapters, cv):
    image = make_image(3, height=32, width=96)
    center = encode(run_node, adapters["plus"], cv, prep(run_node, image, clip_vision=cv))
    for crop in ("pad", "left", "right"):
        other = encode(run_node, adapters["plus"], cv, prep(run_node, image, clip_vision=cv, crop=crop))
        assert not torch.allclose(other.cond, center.cond, atol=1e-4), crop


def test_bad_image_is_refused_naming_the_node_and_input(run_node, pack_module):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError, match=r"^IPA Prep Image, input 'image': .*5 channels"):
        prep(run_node, torch.rand(1, 8, 8, 5))
    with pytest.raises(errors.InputError, match=r"^IPA Prep Image: unknown crop 'middle'"):
        prep(run_node, torch.rand(1, 8, 8, 3), crop="middle")
