"""IPA_UnifiedLoader on a real ComfyUI: folders registered through folder_paths, tiny adapters and tiny CLIP vision
files written by the tests, adapters and encoders picked from their tensors (file names chosen to mislead).

Each test gets its own ipadapter folders (two, like a models/ folder plus an extra_model_paths.yaml one) and
clip_vision folder, set in folder_paths for the test only, so files other test modules write elsewhere do not count.
Tiny CLIP vision files are saved with their ClipVisionModel .json config beside them (ComfyUI's own loader only
recognises full-size encoders); the node's loader falls back to that config.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

NODE = "IPA_UnifiedLoader"


@pytest.fixture
def folders(pack, tmp_path, monkeypatch):
    import folder_paths

    dirs = {k: tmp_path / k for k in ("ipadapter", "extra_ipadapter", "clip_vision")}
    for d in dirs.values():
        d.mkdir()
    exts = folder_paths.supported_pt_extensions
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter",
                        ([str(dirs["ipadapter"]), str(dirs["extra_ipadapter"])], exts))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "clip_vision", ([str(dirs["clip_vision"])], exts))
    for name in ("ipadapter", "clip_vision"):
        monkeypatch.delitem(folder_paths.filename_list_cache, name, raising=False)
    return dirs


@pytest.fixture(scope="module")
def cv_g(make_clip_vision):
    """A tiny encoder whose image embeds are 1280 wide: what a ViT-bigG base adapter (vit-G preset) reads; its hidden
    width (64) differs from the default tiny encoder's (48), so each serves different plus adapters."""
    return make_clip_vision(hidden=64, proj=1280, seed=1)


def save_clip_vision(directory, name: str, cv) -> str:
    """cv's weights as <name> plus the .json config ClipVisionModel is built from."""
    from safetensors.torch import save_file

    path = os.path.join(str(directory), name)
    save_file({k: v.contiguous() for k, v in cv.get_sd().items()}, path)
    model = cv.model.vision_model
    hidden = int(model.embeddings.patch_embedding.weight.shape[0])
    config = dict(hidden_size=hidden, intermediate_size=2 * hidden,
                  num_attention_heads=4, num_hidden_layers=3, patch_size=8, image_size=32,
                  projection_dim=int(cv.model.visual_projection.weight.shape[0]), hidden_act="gelu",
                  layer_norm_eps=1e-5, num_channels=3, model_type="clip_vision_model")
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(config, f)
    return path


@pytest.fixture
def library(folders, make_adapter_file, sd15, sdxl, cv, cv_g):
    """Misleading names: the plus adapter is called ip-adapter_sd15, the base one has a random name."""
    d = folders
    files = {
        "base": make_adapter_file(d["ipadapter"], "base", sd15, cv, name="zz_random.safetensors"),
        "plus": make_adapter_file(d["extra_ipadapter"], "plus", sd15, cv, name="ip-adapter_sd15.safetensors"),
        "vitg": make_adapter_file(d["ipadapter"], "base", sd15, cv_g, name="mine.bin", fmt="bin"),
        "sdxl": make_adapter_file(d["ipadapter"], "base", sdxl, cv, name="ip-adapter-plus_sd15.safetensors"),
        "enc": save_clip_vision(d["clip_vision"], "model.safetensors", cv),
        "enc_g": save_clip_vision(d["clip_vision"], "ip-adapter_sdxl.safetensors", cv_g),
    }
    return files


def run(run_node, model, preset, **kw):
    out = run_node(NODE, model=model, preset=preset, **kw)
    model_out, adapter, clip_vision = out["result"]
    assert model_out is model, "the model must pass through unchanged"
    return adapter, clip_vision, out["ui"]["text"]


