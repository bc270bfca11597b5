"""The FaceID family (ip_adapter_core.families.faceid): detection of every published layout, the spec and its
description, damaged files, the family still refused (Kolors FaceID), the encoder need, the projection's
input (FaceFeatures, face_features, zero_features, concat_faces) and the presets.

Published layouts are real-size meta tensors from testkit.faceid_adapters; the expected values below are written by
hand from shared/reference/ip-adapter-formats.md §1 (model table, LoRA keys) and §1.1, not read from the package.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ip_adapter_core import detect_spec, families
from ip_adapter_core.errors import IncompatibleError, InputError, NotAnIPAdapterError, UnsupportedAdapterError
from ip_adapter_core.families import faceid
from ip_adapter_core.families.faceid import FaceFeatures, concat_faces, face_features, zero_features
from ip_adapter_core.projection import IPAdapterModel
from ip_adapter_core.spec import AdapterSpec
from testkit.faceid_adapters import PUBLISHED_FACEID, faceid_parts, published_faceid

SD15 = (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280)  # Appendix A
SDXL = (640,) * 4 + (1280,) * 20 + (1280,) * 30 + (640,) * 6 + (1280,) * 10
FACE = "a face model (insightface buffalo_l)"

# stem -> kind, family, tokens, encoder_input, clip_dim, lora_rank, plus_version, resampler (dim, heads, depth)
EXPECTED = {
    "ip-adapter-faceid_sd15": ("faceid", "sd15", 4, "face_normed", None, 128, None, None),
    "ip-adapter-faceid_sdxl": ("faceid", "sdxl", 4, "face_normed", None, 128, None, None),
    "ip-adapter-faceid-plus_sd15": ("faceid_plus", "sd15", 4, "face_normed", 1280, 128, "v1", (768, 12, 4)),
    "ip-adapter-faceid-plusv2_sd15": ("faceid_plus", "sd15", 4, "face_normed", 1280, 128, "v2", (768, 12, 4)),
    "ip-adapter-faceid-plusv2_sdxl": ("faceid_plus", "sdxl", 4, "face_normed", 1280, 128, "v2", (2048, 32, 4)),
    "ip-adapter-faceid-portrait_sd15": ("portrait", "sd15", 16, "face_normed", None, None, None, None),
    "ip-adapter-faceid-portrait-v11_sd15": ("portrait", "sd15", 16, "face_normed", None, None, None, None),
    "ip-adapter-faceid-portrait_sdxl": ("portrait", "sdxl", 16, "face_normed", None, None, None, None),
    "ip-adapter-faceid-portrait_sdxl_unnorm": ("portrait_unnorm", "sdxl", 16, "face_raw", None, None, None,
                                               (1280, 20, 4)),
}


def spec_of(stem: str) -> AdapterSpec:
    return detect_spec(*published_faceid(stem), name=f"'{stem}.bin'")


def test_expected_table_covers_every_published_faceid_file():
    assert set(EXPECTED) == set(PUBLISHED_FACEID)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_detect_published_faceid_layout(stem):
    kind, family, tokens, enc_in, clip_dim, rank, version, resampler = EXPECTED[stem]
    spec = spec_of(stem)
    assert spec.adapter_family == "faceid"
    assert (spec.kind, spec.family, spec.num_tokens) == (kind, family, tokens)
    assert spec.cross_attention_dim == {"sd15": 768, "sdxl": 2048}[family]
    assert (spec.encoder_input, spec.encoder_dim) == (enc_in, 512)
    assert (spec.clip_dim, spec.lora_rank, spec.plus_version) == (clip_dim, rank, version)
    assert spec.site_dims == (SD15 if family == "sd15" else SDXL)
    if resampler is None:
        assert spec.resampler_heads is None and spec.resampler_depth is None
    else:
        assert (spec.resampler_dim, spec.resampler_heads, spec.resampler_depth) == resampler
    assert families.family_of(spec).name == "faceid"


def test_plus_version_is_the_one_fact_from_the_file_name():
    parts = published_faceid("ip-adapter-faceid-plus_sd15")
    v1 = detect_spec(*parts, name="'ip-adapter-faceid-plus_sd15.bin'")
    v2 = detect_spec(*parts, name="'ip-adapter-faceid-PlusV2_sd15.bin'")
    assert (v1.plus_version, v2.plus_version) == ("v1", "v2")
    assert dataclasses.replace(v1, plus_version=None) == dataclasses.replace(v2, plus_version=None)
    assert detect_spec(*parts).plus_version == "v1"  # no name: v1
    # ... and nothing else depends on the name
    faceid_parts_ = published_faceid("ip-adapter-faceid_sd15")
    assert detect_spec(*faceid_parts_, name="'a-v2.bin'") == detect_spec(*faceid_parts_, name="'b.bin'")


def test_describe_plus_v2_says_where_the_version_came_from():
    assert spec_of("ip-adapter-faceid-plusv2_sdxl").describe() == (
        "FaceID Plus v2 (assumed from the file name: v1 and v2 have the same tensors), SDXL, 4 tokens, LoRA rank 128, "
        "needs a face model (insightface buffalo_l) + CLIP ViT-H")


@pytest.mark.parametrize("stem, words", [
    ("ip-adapter-faceid_sd15", ("FaceID, SD1.5, 4 tokens, LoRA rank 128, needs " + FACE,)),
    ("ip-adapter-faceid-plus_sd15", ("FaceID Plus v1 (assumed from the file name", "SD1.5", "+ CLIP ViT-H")),
    ("ip-adapter-faceid-portrait-v11_sd15", ("FaceID Portrait, SD1.5, 16 tokens per face, needs " + FACE,)),
    ("ip-adapter-faceid-portrait_sdxl_unnorm", ("unnormalised", "SDXL", "16 tokens per face", FACE)),
])
def test_describe_names_kind_family_tokens_lora_and_encoders(stem, words):
    text = spec_of(stem).describe()
    for w in words:
        assert w in text, text
    assert ("LoRA" in text) == (EXPECTED[stem][5] is not None), text
    assert ("CLIP" in text) == (EXPECTED[stem][0] == "faceid_plus"), text


# ---------------------------------------------------------------------------------------------- encoder need

@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_encoder_need(stem):
    spec = spec_of(stem)
    need = families.encoder_need(spec)
    assert (need.kind, need.width) == ("face", 512)
    assert need.output == ("raw" if "unnorm" in stem else "normed")
    if spec.kind == "faceid_plus":
        assert (need.clip.kind, need.clip.output, need.clip.width, need.clip.label) == (
            "clip_vision", "penultimate", 1280, "CLIP ViT-H")
        assert need.label == FACE + " + CLIP ViT-H" == spec.encoder_name
    else:
        assert need.clip is None and need.label == FACE == spec.encoder_name


def test_encoder_need_keeps_its_old_form():
    # the new optional field leaves every existing construction working, and the dataclass frozen
    need = families.EncoderNeed("clip_vision", "image_embeds", 1024, "CLIP ViT-H")
    assert need.clip is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        need.clip = need


# ---------------------------------------------------------------------------------------------- refused, damaged

def _m(*shape):
    return torch.empty(shape, device="meta", dtype=torch.float16)


def _kolors_faceid():
    """Kwai-Kolors FaceID Plus (§1 table, §7): ProjPlusModel dim 4096 (ChatGLM space), heads 64, 6 tokens, a
    perceiver over CLIP-L/336 states (1024), on the Kolors UNet (SDXL layout, context 2048)."""
    d, inner = 4096, 64 * 64
    p = {"proj.0.weight": _m(1024, 512), "proj.0.bias": _m(1024), "proj.2.weight": _m(6 * d, 1024),
         "proj.2.bias": _m(6 * d), "norm.weight": _m(d), "norm.bias": _m(d),
         "perceiver_resampler.proj_in.weight": _m(d, 1024), "perceiver_resampler.proj_in.bias": _m(d),
         "perceiver_resampler.proj_out.weight": _m(d, d), "perceiver_resampler.proj_out.bias": _m(d),
         "perceiver_resampler.norm_out.weight": _m(d), "perceiver_resampler.norm_out.bias": _m(d)}
    for i in range(4):
        p[f"perceiver_resampler.layers.{i}.0.to_q.weight"] = _m(inner, d)
        p[f"perceiver_resampler.layers.{i}.0.to_kv.weight"] = _m(2 * inner, d)
    ip = {}
    for i, h in enumerate(SDXL):
        ip[f"{2 * i + 1}.to_k_ip.weight"], ip[f"{2 * i + 1}.to_v_ip.weight"] = _m(h, 2048), _m(h, 2048)
    return p, ip


def test_kolors_faceid_is_refused_by_name():
    with pytest.raises(UnsupportedAdapterError) as e:
        detect_spec(*_kolors_faceid(), name="'ipa-faceid-plus.bin'")
    text = str(e.value)
    assert "Kolors" in text and "FaceID" in text and "'ipa-faceid-plus.bin'" in text and "not supported" in text


def test_the_sd35_signature_goes_to_its_family_not_to_faceid():
    # the InstantX SD3.5 family (families/sd3.py) claims a time-embedded resampler and names what is missing
    _, ip = published_faceid("ip-adapter-faceid-portrait_sd15")
    with pytest.raises(NotAnIPAdapterError, match="InstantX SD3.5") as e:
        detect_spec({"time_embedding.linear_1.weight": _m(1280, 320)}, ip)
    assert not isinstance(e.value, UnsupportedAdapterError)


def _faceid_sd15():
    p, ip = published_faceid("ip-adapter-faceid_sd15")
    return dict(p), dict(ip)


def _plus_sd15():
    p, ip = published_faceid("ip-adapter-faceid-plusv2_sd15")
    return dict(p), dict(ip)


def _unnorm():
    p, ip = published_faceid("ip-adapter-faceid-portrait_sdxl_unnorm")
    return dict(p), dict(ip)


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


# case -> (image_proj, ip_adapter, words the message must contain: the key, what was found, what was expected)
def _damaged():
    fp, fip = _faceid_sd15()
    pp, pip = _plus_sd15()
    up, uip = _unnorm()
    r = "ip_adapter.0.to_q_lora.down.weight"
    return {
        "proj.0 1-D": ({**fp, "proj.0.weight": _m(1024)}, fip, ("'image_proj.proj.0.weight'", "(1024,)", "expected")),
        "proj.2 missing hidden": ({**fp, "proj.2.weight": _m(3072, 1000)}, fip, ("proj.2.weight", "(3072, 1000)", "1024")),
        "id MLP not 2x wide": ({**fp, "proj.0.weight": _m(1000, 512), "proj.2.weight": _m(3072, 1000)}, fip,
                               ("proj.0.weight", "(1000, 512)", "[2 * 512, 512]")),
        "norm width != context": ({**fp, "norm.weight": _m(1024)}, fip, ("norm.weight", "1024", "768")),
        "proj.2 rows not tokens x context": ({**fp, "proj.2.weight": _m(3000, 1024)}, fip, ("proj.2.weight", "3000")),
        "plus proj_in rows": ({**pp, "perceiver_resampler.proj_in.weight": _m(1024, 1280)}, pip,
                              ("perceiver_resampler.proj_in.weight", "(1024, 1280)", "768")),
        "plus proj_out": ({**pp, "perceiver_resampler.proj_out.weight": _m(768, 1024)}, pip,
                          ("perceiver_resampler.proj_out.weight", "(768, 1024)", "[768, 768]")),
        "plus without to_q": (_without(pp, "perceiver_resampler.layers.0.0.to_q.weight"), pip,
                              ("perceiver_resampler.layers.0.0.to_q.weight", "missing", "heads * 64")),
        "unnorm 2-D latents": ({**up, "latents": _m(16, 1280)}, uip, ("'image_proj.latents'", "(16, 1280)", "[1, tokens")),
        "unnorm proj_out": ({**up, "proj_out.weight": _m(768, 1280)}, uip, ("proj_out.weight", "(768, 1280)", "2048")),
        "LoRA 1-D": (fp, {**fip, "0.to_q_lora.down.weight": _m(128)}, (r, "(128,)", "2-D")),
        "LoRA ranks differ": (fp, {**fip, "0.to_q_lora.down.weight": _m(64, 320)}, (r, "rank 64", "rank 128")),
        "LoRA past the last processor": (fp, {**fip, "32.to_q_lora.down.weight": _m(128, 320)},
                                         ("ip_adapter.32.to_q_lora.down.weight", "processor 32", "0-31")),
        "LoRA with a base projection": ({"proj.weight": _m(3072, 1024), "proj.bias": _m(3072), "norm.weight": _m(768),
                                         "norm.bias": _m(768)}, fip, ("FaceID LoRA keys", "proj.weight", "expected")),
    }


@pytest.mark.parametrize("case", sorted(_damaged()))
def test_damaged_faceid_file_is_a_typed_error_naming_key_found_expected(case):
    p, ip, words = _damaged()[case]
    with pytest.raises(NotAnIPAdapterError) as e:
        detect_spec(p, ip, name="'damaged.bin'")
    assert not isinstance(e.value, UnsupportedAdapterError)
    text = str(e.value)
    assert "'damaged.bin'" in text, text
    for w in words:
        assert w in text, text


def test_faceid_without_its_lora_is_still_faceid():
    # A FaceID file stripped of its LoRA (4 tokens): still FaceID, by its token count, with no LoRA rank.
    p, ip = _faceid_sd15()
    spec = detect_spec(p, {k: v for k, v in ip.items() if "_lora." not in k})
    assert (spec.kind, spec.lora_rank) == ("faceid", None)
    assert "LoRA" not in spec.describe()


def test_sd_image_adapters_are_not_claimed_by_faceid():
    from testkit.adapters import PUBLISHED, published

    for name in PUBLISHED:
        assert not faceid.claims(*published(name)), name


# ---------------------------------------------------------------------------------------------- FaceFeatures

def test_face_features_to_returns_a_moved_copy():
    f = FaceFeatures(torch.randn(2, 512), torch.randn(2, 5, 48), shortcut=True, shortcut_scale=2.0)
    g = f.to("meta")
    assert g is not f and g.embeds.device.type == "meta" and g.clip.device.type == "meta"
    assert f.embeds.device.type == "cpu" and f.clip.device.type == "cpu"  # the original is untouched
    assert (g.shortcut, g.shortcut_scale, g.batch) == (True, 2.0, 2)
    h = f.to(torch.float16)
    assert h.embeds.dtype == h.clip.dtype == torch.float16
    assert FaceFeatures(torch.zeros(1, 512)).to("cpu").clip is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.shortcut = False


@pytest.mark.parametrize("embeds, clip", [(torch.zeros(512), None), (torch.zeros(2, 512), torch.zeros(3, 5, 48)),
                                          (torch.zeros(2, 512), torch.zeros(2, 48))])
def test_face_features_shapes_are_checked(embeds, clip):
    with pytest.raises(InputError):
        FaceFeatures(embeds, clip)


def test_face_features_from_the_spec():
    v1, v2 = spec_of("ip-adapter-faceid-plus_sd15"), spec_of("ip-adapter-faceid-plusv2_sd15")
    e, c = torch.randn(3, 512), torch.randn(3, 257, 1280)
    assert face_features(v1, e, c).shortcut is False
    f = face_features(v2, e, c, shortcut_scale=1.5)
    assert (f.shortcut, f.shortcut_scale) == (True, 1.5)
    assert face_features(v2, e, c, shortcut=False).shortcut is False
    with pytest.raises(InputError, match="CLIP vision states"):
        face_features(v2, e)
    with pytest.raises(IncompatibleError, match="1280-wide"):
        face_features(v2, e, torch.randn(3, 257, 1024))
    with pytest.raises(IncompatibleError, match="512"):
        face_features(v2, torch.randn(3, 256), c)
    portrait = spec_of("ip-adapter-faceid-portrait_sd15")
    assert face_features(portrait, e).clip is None
    with pytest.raises(InputError, match="reads no CLIP"):
        face_features(portrait, e, c)


def test_zero_features():
    portrait = spec_of("ip-adapter-faceid-portrait_sd15")
    z = zero_features(portrait, faces=5)
    assert z.embeds.shape == (5, 512) and not z.embeds.any() and z.clip is None and not z.shortcut
    plus = spec_of("ip-adapter-faceid-plusv2_sdxl")
    clip_zero = torch.randn(1, 257, 1280)
    z = zero_features(plus, clip_zero, shortcut_scale=2.0)
    assert z.embeds.shape == (1, 512) and not z.embeds.any()
    assert torch.equal(z.clip, clip_zero) and (z.shortcut, z.shortcut_scale) == (True, 2.0)  # same as the cond's
    assert zero_features(plus, clip_zero, shortcut=False).shortcut is False
    with pytest.raises(InputError):
        zero_features(plus)  # the host must give the zero image's CLIP states
    with pytest.raises(InputError):
        zero_features(plus, torch.randn(2, 257, 1280))
    with pytest.raises(InputError):
        zero_features(portrait, clip_zero)
    with pytest.raises(InputError):
        zero_features(portrait, faces=0)


def test_concat_faces():
    tokens = torch.arange(3 * 16 * 8, dtype=torch.float32).reshape(3, 16, 8)
    joined = concat_faces(tokens)
    assert joined.shape == (1, 48, 8)
    assert torch.equal(joined[0, 16:32], tokens[1])  # faces in order
    with pytest.raises(InputError):
        concat_faces(torch.zeros(16, 8))


def test_uncond_is_the_projection_of_zero_faces():
    # formats §5: FaceID / portrait: proj(zeros_like(face)); n faces -> n copies of the zero face's tokens, joined
    p, ip = faceid_parts("portrait", ctx=64, site_dims=(32, 64))
    spec = detect_spec(p, ip)
    model = IPAdapterModel.from_parts(spec, p, ip)
    one = model.project(zero_features(spec))
    uncond = concat_faces(model.project(zero_features(spec, faces=3)))
    assert one.shape == (1, 16, 64) and uncond.shape == (1, 48, 64)
    torch.testing.assert_close(uncond, one.repeat(1, 3, 1))
    assert one.abs().mean() > 0.1  # the zero face is not zero tokens (the MLP's biases and the LayerNorm)


def test_a_faceid_projection_refuses_clip_features():
    p, ip = faceid_parts("faceid", ctx=64, site_dims=(32, 64))
    model = IPAdapterModel.from_parts(detect_spec(p, ip), p, ip)
    with pytest.raises(InputError, match="FaceFeatures"):
        model.project(torch.randn(1, 512))


def test_from_parts_takes_the_projection_and_sites_and_leaves_the_lora():
    p, ip = faceid_parts("faceid_plus", ctx=128, site_dims=(32, 64), clip_dim=48, lora_rank=4)
    model = IPAdapterModel.from_parts(detect_spec(p, ip), p, ip)
    sd = model.state_dict()
    assert not any("lora" in k for k in sd)
    assert sd["image_proj.perceiver_resampler.layers.3.1.3.weight"].data_ptr() == \
        p["perceiver_resampler.layers.3.1.3.weight"].data_ptr()
    assert sd["sites.1.to_v_ip.weight"].data_ptr() == ip["3.to_v_ip.weight"].data_ptr()


# ---------------------------------------------------------------------------------------------- presets

def test_faceid_presets():
    table = families.presets()
    want = {"faceid": ("faceid", {"sd15": "ip-adapter-faceid_sd15.bin", "sdxl": "ip-adapter-faceid_sdxl.bin"}),
            "faceid plus": ("faceid_plus", {"sd15": "ip-adapter-faceid-plus_sd15.bin"}),
            "faceid plus v2": ("faceid_plus", {"sd15": "ip-adapter-faceid-plusv2_sd15.bin",
                                               "sdxl": "ip-adapter-faceid-plusv2_sdxl.bin"}),
            "faceid portrait": ("portrait", {"sd15": "ip-adapter-faceid-portrait-v11_sd15.bin",
                                             "sdxl": "ip-adapter-faceid-portrait_sdxl.bin"}),
            "faceid portrait unnorm": ("portrait_unnorm", {"sdxl": "ip-adapter-faceid-portrait_sdxl_unnorm.bin"})}
    for name, (kind, examples) in want.items():
        preset = table[name]
        assert preset.examples == examples, name
        assert preset.encoder == ("CLIP ViT-H" if kind == "faceid_plus" else FACE), name
        for stem in EXPECTED:
            assert preset.accepts(spec_of(stem)) == (EXPECTED[stem][0] == kind), (name, stem)
    for name in ("standard", "plus", "plus face", "full face", "any"):
        assert not any(table[name].accepts(spec_of(stem)) for stem in EXPECTED), name


def test_a_faceid_spec_round_trips_through_the_embeds_file():
    # IPA_EMBEDS files keep the AdapterSpec fields as JSON; the new optional fields go with them
    from ip_adapter_core.embeds import ImageTokens
    from ip_adapter_core.embeds_io import from_safetensors_dict, to_safetensors_dict

    spec = spec_of("ip-adapter-faceid-plusv2_sd15")
    tokens = ImageTokens(cond=torch.zeros(1, 4, 768), uncond=torch.zeros(1, 4, 768), spec=spec, adapter_id="a",
                         adapter_name="ip-adapter-faceid-plusv2_sd15.bin")
    back = from_safetensors_dict(*to_safetensors_dict(tokens), name="f.safetensors")
    assert back.spec == spec and (back.spec.plus_version, back.spec.lora_rank, back.spec.clip_dim) == ("v2", 128, 1280)
