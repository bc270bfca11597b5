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


def siglip_shapes(hidden=1152, patch=14, positions=729, layers=27, intermediate=4304, head=True, text=True):
    """The header of google/siglip-so400m-patch14-384's model.safetensors (defaults): transformers' SiglipModel,
    vision tower (no class embedding, no projection; the pooling head vision_model.head.*) and text tower."""
    s = {"vision_model.embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
         "vision_model.embeddings.patch_embedding.bias": (hidden,),
         "vision_model.embeddings.position_embedding.weight": (positions, hidden),
         "vision_model.post_layernorm.weight": (hidden,), "vision_model.post_layernorm.bias": (hidden,)}
    for i in range(layers):
        s[f"vision_model.encoder.layers.{i}.layer_norm1.weight"] = (hidden,)
        s[f"vision_model.encoder.layers.{i}.self_attn.q_proj.weight"] = (hidden, hidden)
        s[f"vision_model.encoder.layers.{i}.mlp.fc1.weight"] = (intermediate, hidden)
    if head:
        s.update({"vision_model.head.probe": (1, 1, hidden),
                  "vision_model.head.attention.in_proj_weight": (3 * hidden, hidden),
                  "vision_model.head.attention.in_proj_bias": (3 * hidden,),
                  "vision_model.head.attention.out_proj.weight": (hidden, hidden),
                  "vision_model.head.layernorm.weight": (hidden,),
                  "vision_model.head.mlp.fc1.weight": (intermediate, hidden),
                  "vision_model.head.mlp.fc2.weight": (hidden, intermediate)})
    if text:
        s.update({"text_model.embeddings.token_embedding.weight": (32000, hidden),
                  "text_model.encoder.layers.0.self_attn.q_proj.weight": (hidden, hidden),
                  "text_model.head.weight": (hidden, hidden), "logit_scale": (1,), "logit_bias": (1,)})
    return s


@pytest.mark.parametrize("head", [True, False], ids=["full file", "headless"])
def test_siglip_so400m_from_header(tmp_path, head):
    """SigLIP has no class token and no projection: 729 positions are its 27 x 27 patches (384 px in 14 px patches;
    the last 6 px are dropped), not a class token plus 728. The pooling head is found in the full file."""
    path = write_sparse_safetensors(tmp_path / "siglip.safetensors", siglip_shapes(head=head))
    enc = scan.scan_clip_vision(path).encoder
    assert (enc.kind, enc.hidden, enc.projection, enc.image_size, enc.patch, enc.layers) == ("siglip", 1152, None,
                                                                                            384, 14, 27)
    assert enc.pooling_head is head and enc.name == "SigLIP so400m"
    assert ("no pooling head" in enc.describe()) is not head, enc.describe()


def test_tiny_siglip_and_clip_vit_l_from_header(tmp_path):
    tiny = scan.scan_clip_vision(write_sparse_safetensors(tmp_path / "t.safetensors",
                                                          siglip_shapes(32, 8, 16, 2, 64, text=False))).encoder
    assert (tiny.kind, tiny.hidden, tiny.image_size, tiny.pooling_head, tiny.name) == (
        "siglip", 32, 32, True, "a SigLIP vision encoder")
    # openai/clip-vit-large-patch14's model.safetensors (CLIPModel: the text tower too): 768 projection, 1024 hidden
    vit_l = hf_clip_shapes(1024, 768, 14, 257, 24)
    vit_l["text_model.embeddings.token_embedding.weight"] = (49408, 768)
    enc = scan.scan_clip_vision(write_sparse_safetensors(tmp_path / "l.safetensors", vit_l)).encoder
    assert (enc.kind, enc.name, enc.pooling_head) == ("clip", "CLIP ViT-L", False)
    # a CLIP without a projection stays a CLIP (its class token: 257 positions)
    enc = scan.scan_clip_vision(write_sparse_safetensors(tmp_path / "n.safetensors",
                                                         hf_clip_shapes(1024, None, 14, 257, 2))).encoder
    assert (enc.kind, enc.image_size) == ("clip", 224)


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


# ---------------------------------------------------------------------------------------------- Flux presets

