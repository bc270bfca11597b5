"""SigLIP's pooled output through the pack's encoder stage (what the InstantX Flux adapter reads): ComfyUI's
CLIPVisionLoader drops SigLIP's pooling head, so the pack reads it from the encoder's own file in models/clip_vision
(nodes/patch/host.siglip_head) and applies it to ComfyUI's post-LayerNorm tokens.

Oracle: transformers' SiglipVisionModel ``pooler_output`` on the same random weights and the same pixels (ComfyUI's
own preprocessing, squashed without a crop). ComfyUI runs the encoder in its text-encoder dtype, so the tolerance is
relative: 5e-3 of the output's size. Then: a SigLIP file without the head and an encoder loaded from no file of the
folder are named in the error, through IPA Encode Image with an InstantX Flux adapter.
"""
from __future__ import annotations

import json

import pytest
import torch

HIDDEN, HEADS, LAYERS, PATCH, SIZE = 48, 4, 2, 8, 32


@pytest.fixture(scope="module")
def siglip(comfy_nodes, tmp_path_factory):
    """(transformers model, ComfyUI CLIP_VISION, folder, file name) of one tiny random SigLIP with its head."""
    transformers = pytest.importorskip("transformers", reason="transformers' SiglipVisionModel is the oracle")
    import comfy.clip_vision
    import folder_paths
    from safetensors.torch import save_file

    config = transformers.SiglipVisionConfig(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                                             num_attention_heads=HEADS, image_size=SIZE, patch_size=PATCH)
    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(config).eval()
    sd = {k if k.startswith("vision_model.") else f"vision_model.{k}": v.contiguous()
          for k, v in hf.state_dict().items()}
    assert "vision_model.head.probe" in sd
    folder = tmp_path_factory.mktemp("siglip_clip_vision")
    folder_paths.add_model_folder_path("clip_vision", str(folder))
    save_file(sd, str(folder / "tiny_siglip.safetensors"))
    save_file({k: v for k, v in sd.items() if ".head." not in k}, str(folder / "tiny_siglip_headless.safetensors"))
    cfg = dict(num_channels=3, hidden_act="gelu_pytorch_tanh", hidden_size=HIDDEN, image_size=SIZE,
               intermediate_size=2 * HIDDEN, model_type="siglip_vision_model", num_attention_heads=HEADS,
               num_hidden_layers=LAYERS, patch_size=PATCH, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    json_path = tmp_path_factory.mktemp("siglip_json") / "tiny_siglip.json"
    json_path.write_text(json.dumps(cfg))
    cv = comfy.clip_vision.ClipVisionModel(str(json_path))
    missing, _ = cv.load_sd(sd)
    assert not missing, missing
    return hf, cv, folder


def test_pooled_output_equals_transformers_pooler(siglip, pack_module, make_image):
    import comfy.clip_vision

    hf, cv, _ = siglip
    host = pack_module("nodes.patch.host")
    host.siglip_head(cv, where="test")
    image = make_image(3, batch=2, height=40, width=56)
    ours = host.encode_images(cv, image, "pooled")
    pixels = comfy.clip_vision.clip_preprocess(image, size=SIZE, mean=[0.5] * 3, std=[0.5] * 3, crop=False).float()
    with torch.no_grad():
        want = hf(pixel_values=pixels).pooler_output
    assert ours.shape == (2, HIDDEN)
    delta, size = float((ours - want).abs().max()), float(want.abs().max())
    print(f"\nSigLIP pooled: max |ours - transformers| = {delta:.3g} of {size:.3g}")
    assert delta <= 5e-3 * size
    assert float((ours[0] - ours[1]).abs().max()) > 100 * delta  # two images, two different outputs


def test_a_file_without_the_head_or_no_file_is_named(siglip, pack_module, tmp_path_factory):
    """An encoder found in no clip_vision file, and one whose only file has no head: each error says which."""
    import copy

    import comfy.clip_vision
    import folder_paths
    from safetensors.torch import save_file

    _, cv, _ = siglip
    host = pack_module("nodes.patch.host")
    assert host.siglip_head(cv, where="test") is host.siglip_head(cv, where="test")  # read once, cached
    stranger = comfy.clip_vision.ClipVisionModel.__new__(comfy.clip_vision.ClipVisionModel)
    stranger.__dict__.update(cv.__dict__)
    stranger.model = copy.deepcopy(cv.model)
    with torch.no_grad():
        stranger.model.vision_model.embeddings.patch_embedding.weight.add_(2.0)
    with pytest.raises(Exception, match="not among the clip_vision files.*vision_model.head"):
        host.siglip_head(stranger, where="IPA Encode Image")
    sd = {k: v.float().contiguous() for k, v in stranger.model.state_dict().items()}  # its weights, no head
    lone = tmp_path_factory.mktemp("headless_only")
    save_file(sd, str(lone / "headless_siglip.safetensors"))
    folder_paths.add_model_folder_path("clip_vision", str(lone))
    with pytest.raises(Exception, match=r"'headless_siglip.safetensors': the SigLIP file has no pooling head"):
        host.siglip_head(stranger, where="IPA Encode Image")


def test_ipa_encode_gives_an_instantx_adapter_the_projected_pooled_output(siglip, ipadapter_dir, make_image, run_node,
                                                                            pack_module):
    """IPA Encode Image with an InstantX Flux adapter: cond = its projection of the pooled output of each image,
    uncond = that of a black image (the negative image prompt this pack uses; the reference has none)."""
    from testkit.instantx_flux_adapters import write_instantx

    _, cv, _ = siglip
    sub = ipadapter_dir / "siglip_encode"
    sub.mkdir(exist_ok=True)
    write_instantx(str(sub / "instantx_tiny.safetensors"), seed=3, tokens=4, enc=HIDDEN, ctx=32, hidden=32, sites=3)
    adapter = run_node("IPA_ModelLoader", ipadapter_file="siglip_encode/instantx_tiny.safetensors")["result"][0]
    image = make_image(5, batch=2)
    embeds = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image)[0]
    host = pack_module("nodes.patch.host")
    want = adapter.model.project(host.encode_images(cv, image, "pooled")).float()
    black = adapter.model.project(host.encode_images(cv, torch.zeros(1, SIZE, SIZE, 3), "pooled")).float()
    assert embeds.cond.shape == (2, 4, 32)
    torch.testing.assert_close(embeds.cond, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embeds.uncond, black, rtol=1e-5, atol=1e-6)
