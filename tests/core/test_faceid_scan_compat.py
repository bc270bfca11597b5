"""FaceID files in the header scan, the unified loader's choice and the pre-sampling checks (no ComfyUI): a FaceID
spec must not crash what assumed CLIP vision (EncoderInfo.serves, choose, the nothing-fits message, check_encoder),
and the FaceID presets order files whose tensors are identical by their names."""
from __future__ import annotations


import pytest
import torch

from ip_adapter_core import detect_spec, scan
from ip_adapter_core.compat import check_encoder, check_face_encoder, check_model, clip_vision_need
from ip_adapter_core.errors import IncompatibleError, InputError
from ip_adapter_core.sites import SD15_LAYOUT, SDXL_LAYOUT, expand_layout
from testkit.adapters import published, write_sparse_safetensors
from testkit.faceid_adapters import published_faceid, save_faceid

WHERE = "IPA test"
H = dict(hidden=1280, projection=1024)
BIGG = dict(hidden=1664, projection=1280)
H_ENC = scan.EncoderInfo(hidden=1280, projection=1024, image_size=224, patch=14, layers=32)
G_ENC = scan.EncoderInfo(hidden=1664, projection=1280, image_size=224, patch=14, layers=48)
FACE = "a face model (insightface buffalo_l)"


def spec_of(stem, name=None):
    return detect_spec(*published_faceid(stem), name=f"'{name or stem + '.bin'}'")


# ---------------------------------------------------------------------------------------------- header scan

def _sparse(path, parts) -> str:
    """A valid fp16 safetensors file of the parts' shapes whose data is a hole (no disk, nothing read)."""
    return write_sparse_safetensors(path, {prefix + key: tuple(t.shape) for prefix, part in
                                           zip(("image_proj.", "ip_adapter."), parts) for key, t in part.items()})


@pytest.mark.parametrize("stem, kind, version", [("ip-adapter-faceid-plusv2_sdxl", "faceid_plus", "v2"),
                                                 ("ip-adapter-faceid_sdxl", "faceid", None),
                                                 ("ip-adapter-faceid-portrait_sdxl_unnorm", "portrait_unnorm", None)])
def test_real_size_faceid_file_from_its_header(tmp_path, stem, kind, version):
    path = _sparse(tmp_path / f"{stem}.safetensors", published_faceid(stem))
    result = scan.scan_adapter(path)
    assert result.problem is None
    assert (result.spec.kind, result.spec.family, result.spec.plus_version) == (kind, "sdxl", version)
    assert FACE in result.spec.describe()


def test_plus_version_from_the_scanned_file_name(tmp_path):
    kw = dict(ctx=64, site_dims=(32, 64), clip_dim=16, lora_rank=4, dtype=torch.float16)
    v1 = save_faceid(str(tmp_path / "ip-adapter-faceid-plus_sd15.bin"), "faceid_plus", **kw)
    v2 = save_faceid(str(tmp_path / "ip-adapter-faceid-plusv2_sd15.bin"), "faceid_plus", **kw)
    assert scan.scan_adapter(v1).spec.plus_version == "v1"
    assert scan.scan_adapter(v2).spec.plus_version == "v2"


# ---------------------------------------------------------------------------------------------- encoders

def test_clip_vision_need():
    assert clip_vision_need(spec_of("ip-adapter-faceid_sd15")) is None
    need = clip_vision_need(spec_of("ip-adapter-faceid-plusv2_sd15"))
    assert (need.kind, need.output, need.width, need.label) == ("clip_vision", "penultimate", 1280, "CLIP ViT-H")
    base = clip_vision_need(detect_spec(*published("ip-adapter_sd15")))
    assert (base.kind, base.output, base.width) == ("clip_vision", "image_embeds", 1024)


def test_clip_files_serve_only_the_plus_clip_branch():
    assert H_ENC.serves(spec_of("ip-adapter-faceid-plusv2_sdxl"))
    assert not G_ENC.serves(spec_of("ip-adapter-faceid-plusv2_sdxl"))
    for stem in ("ip-adapter-faceid_sd15", "ip-adapter-faceid-portrait_sd15", "ip-adapter-faceid-portrait_sdxl_unnorm"):
        assert not H_ENC.serves(spec_of(stem)) and not G_ENC.serves(spec_of(stem))


