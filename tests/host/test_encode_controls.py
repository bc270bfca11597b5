"""Encode-side controls: uncond modes and negative image, combining images, embeds saved and loaded as safetensors."""
from __future__ import annotations

import os

import pytest
import torch

SETTINGS = dict(weight=1.0, start_at=0.0, end_at=1.0)


@pytest.fixture(scope="module")
def adapters(make_adapter_file, host, sd15, cv, tmp_path_factory):
    d = tmp_path_factory.mktemp("encode_controls")
    return {kind: host.load_adapter(make_adapter_file(d, kind, sd15, cv, seed=10 + i))
            for i, kind in enumerate(("base", "plus", "full_face"))}


def encode(run_node, adapter, cv, image, **kw):
    return run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image, **kw)[0]


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_reference_uncond_is_the_default_and_unchanged(adapters, cv, run_node, make_image, pack_module, kind):
    adapter, image = adapters[kind], make_image(1)
    default = encode(run_node, adapter, cv, image)
    explicit = encode(run_node, adapter, cv, image, uncond="reference")
    assert torch.equal(default.uncond, explicit.uncond) and torch.equal(default.cond, explicit.cond)
    # the reference rule, by hand: zero embedding (base) / zero normalised pixels (plus)
    host = pack_module("nodes.patch.host")
    with torch.no_grad():
        raw = (torch.zeros(1, adapter.spec.encoder_dim) if kind == "base" else host.encode_zero_pixels(cv))
        assert torch.equal(default.uncond, adapter.model.project(raw).float())


@pytest.mark.parametrize("kind", ["plus", "full_face"])
def test_black_image_uncond_is_a_black_picture_through_comfyui_preprocessing(adapters, cv, run_node, make_image,
                                                                             pack_module, kind):
    adapter, image = adapters[kind], make_image(2)
    reference = encode(run_node, adapter, cv, image)
    black = encode(run_node, adapter, cv, image, uncond="black image")
    assert torch.equal(black.cond, reference.cond)
    assert not torch.allclose(black.uncond, reference.uncond, atol=1e-4)
    size = int(cv.image_size)
    with torch.no_grad():
        by_hand = adapter.model.project(cv.encode_image(torch.zeros(1, size, size, 3))["penultimate_hidden_states"])
    assert torch.equal(black.uncond, by_hand.float())


def test_black_image_for_base_adapters_is_the_zero_embedding(adapters, cv, run_node, make_image):
    image = make_image(3)
    assert torch.equal(encode(run_node, adapters["base"], cv, image, uncond="black image").uncond,
                       encode(run_node, adapters["base"], cv, image).uncond)


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_negative_image_becomes_the_uncond_averaged_over_its_batch(adapters, cv, run_node, make_image, kind):
    adapter, image = adapters[kind], make_image(4)
    noise = run_node("IPA_NoiseImage", width=40, height=40, batch=2, seed=5, type="fade", strength=1.0)[0]
    assert noise.shape == (2, 40, 40, 3)
    plain = encode(run_node, adapter, cv, image)
    negative = encode(run_node, adapter, cv, image, negative_image=noise, uncond="black image")
    assert torch.equal(negative.cond, plain.cond)
    assert not torch.allclose(negative.uncond, plain.uncond, atol=1e-4)
    each = encode(run_node, adapter, cv, noise).cond
    assert negative.uncond.shape == plain.uncond.shape
    assert torch.allclose(negative.uncond, each.mean(0, keepdim=True), atol=1e-6)


def test_noise_image_is_seeded_and_keeps_a_reference_shape(run_node, make_image):
    args = dict(width=32, height=24, batch=1, seed=3, strength=0.5)
    for kind in ("fade", "dissolve", "gaussian"):
        a = run_node("IPA_NoiseImage", type=kind, **args)[0]
        assert a.shape == (1, 24, 32, 3) and torch.equal(a, run_node("IPA_NoiseImage", type=kind, **args)[0])
        assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    ref = make_image(6, batch=2, channels=4)
    shuffled = run_node("IPA_NoiseImage", type="shuffle", image=ref, **args)[0]
    assert shuffled.shape == (2, 40, 36, 3)
    assert torch.equal(shuffled.reshape(2, -1, 3).sort(dim=1).values, ref[..., :3].reshape(2, -1, 3).sort(dim=1).values)
    with pytest.raises(ValueError, match="IPA Noise Image: type 'shuffle'.*'image'"):
        run_node("IPA_NoiseImage", type="shuffle", **args)