def flux_files(tmp_path):
    """Header-only adapters of the published shapes in one folder: XLabs v1 and v2 (CLIP ViT-L, 4096 context, 19
    double blocks, 3072 hidden), InstantX (SigLIP so400m pooled, 128 tokens, 57 sites), an SD1.5 base adapter;
    names chosen to mislead."""
    from testkit.flux_adapters import xlabs_shapes
    from testkit.instantx_flux_adapters import flat_shapes

    files = {"xlabs-v2.safetensors": xlabs_shapes(tokens=4),  # named v2, is v1
             "ip_adapter.safetensors": xlabs_shapes(tokens=16),
             "ip-adapter.bin.safetensors": flat_shapes(),
             "flux-instantx.safetensors": published_shapes("ip-adapter_sd15")}
    tmp_path.mkdir(exist_ok=True)
    found = []
    for name, shapes in files.items():
        path = write_sparse_safetensors(tmp_path / name, shapes)
        found.append(scan.Found(name=name, folder=str(tmp_path), path=path, scan=scan.scan_adapter(path)))
    return found


def flux_encoders(tmp_path, *, headless_only=False):
    vit_h = hf_clip_shapes(1280, 1024, 14, 257, 32)
    vit_l = hf_clip_shapes(1024, 768, 14, 257, 24)
    files = {"a_headless_siglip.safetensors": siglip_shapes(head=False), "model.safetensors": vit_l,
             "vit-h.safetensors": vit_h}
    if not headless_only:
        files["z_siglip.safetensors"] = siglip_shapes()
    tmp_path.mkdir(exist_ok=True)
    found = []
    for name, shapes in files.items():
        path = write_sparse_safetensors(tmp_path / name, shapes)
        found.append(scan.Found(name=name, folder=str(tmp_path), path=path, scan=scan.scan_clip_vision(path)))
    return found


def flux_fits(spec):
    """What the node's check gives on FLUX.1-dev: the Flux families' files fit, SD files do not."""
    return None if spec.family == "flux" else "the model has no UNet cross-attention layers"


def choose_flux(preset, ads, encs, **kw):
    return scan.choose(preset, ads, encs, fits_model=flux_fits, model_label="Flux, 19 double + 38 single blocks",
                       family="flux", adapter_folders=sorted({a.folder for a in ads}),
                       encoder_folders=sorted({e.folder for e in encs}), **kw)


@pytest.mark.parametrize("preset, adapter, encoder", [
    ("FLUX XLabs v2", "ip_adapter.safetensors", "model.safetensors"),
    ("FLUX XLabs v1", "xlabs-v2.safetensors", "model.safetensors"),
    ("FLUX InstantX", "ip-adapter.bin.safetensors", "z_siglip.safetensors"),
])
def test_flux_presets_pick_the_adapter_and_its_encoder_by_content(tmp_path, preset, adapter, encoder):
    """XLabs v1 / v2 by their token count with CLIP ViT-L's 768-wide image embeds; InstantX with the SigLIP file
    that holds the pooling head (the headless one sorts first by name and is passed over)."""
    ads, encs = flux_files(tmp_path / "ipadapter"), flux_encoders(tmp_path / "clip_vision")
    got = choose_flux(preset, ads, encs)
    assert (got.adapter.name, got.encoder.name, got.others) == (adapter, encoder, ())


def test_instantx_with_only_a_headless_siglip_names_it(tmp_path):
    ads, encs = flux_files(tmp_path / "ipadapter"), flux_encoders(tmp_path / "clip_vision", headless_only=True)
    with pytest.raises(InputError) as e:
        choose_flux("FLUX InstantX", ads, encs)
    msg = str(e.value)
    assert "no CLIP vision file gives its 1152-wide pooled output (SigLIP so400m (pooled))" in msg
    assert "a_headless_siglip.safetensors: SigLIP without its pooling head (vision_model.head.*)" in msg
    assert ("    a_headless_siglip.safetensors: SigLIP so400m (hidden 1152, no projection, 384 px, 27 layers, "
            "no pooling head (vision_model.head.*): no pooled output)") in msg
    assert ("put siglip-so400m-patch14-384.safetensors (the full model.safetensors of "
            "google/siglip-so400m-patch14-384, with its pooling head, renamed) in") in msg
    assert "put flux-ip-adapter-instantx.bin (the ip-adapter.bin of InstantX/FLUX.1-dev-IP-Adapter, renamed)" in msg