def test_check_encoder_on_faceid_specs():
    plus = spec_of("ip-adapter-faceid-plusv2_sd15")
    check_encoder(plus, adapter_name="p", where=WHERE, **H)
    check_encoder(plus, adapter_name="p", where=WHERE, hidden=1280, projection=None)  # penultimate: no projection
    with pytest.raises(IncompatibleError) as e:
        check_encoder(plus, adapter_name="p", where=WHERE, **BIGG)
    assert "CLIP ViT-H" in str(e.value) and "1664" in str(e.value)
    with pytest.raises(IncompatibleError) as e:
        check_encoder(spec_of("ip-adapter-faceid_sd15"), adapter_name="f", where=WHERE, **H)
    assert FACE in str(e.value) and "not a CLIP vision encoder" in str(e.value) and WHERE in str(e.value)


def test_check_face_encoder():
    for stem in ("ip-adapter-faceid_sd15", "ip-adapter-faceid-plusv2_sdxl", "ip-adapter-faceid-portrait_sdxl_unnorm"):
        check_face_encoder(spec_of(stem), width=512, adapter_name=stem, where=WHERE)
    with pytest.raises(IncompatibleError, match="256-wide.*512-wide"):
        check_face_encoder(spec_of("ip-adapter-faceid_sd15"), width=256, adapter_name="f", where=WHERE)
    with pytest.raises(IncompatibleError, match="not a face model"):
        check_face_encoder(detect_spec(*published("ip-adapter_sd15")), width=512, adapter_name="b", where=WHERE)


def test_check_model_suggests_a_file_of_the_same_kind():
    sd15, sdxl = expand_layout(SD15_LAYOUT), expand_layout(SDXL_LAYOUT)
    check_model(spec_of("ip-adapter-faceid_sd15"), sd15, 768, adapter_name="f", where=WHERE)
    with pytest.raises(IncompatibleError, match="ip-adapter-faceid_sdxl.bin"):
        check_model(spec_of("ip-adapter-faceid_sd15"), sdxl, 2048, adapter_name="f", where=WHERE)
    v2 = "ip-adapter-faceid-plusv2_sdxl.bin"
    with pytest.raises(IncompatibleError, match="ip-adapter-faceid-plusv2_sd15.bin"):  # the file's version
        check_model(spec_of("ip-adapter-faceid-plusv2_sdxl"), sd15, 768, adapter_name=v2, where=WHERE)
    with pytest.raises(IncompatibleError, match="ip-adapter-faceid-plus_sd15.bin"):
        check_model(spec_of("ip-adapter-faceid-plusv2_sdxl", "plus.bin"), sd15, 768, adapter_name="plus.bin",
                    where=WHERE)
    # SD image adapters too: a file of the same kind (a ViT-bigG base, a plus), the standard one for a base
    with pytest.raises(IncompatibleError, match="ip-adapter_sd15_vit-G.safetensors"):
        check_model(detect_spec(*published("ip-adapter_sdxl")), sd15, 768, adapter_name="a", where=WHERE)
    with pytest.raises(IncompatibleError, match="ip-adapter-plus_sd15.safetensors"):
        check_model(detect_spec(*published("ip-adapter-plus_sdxl_vit-h")), sd15, 768, adapter_name="a", where=WHERE)
    with pytest.raises(IncompatibleError, match="ip-adapter_sd15.safetensors"):
        check_model(detect_spec(*published("ip-adapter_sdxl_vit-h")), sd15, 768, adapter_name="a", where=WHERE)


# ---------------------------------------------------------------------------------------------- choosing

def adapters(*pairs, folder="/m/ipadapter"):
    """(file name, published stem): the spec is detected with the file's own name, as the scan does."""
    return [scan.Found(name=n, folder=folder, path=f"{folder}/{n}", scan=scan.AdapterScan(spec_of(stem, n)))
            for n, stem in pairs]


def encoders(*pairs, folder="/m/clip_vision"):
    return [scan.Found(name=n, folder=folder, path=f"{folder}/{n}", scan=scan.EncoderScan(e)) for n, e in pairs]