@pytest.mark.parametrize("preset, model_name, adapter_key, encoder_key", [
    ("standard", "sd15", "base", "enc"),
    ("plus", "sd15", "plus", "enc"),
    ("vit-G", "sd15", "vitg", "enc_g"),
    ("standard", "sdxl", "sdxl", "enc"),
    ("any", "sdxl", "sdxl", "enc"),
])
def test_preset_picks_by_content(run_node, host, library, request, preset, model_name, adapter_key, encoder_key):
    model = request.getfixturevalue(model_name)
    adapter, clip_vision, text = run(run_node, model, preset)
    assert adapter is host.load_adapter(library[adapter_key])
    assert clip_vision is host.load_clip_vision(library[encoder_key])
    assert os.path.basename(library[adapter_key]) in text[0] and adapter.spec.describe() in text[0]


def test_loaded_encoder_equals_the_model_it_was_saved_from(run_node, library, sd15, cv, make_image):
    _, clip_vision, _ = run(run_node, sd15, "standard")
    image = make_image(0)
    got, want = clip_vision.encode_image(image), cv.encode_image(image)
    assert torch.equal(got["image_embeds"], want["image_embeds"])
    assert torch.equal(got["penultimate_hidden_states"], want["penultimate_hidden_states"])


def test_outputs_feed_the_apply_nodes(run_node, library, sd15, make_image, sample, attn2_patches, host):
    model, adapter, clip_vision = run_node(NODE, model=sd15, preset="plus")["result"]
    patched = run_node("IPA_ApplySimple", model=model, ipadapter=adapter, clip_vision=clip_vision,
                       image=make_image(0), weight=1.0, start_at=0.0, end_at=1.0)[0]
    assert set(attn2_patches(patched)) == {s.key for s in host.model_sites(sd15)}


def test_no_full_face_lists_what_was_found(run_node, pack_module, library, folders, sd15):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError) as e:
        run_node(NODE, model=sd15, preset="full face")
    msg = str(e.value)
    assert msg.startswith("IPA Unified Loader: no adapter file fits preset 'full face'")
    assert f"- {folders['ipadapter']}:\n" in msg and f"- {folders['extra_ipadapter']}:\n" in msg
    assert "\n    zz_random.safetensors: Base, SD1.5, 4 tokens" in msg and "not a Full face adapter" in msg
    assert "\n    ip-adapter-plus_sd15.safetensors: Base, SDXL" in msg  # named plus sd15, the tensors say otherwise
    assert f"put ip-adapter-full-face_sd15.safetensors in {folders['ipadapter']}" in msg
    assert f"put CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors in {folders['clip_vision']}" in msg


def test_missing_encoder_is_named(run_node, pack_module, library, sd15):
    os.remove(library["enc"])
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError, match="no CLIP vision file gives its 48-wide hidden states"):
        run_node(NODE, model=sd15, preset="plus")


def test_headers_are_read_once_and_again_after_a_change(run_node, pack_module, library, sd15, monkeypatch):
    scan = pack_module("ip_adapter_core.scan")
    run(run_node, sd15, "standard")  # warm
    calls = []
    real = scan.read_tensor_shapes
    monkeypatch.setattr(scan, "read_tensor_shapes", lambda p: calls.append(os.path.basename(p)) or real(p))
    run(run_node, sd15, "plus")
    assert calls == [], f"unchanged files were read again: {calls}"
    st = os.stat(library["plus"])
    os.utime(library["plus"], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    adapter, _, _ = run(run_node, sd15, "plus")
    assert calls == ["ip-adapter_sd15.safetensors"]
    assert adapter.spec.kind == "plus"


def test_pinned_files(run_node, host, library, sd15, pack_module):
    adapter, clip_vision, text = run(run_node, sd15, "plus", ipadapter_file="zz_random.safetensors",
                                     clip_vision_file="model.safetensors")
    assert adapter is host.load_adapter(library["base"]) and "pinned" in text[-1]
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError, match="pinned ipadapter_file does not fit"):
        run_node(NODE, model=sd15, preset="standard", ipadapter_file="ip-adapter-plus_sd15.safetensors")
    with pytest.raises(errors.InputError, match="48-wide hidden states"):
        run_node(NODE, model=sd15, preset="plus", clip_vision_file="ip-adapter_sdxl.safetensors")


