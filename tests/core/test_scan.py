"""Header-only scanning of adapter and CLIP vision files, preset choice and its error message (no ComfyUI).

Real-size files are written as *sparse* files: a real safetensors header followed by a hole as long as the data the
header claims, so a 700 MB SDXL layout costs no disk and no memory; reading any tensor data would be slow and show up in
the memory bound. Expected values are written by hand from shared/reference/ip-adapter-formats.md §1.
"""
from __future__ import annotations

import os
import time
import tracemalloc

import pytest
import torch

from ip_adapter_core import scan
from ip_adapter_core.errors import InputError
from testkit.adapters import SD15_SITES, SDXL_SITES, adapter_parts, published, save_adapter, write_sparse_safetensors





def published_shapes(name: str) -> dict[str, tuple[int, ...]]:
    image_proj, ip_adapter = published(name)
    out = {f"image_proj.{k}": tuple(v.shape) for k, v in image_proj.items()}
    out.update({f"ip_adapter.{k}": tuple(v.shape) for k, v in ip_adapter.items()})
    return out


def hf_clip_shapes(hidden, proj, patch, positions, layers):
    s = {"vision_model.embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
         "vision_model.embeddings.position_embedding.weight": (positions, hidden),
         "vision_model.embeddings.class_embedding": (hidden,),
         "vision_model.post_layernorm.weight": (hidden,)}
    if proj:
        s["visual_projection.weight"] = (proj, hidden)
    for i in range(layers):
        s[f"vision_model.encoder.layers.{i}.layer_norm1.weight"] = (hidden,)
        s[f"vision_model.encoder.layers.{i}.self_attn.q_proj.weight"] = (hidden, hidden)
    return s


def open_clip_shapes(hidden, proj, patch, positions, layers):
    s = {"visual.conv1.weight": (hidden, 3, patch, patch), "visual.positional_embedding": (positions, hidden),
         "visual.class_embedding": (hidden,), "visual.proj": (hidden, proj)}
    for i in range(layers):
        s[f"visual.transformer.resblocks.{i}.attn.in_proj_weight"] = (3 * hidden, hidden)
    return s


# ---------------------------------------------------------------------------------------------- reading headers

def test_safetensors_shapes_and_dtypes_without_reading_data(tmp_path):
    # 70 SDXL layers + the 8192x1280 projection: ~700 MB of claimed data, none of it on disk.
    path = write_sparse_safetensors(tmp_path / "big.safetensors", published_shapes("ip-adapter_sdxl"))
    tracemalloc.start()
    t0 = time.perf_counter()
    shapes = scan.read_tensor_shapes(path)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert shapes["image_proj.proj.weight"] == ((8192, 1280), "F16")
    assert shapes["ip_adapter.139.to_v_ip.weight"] == ((1280, 2048), "F16")
    assert len(shapes) == 4 + 2 * 70
    assert peak < 5_000_000, f"reading the header allocated {peak} bytes"
    assert elapsed < 2.0


def test_bin_shapes_through_mmap(tmp_path):
    image_proj, ip_adapter = adapter_parts("base", ctx=24, encoder_dim=16, site_dims=(32, 64), dtype=torch.float16)
    path = save_adapter(str(tmp_path / "a.bin"), image_proj, ip_adapter)
    shapes = scan.read_tensor_shapes(path)
    assert shapes["image_proj.proj.weight"] == ((4 * 24, 16), "F16")
    assert shapes["ip_adapter.3.to_k_ip.weight"] == ((64, 24), "F16")


def test_old_format_bin_is_skipped_with_a_reason(tmp_path):
    image_proj, ip_adapter = adapter_parts("base", ctx=24, encoder_dim=16, site_dims=(32,))
    path = str(tmp_path / "old.bin")
    torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, path, _use_new_zipfile_serialization=False)
    result = scan.scan_adapter(path)
    assert result.spec is None and "zip format" in result.problem


# ---------------------------------------------------------------------------------------------- adapters