def test_combine_concat_is_the_default_and_average_of_identical_images_is_one_image(adapters, cv, run_node,
                                                                                    make_image, sd15, sample):
    adapter = adapters["plus"]
    two = make_image(7, batch=2)
    embeds = encode(run_node, adapter, cv, two)
    concat = run_node("IPA_CombineEmbeds", embeds=embeds, method="concat")[0]
    assert torch.equal(concat.cond, embeds.cond) and torch.equal(concat.uncond, embeds.uncond)
    out = lambda e: sample(run_node("IPA_Apply", model=sd15, ipadapter=adapter, embeds=e, **SETTINGS)[0], steps=2)
    assert torch.equal(out(concat), out(embeds))

    one = make_image(8)
    same = encode(run_node, adapter, cv, one.expand(2, -1, -1, -1).contiguous())
    average = run_node("IPA_CombineEmbeds", embeds=same, method="average", image_weights="1, 1")[0]
    single = encode(run_node, adapter, cv, one)
    assert average.cond.shape == single.cond.shape
    assert torch.allclose(average.cond, single.cond, atol=1e-6)
    with pytest.raises(ValueError, match="IPA Combine Embeds: 'concat' does not take image weights"):
        run_node("IPA_CombineEmbeds", embeds=embeds, method="concat", image_weights="1, 0.5")


def test_save_load_apply_is_bit_identical_and_one_folder_is_used(adapters, cv, run_node, make_image, sd15, sample,
                                                                 output_dir, comfy_nodes):
    adapter = adapters["plus"]
    embeds = encode(run_node, adapter, cv, make_image(9, batch=2), uncond="black image")
    saved = run_node("IPA_SaveEmbeds", embeds=embeds, filename_prefix="faces/ännä")
    name = "faces/ännä_00001.safetensors"
    assert saved["ui"]["text"] == [f"ipadapter_embeds/{name}"]
    assert os.path.isfile(os.path.join(output_dir, "ipadapter_embeds", "faces", "ännä_00001.safetensors"))
    run_node("IPA_SaveEmbeds", embeds=embeds, filename_prefix="faces/ännä")
    choices = comfy_nodes.NODE_CLASS_MAPPINGS["IPA_LoadEmbeds"].INPUT_TYPES()["required"]["embeds_file"][0]
    assert name in choices and "faces/ännä_00002.safetensors" in choices

    loaded = run_node("IPA_LoadEmbeds", embeds_file=name)[0]
    assert torch.equal(loaded.cond, embeds.cond) and torch.equal(loaded.uncond, embeds.uncond)
    out = lambda e: sample(run_node("IPA_Apply", model=sd15, ipadapter=adapter, embeds=e, **SETTINGS)[0], steps=2)
    assert torch.equal(out(loaded), out(embeds))

    with pytest.raises(ValueError, match="IPA Apply.*'embeds'.*same adapter") as e:
        run_node("IPA_Apply", model=sd15, ipadapter=adapters["full_face"], embeds=loaded, **SETTINGS)
    assert type(e.value).__name__ == "IncompatibleError"


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/abs", "a/../../b"])
def test_save_refuses_names_outside_the_embeds_folder(adapters, cv, run_node, make_image, output_dir, prefix):
    embeds = encode(run_node, adapters["base"], cv, make_image(10))
    with pytest.raises(ValueError, match="IPA Save Embeds: input 'filename_prefix'") as e:
        run_node("IPA_SaveEmbeds", embeds=embeds, filename_prefix=prefix)
    assert type(e.value).__name__ == "InputError"


def test_load_refuses_a_file_that_is_not_embeds(run_node, output_dir):
    from safetensors.torch import save_file

    folder = os.path.join(output_dir, "ipadapter_embeds")
    os.makedirs(folder, exist_ok=True)
    save_file({"lora.weight": torch.zeros(2)}, os.path.join(folder, "lora.safetensors"))
    with open(os.path.join(folder, "cut.safetensors"), "wb") as f:
        f.write(b"\x10\x00")
    with pytest.raises(ValueError, match="IPA Load Embeds: input 'embeds_file': 'lora.safetensors' is not an embeds"):
        run_node("IPA_LoadEmbeds", embeds_file="lora.safetensors")
    with pytest.raises(ValueError, match="IPA Load Embeds: input 'embeds_file': 'cut.safetensors' is"):
        run_node("IPA_LoadEmbeds", embeds_file="cut.safetensors")