def test_several_fitting_files_are_reported(run_node, make_adapter_file, library, folders, sd15, cv):
    make_adapter_file(folders["extra_ipadapter"], "base", sd15, cv, name="another.bin", fmt="bin", seed=3)
    adapter, _, text = run(run_node, sd15, "standard")
    assert os.path.basename(library["base"]) in text[0]  # .safetensors before .bin
    assert "another.bin" in text[1]


def test_combo_lists_auto_and_the_files(pack, library):
    cls = pack.NODE_CLASS_MAPPINGS[NODE]
    spec = cls.INPUT_TYPES()
    assert spec["required"]["preset"][0] == ["standard", "light", "vit-G", "plus", "plus face", "full face",
                                             "composition", "any", "faceid", "faceid plus", "faceid plus v2",
                                             "faceid portrait", "faceid portrait unnorm",
                                             "FLUX XLabs v2", "FLUX XLabs v1", "FLUX InstantX"]  # appended only
    files = spec["optional"]["ipadapter_file"][0]
    assert files[0] == "auto" and {"zz_random.safetensors", "ip-adapter_sd15.safetensors", "mine.bin"} <= set(files)
    assert spec["optional"]["clip_vision_file"][0] == ["auto", "ip-adapter_sdxl.safetensors", "model.safetensors"]



def test_is_changed_follows_the_folders(pack, library, folders, make_adapter_file, sd15, cv):
    cls = pack.NODE_CLASS_MAPPINGS[NODE]
    first = cls.IS_CHANGED(preset="standard")
    assert cls.IS_CHANGED(preset="standard") == first
    path = make_adapter_file(folders["extra_ipadapter"], "full_face", sd15, cv, name="new.safetensors")
    second = cls.IS_CHANGED(preset="standard")
    assert second != first
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cls.IS_CHANGED(preset="standard") != second


def test_a_dangling_link_in_the_folder_is_listed_not_fatal(run_node, pack, host, library, folders, sd15):
    (folders["ipadapter"] / "broken.safetensors").symlink_to(folders["ipadapter"] / "nowhere.safetensors")
    assert pack.NODE_CLASS_MAPPINGS[NODE].IS_CHANGED(preset="standard")
    adapter, _, _ = run(run_node, sd15, "standard")
    assert adapter is host.load_adapter(library["base"])


def test_same_tensor_preset_without_a_name_hint_says_so(run_node, host, library, sd15):
    adapter, _, text = run(run_node, sd15, "plus face")  # only plus file: named ip-adapter_sd15.safetensors
    assert adapter is host.load_adapter(library["plus"])
    assert any("'plus face' adapters have the same tensors" in line for line in text), text
    _, _, text = run(run_node, sd15, "plus")
    assert len(text) == 1, text


def to_open_clip(sd: dict) -> dict:
    """The open_clip ``visual.*`` layout of a transformers-layout CLIP vision state dict (the inverse of ComfyUI's
    clip_vision.convert_to_transformers)."""
    direct = {"vision_model.embeddings.class_embedding": "visual.class_embedding",
              "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
              "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
              "vision_model.post_layernorm.weight": "visual.ln_post.weight",
              "vision_model.post_layernorm.bias": "visual.ln_post.bias",
              "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
              "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias"}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    out = {}
    for k, v in sd.items():
        if k in direct:
            out[direct[k]] = v
        elif k == "visual_projection.weight":
            out["visual.proj"] = v.t().contiguous()
        elif k.startswith("vision_model.encoder.layers."):
            i, rest = k[len("vision_model.encoder.layers."):].split(".", 1)
            name, leaf = rest.rsplit(".", 1)
            if name in parts:
                out[f"visual.transformer.resblocks.{i}.{parts[name]}.{leaf}"] = v
            elif name == "self_attn.q_proj":
                qkv = [sd[f"vision_model.encoder.layers.{i}.self_attn.{p}_proj.{leaf}"] for p in "qkv"]
                out[f"visual.transformer.resblocks.{i}.attn.in_proj_{leaf}"] = torch.cat(qkv)
            else:
                assert name in ("self_attn.k_proj", "self_attn.v_proj"), k
        else:
            raise AssertionError(f"unmapped key {k}")
    return out


