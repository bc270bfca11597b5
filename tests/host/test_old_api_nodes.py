"""The served ComfyUI_IPAdapter_plus IDs (nodes/old_api/) in-process on the tiny models: each is this
pack's behaviour with the old pack's settings (the default, compatibility "ComfyUI_IPAdapter_plus"), checked against
this pack's own nodes run with those settings."""
from __future__ import annotations

import os

import pytest
import torch

COMPAT = "ComfyUI_IPAdapter_plus"


def test_the_default_is_the_old_pack_mode(pack_module):
    base = pack_module("nodes.old_api.base")
    assert os.environ.get("IPA_OLD_API", "") == "" and base.MODE == COMPAT
    assert (base.COMPATIBILITY, base.UNCOND) == (COMPAT, "black image")
    assert base._mode("reference") == "reference" and base._mode("nonsense") == COMPAT


def test_encoder_gives_black_image_tokens_and_weights_the_clip_embedding(run_node, old_plus, cv, make_image, host):
    old, adapter = old_plus
    assert old.adapter is adapter  # loaded once, shared
    image = make_image(seed=4, batch=2)
    pos, neg = run_node("IPAdapterEncoder", ipadapter=old, image=image, weight=1.0, clip_vision=cv, mask=None)["result"]
    ref = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image, uncond="black image")[0]
    assert pos is neg and torch.equal(pos.cond, ref.cond) and torch.equal(pos.uncond, ref.uncond)
    half = run_node("IPAdapterEncoder", ipadapter=old, image=image, weight=0.5, clip_vision=cv)["result"][0]
    features = host.encode_images(cv, image, adapter.spec.encoder_input) * 0.5
    torch.testing.assert_close(half.cond, adapter.model.project(features).float().cpu(), atol=1e-5, rtol=1e-5)
    assert torch.equal(half.uncond, ref.uncond) and not torch.allclose(half.cond, ref.cond)


def test_combine_embeds_concat_and_the_other_methods(run_node, old_plus, cv, make_image):
    old, _ = old_plus
    e1, e2 = (run_node("IPAdapterEncoder", ipadapter=old, image=make_image(seed=s), weight=1.0,
                       clip_vision=cv)["result"][0] for s in (1, 2))
    (alone,) = run_node("IPAdapterCombineEmbeds", embed1=e1, method="concat")
    assert alone is e1
    (both,) = run_node("IPAdapterCombineEmbeds", embed1=e1, method="concat", embed2=e2, embed3=None)
    assert torch.equal(both.cond, torch.cat([e1.cond, e2.cond])) and torch.equal(both.uncond, e1.uncond)
    (avg,) = run_node("IPAdapterCombineEmbeds", embed1=e1, method="average", embed2=e2)
    (ours,) = run_node("IPA_CombineEmbeds", embeds=both, method="average")
    assert avg.cond.shape[0] == 1 and torch.equal(avg.cond, ours.cond)


def test_embeds_is_ipa_apply_advanced_in_the_old_pack_mode(run_node, old_plus, cv, make_image, sd15,
                                                           attn2_patches, call_site):
    old, adapter = old_plus
    tokens = run_node("IPAdapterEncoder", ipadapter=old, image=make_image(seed=6), weight=1.0,
                      clip_vision=cv)["result"][0]
    controls = dict(weight=0.8, weight_type="ease in", start_at=0.0, end_at=1.0, embeds_scaling="K+V")
    (got,) = run_node("IPAdapterEmbeds", model=sd15, ipadapter=old, pos_embed=tokens, neg_embed=tokens,
                      attn_mask=None, clip_vision=None, **controls)
    (want,) = run_node("IPA_ApplyAdvanced", model=sd15, ipadapter=adapter, embeds=tokens, compatibility=COMPAT,
                       **controls)
    keys = set(attn2_patches(got))
    assert keys == set(attn2_patches(want)) and keys and not any(k[0] == "middle" for k in keys), keys
    for key in keys:
        assert torch.equal(call_site(got, key)[0], call_site(want, key)[0]), key


def test_advanced_encodes_with_the_black_image_and_combines(run_node, old_plus, cv, make_image, sd15,
                                                            attn2_patches, call_site):
    old, adapter = old_plus
    image = make_image(seed=8, batch=2)
    controls = dict(weight=1.0, weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    (got,) = run_node("IPAdapterAdvanced", model=sd15, ipadapter=old, image=image, combine_embeds="average",
                      clip_vision=cv, image_negative=None, attn_mask=None, **controls)
    tokens = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image, uncond="black image")[0]
    (avg,) = run_node("IPA_CombineEmbeds", embeds=tokens, method="average")
    (want,) = run_node("IPA_ApplyAdvanced", model=sd15, ipadapter=adapter, embeds=avg, compatibility=COMPAT,
                       **controls)
    for key in attn2_patches(want):
        assert torch.equal(call_site(got, key)[0], call_site(want, key)[0]), key


def test_clip_vision_missing_is_named(run_node, old_plus, make_image, pack_module):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.IPAdapterError, match="IPAdapter Encoder: .*clip_vision"):
        run_node("IPAdapterEncoder", ipadapter=old_plus[0], image=make_image(), weight=1.0)


@pytest.mark.parametrize("interpolation, crop, sharpening", [("LANCZOS", "center", 0.0), ("HAMMING", "pad", 0.3),
                                                              ("BOX", "left", 0.0)])
def test_prep_image_is_ipa_prep_image_at_224(run_node, interpolation, crop, sharpening):
    image = torch.rand(2, 96, 160, 3, generator=torch.Generator().manual_seed(5))
    got = run_node("PrepImageForClipVision", image=image, interpolation=interpolation, crop_position=crop,
                   sharpening=sharpening)[0]
    mapped = {"LANCZOS": "lanczos", "HAMMING": "bilinear", "BOX": "area"}[interpolation]
    want = run_node("IPA_PrepImage", image=image, crop=crop, interpolation=mapped, sharpening=sharpening)[0]
    assert got.shape == (2, 224, 224, 3)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind, with_image", [("fade", False), ("dissolve", True), ("gaussian", True)])
def test_noise_is_ipa_noise_image_at_224(run_node, kind, with_image):
    image = torch.rand(1, 120, 90, 3, generator=torch.Generator().manual_seed(2)) if with_image else None
    got = run_node("IPAdapterNoise", type=kind, strength=0.6, blur=0, image_optional=image)[0]
    start = None if image is None else run_node("IPA_PrepImage", image=image, crop="center", interpolation="bicubic",
                                                sharpening=0.0)[0]
    want = run_node("IPA_NoiseImage", width=224, height=224, batch=1, seed=0, type=kind, strength=0.6, image=start)[0]
    assert got.shape == (1, 224, 224, 3) and torch.equal(got, want)
    blurred = run_node("IPAdapterNoise", type=kind, strength=0.6, blur=4, image_optional=image)[0]
    assert blurred.shape == got.shape and not torch.equal(blurred, got)
    assert blurred.std() < got.std()