def choose(preset, ads, encs, family="sd15"):
    fits = (lambda s: None if s.family == family else f"for {s.family}")
    return scan.choose(preset, ads, encs, fits_model=fits, model_label=f"{family} test model", family=family,
                       adapter_folders=["/m/ipadapter"], encoder_folders=["/m/clip_vision"])


SD15_FILES = adapters(("ip-adapter-faceid_sd15.bin", "ip-adapter-faceid_sd15"),
                      ("ip-adapter-faceid-plus_sd15.bin", "ip-adapter-faceid-plus_sd15"),
                      ("ip-adapter-faceid-plusv2_sd15.bin", "ip-adapter-faceid-plusv2_sd15"),
                      ("ip-adapter-faceid-portrait_sd15.bin", "ip-adapter-faceid-portrait_sd15"),
                      ("ip-adapter-faceid-portrait-v11_sd15.bin", "ip-adapter-faceid-portrait-v11_sd15"),
                      ("ip-adapter-faceid-portrait_sdxl_unnorm.bin", "ip-adapter-faceid-portrait_sdxl_unnorm"),
                      ("ip-adapter-faceid-portrait_sdxl.bin", "ip-adapter-faceid-portrait_sdxl"))
ENCS = encoders(("bigg.safetensors", G_ENC), ("h.safetensors", H_ENC))


@pytest.mark.parametrize("preset, family, want, encoder", [
    ("faceid", "sd15", "ip-adapter-faceid_sd15.bin", None),
    ("faceid plus", "sd15", "ip-adapter-faceid-plus_sd15.bin", "h.safetensors"),
    ("faceid plus v2", "sd15", "ip-adapter-faceid-plusv2_sd15.bin", "h.safetensors"),
    ("faceid portrait", "sd15", "ip-adapter-faceid-portrait-v11_sd15.bin", None),
    ("faceid portrait", "sdxl", "ip-adapter-faceid-portrait_sdxl.bin", None),
    ("faceid portrait unnorm", "sdxl", "ip-adapter-faceid-portrait_sdxl_unnorm.bin", None),
])
def test_faceid_preset_choice(preset, family, want, encoder):
    got = choose(preset, SD15_FILES, ENCS, family=family)
    assert got.adapter.name == want
    assert (got.encoder.name if got.encoder else None) == encoder


def test_plus_v1_and_v2_are_the_same_tensors_ordered_by_name():
    for preset, first in (("faceid plus", "ip-adapter-faceid-plus_sd15.bin"),
                          ("faceid plus v2", "ip-adapter-faceid-plusv2_sd15.bin")):
        got = choose(preset, SD15_FILES, ENCS)
        assert got.adapter.name == first and got.same_tensors
        assert set(got.others) == {"ip-adapter-faceid-plus_sd15.bin", "ip-adapter-faceid-plusv2_sd15.bin"} - {first}


def test_faceid_needs_no_clip_vision_file():
    got = choose("faceid", SD15_FILES, [])
    assert got.adapter.name == "ip-adapter-faceid_sd15.bin" and got.encoder is None


def test_faceid_plus_without_a_vit_h_file_is_explained():
    with pytest.raises(InputError) as e:
        choose("faceid plus v2", SD15_FILES, encoders(("bigg.safetensors", G_ENC)))
    msg = str(e.value)
    assert "no CLIP vision file gives its 1280-wide hidden states (CLIP ViT-H)" in msg
    assert "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in msg


def test_sd_presets_do_not_take_faceid_files():
    for preset in ("standard", "plus", "plus face", "full face", "any"):
        with pytest.raises(InputError, match=f"preset '{preset}'"):
            choose(preset, SD15_FILES, ENCS)


@pytest.mark.parametrize("preset, family, words", [
    ("faceid", "sd15", ("put ip-adapter-faceid_sd15.bin in /m/ipadapter; it reads " + FACE,)),
    ("faceid portrait unnorm", "sdxl", ("ip-adapter-faceid-portrait_sdxl_unnorm.bin", FACE)),
    ("faceid plus v2", "sdxl", ("ip-adapter-faceid-plusv2_sdxl.bin", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")),
    ("faceid plus", "sdxl", ("none is published for SDXL",)),
])
def test_nothing_fits_says_what_to_get(preset, family, words):
    with pytest.raises(InputError) as e:
        choose(preset, [], [], family=family)
    for w in words:
        assert w in str(e.value), str(e.value)