# name -> (kind, family, tokens, encoder name), by hand from the formats reference §1.
REAL = {
    "ip-adapter_sd15": ("base", "sd15", 4, "CLIP ViT-H"),
    "ip-adapter_sd15_vit-G": ("base", "sd15", 4, "CLIP ViT-bigG"),
    "ip-adapter-plus_sd15": ("plus", "sd15", 16, "CLIP ViT-H"),
    "ip-adapter-full-face_sd15": ("full_face", "sd15", None, "CLIP ViT-H"),
    "ip-adapter_sdxl": ("base", "sdxl", 4, "CLIP ViT-bigG"),
    "ip-adapter-plus_sdxl_vit-h": ("plus", "sdxl", 16, "CLIP ViT-H"),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_size_adapter_variant_from_header(tmp_path, name):
    path = write_sparse_safetensors(tmp_path / "renamed.safetensors", published_shapes(name))
    result = scan.scan_adapter(path)
    kind, family, tokens, encoder = REAL[name]
    assert result.problem is None
    spec = result.spec
    assert (spec.kind, spec.family, spec.num_tokens, spec.encoder_name) == (kind, family, tokens, encoder)
    assert spec.site_dims == (SD15_SITES if family == "sd15" else SDXL_SITES)


def test_dangling_link_is_reported_not_raised(tmp_path):
    link = tmp_path / "gone.safetensors"
    link.symlink_to(tmp_path / "missing.safetensors")
    assert "does not exist" in scan.scan_adapter(str(link)).problem
    assert "does not exist" in scan.scan_clip_vision(str(link)).problem


def test_non_adapters_say_what_they_are(tmp_path):
    lora = write_sparse_safetensors(tmp_path / "x.safetensors", {"lora_unet_down.lora_down.weight": (4, 320)})
    assert "LoRA" in scan.scan_adapter(lora).problem
    cv = write_sparse_safetensors(tmp_path / "cv.safetensors", hf_clip_shapes(48, 40, 8, 17, 2))
    assert "CLIP vision" in scan.scan_adapter(cv).problem
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all")
    assert scan.scan_adapter(str(junk)).problem


# ---------------------------------------------------------------------------------------------- CLIP vision

@pytest.mark.parametrize("layout", [hf_clip_shapes, open_clip_shapes], ids=["transformers", "open_clip"])
@pytest.mark.parametrize("dims, want", [
    ((1280, 1024, 14, 257, 32), ("CLIP ViT-H", 224)),
    ((1664, 1280, 14, 257, 48), ("CLIP ViT-bigG", 224)),
    ((1024, 768, 14, 257, 24), ("CLIP ViT-L", 224)),
    ((1024, 768, 14, 577, 24), ("CLIP ViT-L (336 px)", 336)),
    ((48, 40, 8, 17, 3), ("a CLIP vision encoder", 32)),  # tiny: 4x4 patches of 8 px
])
def test_clip_vision_from_header(tmp_path, layout, dims, want):
    hidden, proj, patch, positions, layers = dims
    path = write_sparse_safetensors(tmp_path / "model.safetensors", layout(*dims))
    enc = scan.scan_clip_vision(path).encoder
    assert (enc.hidden, enc.projection, enc.image_size, enc.layers) == (hidden, proj, want[1], layers)
    assert enc.name == want[0]


def test_encoder_serves_by_width():
    h = scan.EncoderInfo(hidden=1280, projection=1024, image_size=224, patch=14, layers=32)
    g = scan.EncoderInfo(hidden=1664, projection=1280, image_size=224, patch=14, layers=48)
    spec = {n: spec_of(n) for n in ("ip-adapter_sd15", "ip-adapter_sd15_vit-G", "ip-adapter-plus_sd15",
                                    "ip-adapter-full-face_sd15", "ip-adapter_sdxl")}
    assert [h.serves(s) for s in spec.values()] == [True, False, True, True, False]
    assert [g.serves(s) for s in spec.values()] == [False, True, False, False, True]


def test_adapter_in_the_clip_vision_folder_is_named(tmp_path):
    path = write_sparse_safetensors(tmp_path / "a.safetensors", published_shapes("ip-adapter_sd15"))
    result = scan.scan_clip_vision(path)
    assert result.encoder is None and "models/ipadapter" in result.problem


# ---------------------------------------------------------------------------------------------- cache

def test_cache_reads_once_and_rescans_on_change(tmp_path, monkeypatch):
    path = write_sparse_safetensors(tmp_path / "a.safetensors", published_shapes("ip-adapter_sd15"))
    calls = []
    real = scan.read_tensor_shapes
    monkeypatch.setattr(scan, "read_tensor_shapes", lambda p: calls.append(p) or real(p))
    first = scan.scan_adapter(path)
    assert scan.scan_adapter(path) is first and len(calls) == 1
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = scan.scan_adapter(path)
    assert len(calls) == 2 and again.spec == first.spec
    write_sparse_safetensors(path, published_shapes("ip-adapter-plus_sd15"))  # replaced by another variant
    assert scan.scan_adapter(path).spec.kind == "plus" and len(calls) == 3


# ---------------------------------------------------------------------------------------------- choosing

def spec_of(name):
    image_proj, ip_adapter = published(name)
    from ip_adapter_core import detect_spec

    return detect_spec(image_proj, ip_adapter)


H_ENC = scan.EncoderInfo(hidden=1280, projection=1024, image_size=224, patch=14, layers=32)
G_ENC = scan.EncoderInfo(hidden=1664, projection=1280, image_size=224, patch=14, layers=48)


def adapters(*pairs, folder="/m/ipadapter"):
    return [scan.Found(name=n, folder=folder, path=f"{folder}/{n}", scan=scan.AdapterScan(spec_of(v)))
            for n, v in pairs]


def encoders(*pairs, folder="/m/clip_vision"):
    return [scan.Found(name=n, folder=folder, path=f"{folder}/{n}", scan=scan.EncoderScan(e)) for n, e in pairs]


def choose(preset, ads, encs, family="sd15", **kw):
    fits = (lambda s: None if s.family == family else f"for {s.family}")
    return scan.choose(preset, ads, encs, fits_model=fits, model_label=f"{family} test model", family=family,
                       adapter_folders=sorted({a.folder for a in ads}) or ["/m/ipadapter"],
                       encoder_folders=sorted({e.folder for e in encs}) or ["/m/clip_vision"], **kw)


ALL_SD15 = adapters(("a.safetensors", "ip-adapter_sd15_vit-G"), ("b.safetensors", "ip-adapter-plus_sd15"),
                    ("c.safetensors", "ip-adapter_sd15"), ("d.safetensors", "ip-adapter-full-face_sd15"),
                    ("e.safetensors", "ip-adapter-plus_sdxl_vit-h"))
BOTH_ENCODERS = encoders(("model.safetensors", H_ENC), ("other.safetensors", G_ENC))


@pytest.mark.parametrize("preset, want_file, want_encoder", [
    ("standard", "c.safetensors", "model.safetensors"),
    ("light", "c.safetensors", "model.safetensors"),
    ("vit-G", "a.safetensors", "other.safetensors"),
    ("plus", "b.safetensors", "model.safetensors"),
    ("plus face", "b.safetensors", "model.safetensors"),
    ("composition", "b.safetensors", "model.safetensors"),
    ("full face", "d.safetensors", "model.safetensors"),
])
def test_preset_picks_by_variant_whatever_the_names(preset, want_file, want_encoder):
    got = choose(preset, ALL_SD15, BOTH_ENCODERS)
    assert (got.adapter.name, got.encoder.name) == (want_file, want_encoder)


def test_sdxl_model_takes_the_sdxl_adapter():
    got = choose("plus", ALL_SD15, BOTH_ENCODERS, family="sdxl")
    assert got.adapter.name == "e.safetensors" and not got.others


def test_identical_tensors_are_ordered_by_preset_words_then_format_then_name():
    ads = adapters(("ip-adapter-plus-face_sd15.safetensors", "ip-adapter-plus-face_sd15"),
                   ("ip-adapter-plus_sd15.bin", "ip-adapter-plus_sd15"),
                   ("ip-adapter-plus_sd15.safetensors", "ip-adapter-plus_sd15"),
                   ("ip_plus_composition_sd15.safetensors", "ip_plus_composition_sd15"))
    encs = encoders(("h.safetensors", H_ENC))
    assert choose("plus", ads, encs).adapter.name == "ip-adapter-plus_sd15.safetensors"
    assert choose("plus face", ads, encs).adapter.name == "ip-adapter-plus-face_sd15.safetensors"
    assert choose("composition", ads, encs).adapter.name == "ip_plus_composition_sd15.safetensors"
    got = choose("plus", ads, encs)
    assert got.same_tensors and len(got.others) == 3


def test_no_encoder_for_the_adapter_is_explained():
    with pytest.raises(InputError) as e:
        choose("plus", adapters(("b.safetensors", "ip-adapter-plus_sd15")), encoders(("g.safetensors", G_ENC)))
    msg = str(e.value)
    assert "1280-wide hidden states" in msg and "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in msg
    assert "    g.safetensors: CLIP ViT-bigG" in msg


def test_nothing_fits_lists_every_folder_file_and_what_to_put_where():
    ads = adapters(("x.safetensors", "ip-adapter_sd15")) + adapters(
        ("y.safetensors", "ip-adapter-plus_sd15"), folder="/extra/ipadapter")
    broken = scan.Found(name="z.bin", folder="/extra/ipadapter", path="/extra/ipadapter/z.bin",
                        scan=scan.AdapterScan(None, "'z.bin' is truncated"))
    with pytest.raises(InputError) as e:
        scan.choose("plus", ads + [broken], encoders(("h.safetensors", H_ENC)), fits_model=lambda s: "for sd15",
                    model_label="SDXL, 11 cross-attention layers", family="sdxl",
                    adapter_folders=["/m/ipadapter", "/extra/ipadapter", "/empty"], encoder_folders=["/m/clip_vision"])
    msg = str(e.value)
    assert "preset 'plus'" in msg and "SDXL, 11 cross-attention layers" in msg
    assert "- /m/ipadapter:\n    x.safetensors: Base, SD1.5, 4 tokens, needs CLIP ViT-H: not a Plus adapter\n" in msg
    assert "\n    y.safetensors: Plus, SD1.5, 16 tokens, needs CLIP ViT-H: for sd15\n" in msg
    assert "\n    z.bin: not usable: 'z.bin' is truncated\n" in msg
    assert "- /empty: no model files\n" in msg
    assert "put ip-adapter-plus_sdxl_vit-h.safetensors in /m/ipadapter" in msg
    assert "put CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors in /m/clip_vision" in msg


def test_sd15_only_presets_on_sdxl_say_none_is_published():
    with pytest.raises(InputError, match="none is published for SDXL"):
        choose("light", ALL_SD15, BOTH_ENCODERS, family="sdxl")
    with pytest.raises(InputError, match="none is published for SDXL"):
        choose("full face", ALL_SD15, BOTH_ENCODERS, family="sdxl")


def test_any_takes_the_only_fitting_file_and_pinned_ignores_the_preset():
    got = choose("any", ALL_SD15, BOTH_ENCODERS, family="sdxl")
    assert got.adapter.name == "e.safetensors" and got.others == ()
    got = choose("vit-G", adapters(("p.safetensors", "ip-adapter-plus_sd15")), BOTH_ENCODERS, pinned=True)
    assert got.adapter.name == "p.safetensors"


def test_presets_are_the_public_combo():
    # the SD image adapters' presets keep their places; the FaceID family's are appended
    assert list(scan.PRESETS) == ["standard", "light", "vit-G", "plus", "plus face", "full face", "composition", "any",
                                  "faceid", "faceid plus", "faceid plus v2", "faceid portrait", "faceid portrait unnorm"]
