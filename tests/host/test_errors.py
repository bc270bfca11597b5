"""Bad inputs fail at the node, before sampling, with a typed error (a ValueError subclass from the pack) whose
message names the node, the input, what was found and what was expected."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="module")
def errors(pack_module):
    return pack_module("ip_adapter_core.errors")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("errors")


@pytest.fixture(scope="module")
def sd15_adapter(host, make_adapter_file, folder, sd15, cv):
    return host.load_adapter(make_adapter_file(folder, "base", sd15, cv, seed=0))


@pytest.fixture(scope="module")
def image(make_image):
    return make_image(0)


def raises(errors, fn, *words, kind=None):
    """Run fn; it must raise the pack's IPAdapterError (a ValueError) whose message holds every word."""
    with pytest.raises(ValueError) as info:
        fn()
    err = info.value
    assert isinstance(err, errors.IPAdapterError), f"{type(err).__name__} is not one of the pack's typed errors: {err}"
    if kind is not None:
        assert isinstance(err, getattr(errors, kind)), f"expected {kind}, got {type(err).__name__}: {err}"
    msg = str(err)
    missing = [w for w in words if w not in msg]
    assert not missing, f"{missing} not in the message: {msg}"
    return msg


def apply_node(run_node, model, adapter, **kw):
    inputs = dict(model=model, ipadapter=adapter, weight=1.0, start_at=0.0, end_at=1.0)
    inputs.update(kw)
    return lambda: run_node("IPA_Apply", **inputs)


# --------------------------------------------------------------------------------------------- model family

def test_sd15_adapter_on_sdxl_model(errors, run_node, sdxl, sd15_adapter, cv, image):
    msg = raises(errors, apply_node(run_node, sdxl, sd15_adapter, image=image, clip_vision=cv),
                 "IPA Apply", "'model'", "SD1.5 (768)", "SDXL (2048)", "SDXL adapter", kind="IncompatibleError")
    assert sd15_adapter.name in msg


def test_sdxl_adapter_on_sd15_model(errors, host, run_node, make_adapter_file, folder, sd15, sdxl, cv, image):
    adapter = host.load_adapter(make_adapter_file(folder, "base", sdxl, cv))
    raises(errors, apply_node(run_node, sd15, adapter, image=image, clip_vision=cv),
           "IPA Apply", "'model'", "SDXL (2048)", "SD1.5 (768)", "SD1.5 adapter", kind="IncompatibleError")


def test_adapter_for_another_unet_layout(errors, host, run_node, make_adapter_file, folder, sd15, cv, image):
    adapter = host.load_adapter(make_adapter_file(folder, "base", sd15, cv, site_dims=(32,) * 16))
    raises(errors, apply_node(run_node, sd15, adapter, image=image, clip_vision=cv),
           "IPA Apply", "'model'", "16 cross-attention layers", "7", kind="IncompatibleError")


# --------------------------------------------------------------------------------------------- CLIP vision

@pytest.mark.parametrize("kind, found, expected", [("base", "32-wide image embeds", "40-wide"),
                                                   ("plus", "64-wide hidden states", "48-wide")])
def test_wrong_clip_vision_width(errors, host, run_node, make_adapter_file, make_clip_vision, folder, sd15, cv, image,
                                 kind, found, expected):
    adapter = host.load_adapter(make_adapter_file(folder, kind, sd15, cv))
    other = make_clip_vision(hidden=64, proj=32)
    raises(errors, lambda: run_node("IPA_Encode", ipadapter=adapter, clip_vision=other, image=image),
           "IPA Encode Image", "'clip_vision'", found, expected, kind="IncompatibleError")
    raises(errors, apply_node(run_node, sd15, adapter, image=image, clip_vision=other),
           "IPA Apply", "'clip_vision'", found, expected, kind="IncompatibleError")


def test_missing_clip_vision_is_a_typed_error(errors, run_node, sd15, sd15_adapter, image):
    raises(errors, apply_node(run_node, sd15, sd15_adapter, image=image),
           "IPA Apply", "'clip_vision'", "missing", kind="InputError")


# --------------------------------------------------------------------------------------------- files

def test_lora_file_in_the_ipadapter_folder(errors, run_node, ipadapter_dir):
    from safetensors.torch import save_file

    sub = ipadapter_dir / "errors_lora"
    sub.mkdir()
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)},
              str(sub / "my_lora.safetensors"))
    raises(errors, lambda: run_node("IPA_ModelLoader", ipadapter_file="errors_lora/my_lora.safetensors"),
           "IPA Load Adapter", "'ipadapter_file'", "my_lora.safetensors", "not an IP-Adapter", "LoRA",
           "image_proj", kind="NotAnIPAdapterError")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_truncated_file(errors, run_node, make_adapter_file, ipadapter_dir, sd15, cv, fmt):
    sub = ipadapter_dir / f"errors_truncated_{fmt}"
    sub.mkdir()
    path = make_adapter_file(sub, "base", sd15, cv, name=f"cut.{fmt}", fmt=fmt)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    words = ("truncated",) if fmt == "safetensors" else ("not a readable torch file",)
    raises(errors, lambda: run_node("IPA_ModelLoader", ipadapter_file=f"errors_truncated_{fmt}/cut.{fmt}"),
           "IPA Load Adapter", "'ipadapter_file'", f"cut.{fmt}", "download it again", *words, kind="CorruptFileError")