def test_open_clip_layout_encoder_is_found_and_loaded(run_node, pack_module, library, folders, sd15, cv, make_image):
    from safetensors.torch import save_file

    os.remove(library["enc"])
    path = str(folders["clip_vision"] / "open_clip_model.safetensors")
    save_file(to_open_clip(cv.get_sd()), path)
    os.rename(os.path.splitext(library["enc"])[0] + ".json", os.path.splitext(path)[0] + ".json")
    enc = pack_module("ip_adapter_core.scan").scan_clip_vision(path).encoder
    assert (enc.hidden, enc.projection, enc.image_size, enc.layers) == (48, 40, 32, 3)
    _, clip_vision, text = run(run_node, sd15, "plus")
    assert "open_clip_model.safetensors" in text[0]
    image = make_image(1)
    assert torch.equal(clip_vision.encode_image(image)["penultimate_hidden_states"],
                       cv.encode_image(image)["penultimate_hidden_states"])


# ---------------------------------------------------------------------------------------------- Flux presets
# A Flux model of ComfyUI's own classes at the stand-ins' widths (testkit/flux_standins.py: hidden 128, 2 double + 1
# single blocks, context 64), tiny XLabs v1 / v2 and InstantX files sized for it, the tiny CLIP vision (40-wide
# image embeds) and two tiny SigLIP files (32 wide, one with its pooling head vision_model.head.*, one without), next
# to the SD files of the `library` fixture, under misleading names.

