"""The served ComfyUI_IPAdapter_plus params, embeds-file and loader IDs (nodes/old_api/params.py).

In-process on the tiny models: IPAdapter Regional Conditioning -> Combine Params -> IPAdapter from Params samples
as the same entries applied by IPAdapterAdvanced one after the other; the regional prompts get the mask; Save /
Load Embeds round-trips this pack's tokens and explains an old .ipadpt file. Through a real server on the
stand-ins: the FaceID unified loader feeds IPAdapterFaceID, and the community loader's presets give named errors.
"""
from __future__ import annotations

import os

import pytest
import torch

from testkit import workflow_convert as wc

COMPAT = "ComfyUI_IPAdapter_plus"
CONTROLS = dict(combine_embeds="concat", embeds_scaling="V only")


def _halves(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    left = torch.zeros(1, size, size)
    left[..., : size // 2] = 1.0
    return left, 1.0 - left


def _regional(run_node, image, mask, weight=0.8, weight_type="linear", start_at=0.0, end_at=1.0, **conds):
    return run_node("IPAdapterRegionalConditioning", image=image, image_weight=weight, prompt_weight=1.0,
                    weight_type=weight_type, start_at=start_at, end_at=end_at, mask=mask, **conds)


def test_from_params_samples_as_advanced_applied_per_entry(run_node, old_plus, cv, make_image, sd15, sample):
    old, _ = old_plus
    left, right = _halves()
    images = make_image(seed=11), make_image(seed=12)
    entries = [dict(weight=0.8, weight_type="linear", start_at=0.0, end_at=1.0),
               dict(weight=0.6, weight_type="ease in", start_at=0.1, end_at=0.9)]
    params = [_regional(run_node, im, m, **e)[0] for im, m, e in zip(images, (left, right), entries)]
    (both,) = run_node("IPAdapterCombineParams", params_1=params[0], params_2=params[1])
    (got,) = run_node("IPAdapterFromParams", model=sd15, ipadapter=old, ipadapter_params=both, clip_vision=cv,
                      image_negative=None, **CONTROLS)
    want = sd15
    for im, m, e in zip(images, (left, right), entries):
        (want,) = run_node("IPAdapterAdvanced", model=want, ipadapter=old, image=im, clip_vision=cv, attn_mask=m,
                           image_negative=None, **CONTROLS, **e)
    plain, got_latent, want_latent = sample(sd15), sample(got), sample(want)
    effect = float((want_latent - plain).abs().max())
    delta = float((got_latent - want_latent).abs().max())
    assert effect > 1e-2, f"the two regional adapters hardly change the latent ({effect:.3g})"
    assert delta <= 1e-4 * effect, f"from Params vs Advanced per entry: {delta:.3g} (effect {effect:.3g})"
    assert sd15.model_options.get("transformer_options", {}).get("patches_replace") in (None, {}), \
        "the caller's model was patched"


def test_regional_conditioning_masks_the_prompts_only_when_given_a_mask(run_node, make_image, make_conds, sd15):
    positive, negative = make_conds(sd15, 1), make_conds(sd15, 2)
    left, _ = _halves()
    params, pos, neg = _regional(run_node, make_image(seed=1), left, positive=positive, negative=negative)
    for out, given in ((pos, positive), (neg, negative)):
        assert torch.equal(out[0][0], given[0][0])
        assert torch.equal(out[0][1]["mask"], left) and out[0][1]["mask_strength"] == 1.0
        assert "mask" not in given[0][1], "the input conditioning was changed"
    params, pos, neg = _regional(run_node, make_image(seed=1), None, positive=positive, negative=None)
    assert pos is positive and neg is None
    (entry,) = params.entries
    assert entry.attn_mask is None and entry.weight == 0.8


def test_params_errors_name_the_input(run_node, old_plus, sd15, make_image, pack_module):
    errors = pack_module("ip_adapter_core.errors")
    params = _regional(run_node, make_image(), None)[0]
    with pytest.raises(errors.IPAdapterError, match="IPAdapter Combine Params: input 'params_2': expected "
                                                    "IPADAPTER_PARAMS .* got str"):
        run_node("IPAdapterCombineParams", params_1=params, params_2="nonsense")
    empty = _regional(run_node, None, None)[0]
    with pytest.raises(errors.IPAdapterError, match="IPAdapter from Params: input 'ipadapter_params': no entry "
                                                    "has an image"):
        run_node("IPAdapterFromParams", model=sd15, ipadapter=old_plus[0], ipadapter_params=empty, **CONTROLS)


def _listed(run_node_cls_types) -> list:
    return run_node_cls_types["required"]["embeds"][0]


def test_save_then_load_embeds_round_trips_and_is_listed(run_node, comfy_nodes, old_plus, cv, make_image, output_dir,
                                                         input_dir, sd15, sample):
    old, _ = old_plus
    tokens = run_node("IPAdapterEncoder", ipadapter=old, image=make_image(seed=5), weight=1.0,
                      clip_vision=cv)["result"][0]
    saved = run_node("IPAdapterSaveEmbeds", embeds=tokens, filename_prefix="old/IP_embeds")
    (relative,) = saved["ui"]["text"]
    assert relative.startswith("ipadapter_embeds/old/IP_embeds") and relative.endswith(".safetensors")
    assert os.path.isfile(os.path.join(output_dir, relative))
    listed = _listed(comfy_nodes.NODE_CLASS_MAPPINGS["IPAdapterLoadEmbeds"].INPUT_TYPES())
    name = f"{relative} [output]"
    assert name in listed, listed
    (loaded,) = run_node("IPAdapterLoadEmbeds", embeds=name)
    assert torch.equal(loaded.cond, tokens.cond) and torch.equal(loaded.uncond, tokens.uncond)
    controls = dict(weight=1.0, weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                    attn_mask=None, clip_vision=None)
    latents = [sample(run_node("IPAdapterEmbeds", model=sd15, ipadapter=old, pos_embed=e, **controls)[0])
               for e in (tokens, loaded)]
    assert torch.equal(*latents)


def test_an_old_ipadpt_file_is_listed_and_explained_never_unpickled(run_node, comfy_nodes, input_dir, pack_module,
                                                                   tmp_path):
    errors = pack_module("ip_adapter_core.errors")
    os.makedirs(os.path.join(input_dir, "sub"), exist_ok=True)
    torch.save(torch.randn(2, 1, 257, 1280), os.path.join(input_dir, "sub", "face.ipadpt"))

    class Payload:  # an arbitrary object: unpickling it would run code
        def __reduce__(self):
            return (os.makedirs, (str(tmp_path / "ran"),))

    torch.save({"x": Payload()}, os.path.join(input_dir, "evil.ipadpt"))
    listed = _listed(comfy_nodes.NODE_CLASS_MAPPINGS["IPAdapterLoadEmbeds"].INPUT_TYPES())
    assert listed[:2] == ["evil.ipadpt", os.path.join("sub", "face.ipadpt")], listed
    with pytest.raises(errors.IPAdapterError, match=r"IPAdapter Load Embeds: input 'embeds': 'sub.face\.ipadpt' is "
                                                    r"an old .* tensor of shape \(2, 1, 257, 1280\).*IPAdapter Save "
                                                    r"Embeds"):
        run_node("IPAdapterLoadEmbeds", embeds=os.path.join("sub", "face.ipadpt"))
    with pytest.raises(errors.IPAdapterError, match="'evil.ipadpt' cannot be read as plain tensors"):
        run_node("IPAdapterLoadEmbeds", embeds="evil.ipadpt")
    assert not (tmp_path / "ran").exists(), "the .ipadpt pickle ran code"
    with pytest.raises(errors.IPAdapterError, match="'missing.ipadpt' is not a .ipadpt file of the input folder"):
        run_node("IPAdapterLoadEmbeds", embeds="missing.ipadpt")


# ---------------------------------------------------------------------------------------------- loaders, served

PROMPT_TIMEOUT = 600.0
MIN_WEIGHT_EFFECT = 2.0  # mean |difference| on the 0-255 scale; the stand-ins give far more at weight 1


def _loader_graph(loader: str, preset: str, apply: str, **loader_inputs) -> dict:
    w = wc.Graph()
    ckpt = w.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    pos = w.add("CLIPTextEncode", text="a portrait", clip=[ckpt[0], 1])
    neg = w.add("CLIPTextEncode", text="", clip=[ckpt[0], 1])
    loaded = w.add(loader, model=ckpt, preset=preset, ipadapter=None, **loader_inputs)
    image = w.add("LoadImage", image="ipadapter_face_reference.jpg")
    common = dict(model=loaded, ipadapter=[loaded[0], 1], image=image, weight=1.0, weight_type="linear",
                  combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only", attn_mask=None,
                  image_negative=None, clip_vision=None)
    if apply == "IPAdapterFaceID":
        common.update(weight_faceidv2=1.0, insightface=None)
    model = w.add(apply, **common)
    latent = w.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = w.add("KSampler", model=model, seed=3, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                    positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    w.add("SaveImage", images=w.add("VAEDecode", samples=sampled, vae=[ckpt[0], 2]), filename_prefix="loader")
    return wc.use_standins(w.root)


def test_faceid_unified_loader_feeds_ipadapter_faceid(buffalo_server):
    import numpy as np

    graph = _loader_graph("IPAdapterUnifiedLoaderFaceID", "FACEID PLUS V2", "IPAdapterFaceID", lora_strength=0.6,
                          provider="CPU")
    on = buffalo_server.queue_ok(graph, timeout=PROMPT_TIMEOUT)
    off = buffalo_server.queue_ok(wc.set_inputs(graph, "IPAdapterFaceID", weight=0.0, weight_faceidv2=0.0),
                                  timeout=PROMPT_TIMEOUT)
    effect = float(np.abs(on.images[0].astype(np.float64) - off.images[0]).mean())
    assert effect > MIN_WEIGHT_EFFECT, f"weight 1 vs 0 differ by only {effect:.3f}"
    text = [t for out in on.history["outputs"].values() for t in out.get("text", [])]
    assert any("faceid-plusv2" in t for t in text), text


def test_community_loader_kolors_is_refused_by_name(buffalo_server):
    graph = _loader_graph("IPAdapterUnifiedLoaderCommunity", "Kolors", "IPAdapterAdvanced")
    run = buffalo_server.queue(graph, timeout=PROMPT_TIMEOUT)
    assert run.status == "error", run.status
    assert "IPAdapter Unified Loader Community: input 'preset': 'Kolors' is not supported by this pack" in run.error
    assert "Traceback" not in run.error, run.error


def test_community_loader_composition_is_the_unified_composition_preset(buffalo_server):
    """Composition adapters have the Plus layout: with no file named 'composition' (the stand-ins) the Plus-layout
    file is used and the loader's text says so, as IPA Unified Loader's 'composition' preset does."""
    graph = _loader_graph("IPAdapterUnifiedLoaderCommunity", "Composition", "IPAdapterAdvanced")
    run = buffalo_server.queue_ok(graph, timeout=PROMPT_TIMEOUT)
    text = " ".join(t for out in run.history["outputs"].values() for t in out.get("text", []))
    assert "Note: 'composition' adapters have the same tensors" in text and "plus" in text.lower(), text