# --------------------------------------------------------------------------------------------- node inputs

def test_empty_image_batch(errors, run_node, sd15, sd15_adapter, cv):
    empty = torch.zeros(0, 32, 32, 3)
    raises(errors, lambda: run_node("IPA_Encode", ipadapter=sd15_adapter, clip_vision=cv, image=empty),
           "IPA Encode Image", "'image'", "empty", "(0, 32, 32, 3)", "at least one image", kind="InputError")
    raises(errors, apply_node(run_node, sd15, sd15_adapter, image=empty, clip_vision=cv),
           "IPA Apply", "'image'", "empty", kind="InputError")


def test_start_after_end(errors, run_node, sd15, sd15_adapter, cv, image):
    raises(errors, apply_node(run_node, sd15, sd15_adapter, start_at=0.8, end_at=0.2, image=image, clip_vision=cv),
           "IPA Apply", "start_at", "0.8", "end_at", "0.2", "<=", kind="InputError")
    raises(errors, lambda: run_node("IPA_ApplySimple", model=sd15, ipadapter=sd15_adapter, clip_vision=cv, image=image,
                                    weight=1.0, start_at=0.8, end_at=0.2),
           "IPA Apply (simple)", "start_at", "0.8", kind="InputError")


def test_embeds_from_another_adapter(errors, host, run_node, make_adapter_file, folder, sd15, sd15_adapter, cv, image):
    other = host.load_adapter(make_adapter_file(folder, "base", sd15, cv, seed=5))
    assert other.spec == sd15_adapter.spec and other is not sd15_adapter
    embeds = run_node("IPA_Encode", ipadapter=other, clip_vision=cv, image=image)[0]
    raises(errors, apply_node(run_node, sd15, sd15_adapter, embeds=embeds),
           "IPA Apply", "'embeds'", other.name, sd15_adapter.name, "same adapter", kind="IncompatibleError")


@pytest.mark.parametrize("given", ["neither", "both"])
def test_apply_needs_exactly_one_of_image_and_embeds(errors, run_node, sd15, sd15_adapter, cv, image, given):
    extra = {}
    if given == "both":
        embeds = run_node("IPA_Encode", ipadapter=sd15_adapter, clip_vision=cv, image=image)[0]
        extra = dict(image=image, clip_vision=cv, embeds=embeds)
    raises(errors, apply_node(run_node, sd15, sd15_adapter, **extra),
           "IPA Apply", "'image'", "'embeds'", given, kind="InputError")


def test_faceid_files_load_and_damaged_or_kolors_ones_are_named(errors, run_node, ipadapter_dir):
    import testkit.adapters as kit
    from testkit import faceid_adapters as fk

    sub = ipadapter_dir / "errors_faceid"
    sub.mkdir()
    fk.save_faceid(str(sub / "faceid.bin"), "faceid", ctx=768, site_dims=(32,) * 7, lora_rank=4)
    out = run_node("IPA_ModelLoader", ipadapter_file="errors_faceid/faceid.bin")
    assert out["ui"]["text"][0].startswith("FaceID") and "needs a face model" in out["ui"]["text"][0]

    image_proj, ip_adapter = kit.adapter_parts("base", ctx=768, encoder_dim=40, site_dims=(32,) * 7)
    ip_adapter["0.to_q_lora.down.weight"] = torch.zeros(4, 32)  # a FaceID LoRA key on a base projection
    kit.save_adapter(str(sub / "mixed.safetensors"), image_proj, ip_adapter)
    raises(errors, lambda: run_node("IPA_ModelLoader", ipadapter_file="errors_faceid/mixed.safetensors"),
           "IPA Load Adapter", "'ipadapter_file'", "mixed.safetensors", "FaceID", kind="NotAnIPAdapterError")

    image_proj, ip_adapter = fk.faceid_parts("faceid_plus", ctx=2048, site_dims=(64,) * 3, clip_dim=1024,
                                             heads=64, tokens=6, depth=1)
    kolors = {k: v for k, v in image_proj.items() if not k.startswith("perceiver_resampler.")}
    kolors.update({k: v for k, v in fk.faceid_parts("faceid_plus", ctx=4096, site_dims=(64,), clip_dim=1024,
                                                     depth=1, tokens=6)[0].items()
                   if k.startswith("perceiver_resampler.")})
    kit.save_adapter(str(sub / "ipa-faceid-plus.bin"), kolors, ip_adapter)
    raises(errors, lambda: run_node("IPA_ModelLoader", ipadapter_file="errors_faceid/ipa-faceid-plus.bin"),
           "IPA Load Adapter", "ipa-faceid-plus.bin", "Kolors", "not supported", kind="UnsupportedAdapterError")