@pytest.fixture(scope="module")
def flux(comfy_nodes):
    import comfy.model_management as mm
    import comfy.model_patcher

    from testkit.flux_standins import comfy_flux_model

    return comfy.model_patcher.ModelPatcher(comfy_flux_model(), load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def save_siglip(directory, name: str, *, head: bool, seed: int) -> str:
    """A tiny SigLIP vision encoder (transformers' key names, with or without its pooling head) and its .json."""
    from safetensors.torch import save_file

    from testkit.flux_standins import SIGLIP_CONFIG, siglip_state_dict

    path = os.path.join(str(directory), name)
    save_file(siglip_state_dict(seed=seed, head=head), path)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(SIGLIP_CONFIG, f)
    return path


@pytest.fixture
def flux_library(library, folders, cv):
    from testkit.flux_adapters import write_xlabs
    from testkit.flux_standins import CONTEXT, DOUBLE, HIDDEN, SIGLIP_CONFIG, SINGLE
    from testkit.instantx_flux_adapters import write_instantx

    d = folders
    proj = int(cv.model.visual_projection.weight.shape[0])
    files = dict(library)
    files.update({
        "xlabs_v2": write_xlabs(str(d["ipadapter"] / "ip_adapter.safetensors"), tokens=16, clip_dim=proj, ctx=CONTEXT,
                                hidden=HIDDEN, blocks=DOUBLE, seed=1),
        "xlabs_v1": write_xlabs(str(d["extra_ipadapter"] / "flux-ip-adapter-v2.safetensors"), tokens=4,
                                clip_dim=proj, ctx=CONTEXT, hidden=HIDDEN, blocks=DOUBLE, seed=2),
        "instantx": write_instantx(str(d["ipadapter"] / "ip-adapter.bin"), seed=3, tokens=4,
                                   enc=SIGLIP_CONFIG["hidden_size"], ctx=CONTEXT, hidden=HIDDEN, sites=DOUBLE + SINGLE),
        "siglip": save_siglip(d["clip_vision"], "z_siglip.safetensors", head=True, seed=4),
        "siglip_headless": save_siglip(d["clip_vision"], "a_siglip_vision_only.safetensors", head=False, seed=5),
    })
    return files


@pytest.fixture
def comfy_finds_the_tiny_siglip(monkeypatch, flux_library):
    """ComfyUI's own loader (comfy.clip_vision.load) recognises the published SigLIP so400m by its layer count and
    drops its pooling head; it knows no tiny SigLIP. This stands in for that recognition on the tiny files, so the
    pack's loader gets the same model it gets for so400m (its .json fallback expects every key of the file to fit
    ComfyUI's model, and the head has no place there)."""
    import comfy.clip_vision
    import comfy.utils

    real = comfy.clip_vision.load
    tiny = {os.path.realpath(flux_library[k]) for k in ("siglip", "siglip_headless")}

    def load(path):
        if os.path.realpath(path) not in tiny:
            return real(path)
        model = comfy.clip_vision.ClipVisionModel(os.path.splitext(path)[0] + ".json")
        sd = comfy.utils.load_torch_file(path, safe_load=True)
        missing, _ = model.load_sd({k: v for k, v in sd.items() if not k.startswith("vision_model.head.")})
        assert not missing, missing
        return model

    monkeypatch.setattr(comfy.clip_vision, "load", load)


@pytest.mark.parametrize("preset, adapter_key, encoder_key", [
    ("FLUX XLabs v2", "xlabs_v2", "enc"),
    ("FLUX XLabs v1", "xlabs_v1", "enc"),
    ("FLUX InstantX", "instantx", "siglip"),
])
def test_flux_preset_picks_the_adapter_and_its_encoder(run_node, host, flux, flux_library,
                                                       comfy_finds_the_tiny_siglip, preset, adapter_key, encoder_key):
    """On a Flux model each Flux preset takes its file (XLabs v1 / v2 by token count, whatever the names say) and the
    encoder that gives what it reads: CLIP image embeds for XLabs, for InstantX the SigLIP file with the pooling
    head (not the headless one, which sorts first by name)."""
    adapter, clip_vision, text = run(run_node, flux, preset)
    assert adapter is host.load_adapter(flux_library[adapter_key])
    assert clip_vision is host.load_clip_vision(flux_library[encoder_key])
    assert os.path.basename(flux_library[adapter_key]) in text[0] and adapter.spec.describe() in text[0]
    assert len(text) == 1, text


def test_flux_preset_outputs_encode_and_apply(run_node, host, flux, flux_library, comfy_finds_the_tiny_siglip,
                                              make_image):
    """What FLUX InstantX loads works together: IPA Encode Image reads SigLIP's pooled output through the head in the
    chosen file, and IPA Apply patches every double and single block of the Flux model."""
    model, adapter, clip_vision = run_node(NODE, model=flux, preset="FLUX InstantX")["result"]
    embeds = run_node("IPA_Encode", ipadapter=adapter, clip_vision=clip_vision, image=make_image(2))[0]
    assert embeds.cond.shape == (1, 4, 64)
    patched = run_node("IPA_Apply", model=model, ipadapter=adapter, embeds=embeds, weight=0.7, start_at=0.0,
                       end_at=1.0)[0]
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", 0), ("double_block", 1), ("single_block", 0)}


def test_sd_preset_on_flux_and_flux_preset_on_sd_are_refused_by_name(run_node, pack_module, flux, sd15,
                                                                      flux_library):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError) as e:
        run_node(NODE, model=flux, preset="standard")
    assert str(e.value) == ("IPA Unified Loader: input 'preset': 'standard' is a preset for SD1.5 / SDXL models (a "
                            "standard (base, ViT-H) adapter), but this model is Flux, 2 double + 1 single blocks; "
                            "choose a preset for it: FLUX XLabs v2, FLUX XLabs v1, FLUX InstantX.")
    with pytest.raises(errors.InputError, match=r"'faceid' is a preset for SD1\.5 / SDXL models .* this model is Flux"):
        run_node(NODE, model=flux, preset="faceid")
    for preset in ("FLUX XLabs v2", "FLUX InstantX"):
        with pytest.raises(errors.InputError) as e:
            run_node(NODE, model=sd15, preset=preset)
        msg = str(e.value)
        assert msg.startswith(f"IPA Unified Loader: input 'preset': '{preset}' is a preset for Flux models (")
        assert "but this model is SD1.5, " in msg and "choose a preset for it: standard, light," in msg