def test_flux_nothing_fits_says_what_to_put_where(tmp_path):
    ads = [a for a in flux_files(tmp_path / "ipadapter") if a.scan.spec.adapter_family != "xlabs-flux"]
    with pytest.raises(InputError) as e:
        choose_flux("FLUX XLabs v2", ads, flux_encoders(tmp_path / "clip_vision"))
    msg = str(e.value)
    assert msg.startswith("no adapter file fits preset 'FLUX XLabs v2' and this model (Flux, 19 double + 38 single")
    assert "ip-adapter.bin.safetensors: InstantX Flux, Flux, 128 tokens" in msg and "not an XLabs Flux v2" in msg
    assert ("Needed: an XLabs Flux v2 adapter (16 tokens) for Flux, e.g. put flux-ip-adapter-v2.safetensors (the "
            "ip_adapter.safetensors of XLabs-AI/flux-ip-adapter-v2, renamed) in") in msg
    assert "its encoder CLIP ViT-L (e.g. put clip-vit-large-patch14.safetensors (the model.safetensors of" in msg


def test_flux_presets_take_only_their_family():
    from ip_adapter_core import families

    for name in ("FLUX XLabs v2", "FLUX XLabs v1"):
        assert scan.preset_family(name).name == "xlabs-flux"
    assert scan.preset_family("FLUX InstantX").name == "instantx-flux"
    assert scan.preset_family("any").name == "sd-unet" and scan.preset_family("faceid").name == "faceid"
    table = families.presets()
    sd = spec_of("ip-adapter_sd15")
    assert not any(table[p].accepts(sd) for p in ("FLUX XLabs v2", "FLUX XLabs v1", "FLUX InstantX"))


def test_a_preset_for_another_kind_of_model_is_refused_by_name():
    """An SD preset on Flux, a Flux preset on an SD model: named, with what the model is and the presets it takes."""
    scan.check_preset_for_model("FLUX InstantX", ["xlabs-flux", "instantx-flux"], "Flux, 19 double + 38 single blocks")
    scan.check_preset_for_model("standard", ["sd-unet", "faceid"], "SD1.5, 16 cross-attention layers")
    with pytest.raises(InputError) as e:
        scan.check_preset_for_model("standard", ["xlabs-flux", "instantx-flux"], "Flux, 19 double + 38 single blocks")
    assert str(e.value) == ("input 'preset': 'standard' is a preset for SD1.5 / SDXL models (a standard (base, ViT-H) "
                            "adapter), but this model is Flux, 19 double + 38 single blocks; choose a preset for it: "
                            "FLUX XLabs v2, FLUX XLabs v1, FLUX InstantX.")
    with pytest.raises(InputError) as e:
        scan.check_preset_for_model("FLUX XLabs v2", ["sd-unet", "faceid"], "SDXL, 70 cross-attention layers")
    msg = str(e.value)
    assert msg.startswith("input 'preset': 'FLUX XLabs v2' is a preset for Flux models (an XLabs Flux v2 adapter "
                          "(16 tokens)), but this model is SDXL, 70 cross-attention layers; choose a preset for it: "
                          "standard, light, vit-G,")
    assert "faceid portrait unnorm." in msg and "FLUX" not in msg.split("choose", 1)[1]
    with pytest.raises(InputError, match="'faceid' is a preset for SD1.5 / SDXL models .*no preset fits it"):
        scan.check_preset_for_model("faceid", [], "a model without UNet cross-attention layers or Flux blocks")


def test_presets_are_the_public_combo():
    # the SD image adapters' presets keep their places; the FaceID family's are appended, then the Flux families'
    assert list(scan.PRESETS) == ["standard", "light", "vit-G", "plus", "plus face", "full face", "composition", "any",
                                  "faceid", "faceid plus", "faceid plus v2", "faceid portrait",
                                  "faceid portrait unnorm", "FLUX XLabs v2", "FLUX XLabs v1", "FLUX InstantX"]
    assert list(scan.combo_presets()) == list(scan.PRESETS)