def test_flux_presets_with_missing_files_say_what_to_put_where(run_node, pack_module, flux, flux_library, folders):
    errors = pack_module("ip_adapter_core.errors")
    os.remove(flux_library["siglip"])  # only the SigLIP without its pooling head is left
    with pytest.raises(errors.InputError) as e:
        run_node(NODE, model=flux, preset="FLUX InstantX")
    msg = str(e.value)
    assert msg.startswith("IPA Unified Loader: no adapter file fits preset 'FLUX InstantX' and this model (Flux, 2 "
                          "double + 1 single blocks)")
    assert ("no CLIP vision file gives its 32-wide pooled output (a SigLIP vision model with a 32-wide pooled "
            "output); a_siglip_vision_only.safetensors: SigLIP without its pooling head (vision_model.head.*)") in msg
    assert ("\n    a_siglip_vision_only.safetensors: a SigLIP vision encoder (hidden 32, no projection, 32 px, 2 "
            "layers, no pooling head") in msg
    assert "\n    zz_random.safetensors: Base, SD1.5, 4 tokens, needs a CLIP vision model with 40-wide image embeds: " \
           "not an InstantX Flux adapter" in msg
    assert (f"put siglip-so400m-patch14-384.safetensors (the full model.safetensors of "
            f"google/siglip-so400m-patch14-384, with its pooling head, renamed) in {folders['clip_vision']}") in msg
    os.remove(flux_library["xlabs_v2"])
    with pytest.raises(errors.InputError) as e:
        run_node(NODE, model=flux, preset="FLUX XLabs v2")
    msg = str(e.value)
    assert "flux-ip-adapter-v2.safetensors: XLabs Flux v1, Flux, 4 tokens" in msg and "not an XLabs Flux v2" in msg
    assert (f"put flux-ip-adapter-v2.safetensors (the ip_adapter.safetensors of XLabs-AI/flux-ip-adapter-v2, renamed) "
            f"in {folders['ipadapter']}") in msg


def test_pinned_sd_adapter_on_flux_says_why(run_node, pack_module, flux, flux_library):
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError) as e:
        run_node(NODE, model=flux, preset="standard", ipadapter_file="zz_random.safetensors")
    msg = str(e.value)
    assert "pinned ipadapter_file does not fit this model (Flux, 2 double + 1 single blocks)" in msg
    assert "zz_random.safetensors: Base, SD1.5, 4 tokens, needs a CLIP vision model with 40-wide image embeds: the " \
           "model has no UNet cross-attention layers" in msg


def test_xlabs_on_sd_is_not_taken_by_any(run_node, host, sd15, flux_library):
    """'any' on an SD model takes SD files only: the Flux files in the same folders are listed as not fitting."""
    adapter, _, _ = run(run_node, sd15, "any")
    assert adapter.spec.adapter_family == "sd-unet"


def test_the_help_page_lists_the_flux_presets(pack):
    page = open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "web",
                             "docs", "IPA_UnifiedLoader.md"), encoding="utf-8").read()
    for preset in ("FLUX XLabs v2", "FLUX XLabs v1", "FLUX InstantX"):
        assert f"`{preset}`" in page, preset
