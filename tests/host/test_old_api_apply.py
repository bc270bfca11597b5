"""The served ComfyUI_IPAdapter_plus apply IDs of nodes/old_api/apply.py in-process on the tiny models (their latents
against the old pack itself: tests/host/test_old_api_examples.py): Style & Composition samples as two IPAdapter
Advanced (style transfer, then composition), Tiled cuts the old pack's tiles and masks, the precise boost acts at
weight 0, and the errors name the input; through a real server, the Mad Scientist with a FaceID adapter.
"""
from __future__ import annotations

import pytest
import torch

from testkit import workflow_convert as wc

CONTROLS = dict(start_at=0.0, end_at=1.0, embeds_scaling="V only", image_negative=None, attn_mask=None)


@pytest.mark.parametrize("expand_style, style_type", [(False, "style transfer"), (True, "strong style transfer")])
def test_style_composition_samples_as_two_advanced(run_node, old_plus, cv, make_image, sd15, sample, expand_style,
                                                   style_type):
    old, _ = old_plus
    style, composition = make_image(seed=21, batch=2), make_image(seed=22)
    (got,) = run_node("IPAdapterStyleComposition", model=sd15, ipadapter=old, image_style=style,
                      image_composition=composition, weight_style=0.9, weight_composition=0.7,
                      expand_style=expand_style, combine_embeds="average", clip_vision=cv, **CONTROLS)
    (want,) = run_node("IPAdapterAdvanced", model=sd15, ipadapter=old, image=style, weight=0.9,
                       weight_type=style_type, combine_embeds="average", clip_vision=cv, **CONTROLS)
    (want,) = run_node("IPAdapterAdvanced", model=want, ipadapter=old, image=composition, weight=0.7,
                       weight_type="composition", combine_embeds="average", clip_vision=cv, **CONTROLS)
    plain, a, b = sample(sd15), sample(got), sample(want)
    effect, delta = float((b - plain).abs().max()), float((a - b).abs().max())
    assert effect > 1e-2 and delta <= 1e-4 * effect, (effect, delta)


def test_tiled_cuts_the_old_tiles_and_masks(run_node, old_plus, cv, sd15):
    """A 300 x 400 reference (H / W = 0.75: not near-square) -> short side 256, 256 x 341, two 256 px tiles
    starting at x = 0 and 85; the masks are the attention mask inside each tile."""
    old, _ = old_plus
    image = torch.rand(1, 300, 400, 3, generator=torch.Generator().manual_seed(4))
    attn_mask = torch.ones(300, 400)
    attn_mask[:, 200:] = 0.0  # the right half off
    model, tiles, masks = run_node("IPAdapterTiled", model=sd15, ipadapter=old, image=image, weight=1.0,
                                   weight_type="linear", combine_embeds="concat", sharpening=0.0, clip_vision=cv,
                                   **{**CONTROLS, "attn_mask": attn_mask})
    assert tuple(tiles.shape) == (2, 256, 256, 3) and tuple(masks.shape) == (2, 256, 341)
    columns = [torch.nonzero(m.sum(0) > 0).flatten() for m in masks]
    assert int(columns[0].min()) == 0 and int(columns[0].max()) < 171  # the mask's left half, inside tile 0
    assert int(columns[1].min()) == 85 and int(columns[1].max()) < 171
    assert float(masks[:, :, 172:].abs().max()) < 0.1  # the right half stays off (but the bicubic ringing)
    assert model is not sd15 and model.model_options != sd15.model_options


def test_precise_boost_acts_at_weight_zero(run_node, old_plus, cv, make_image, sd15, attn2_patches):
    """The old style_boost is the composition layers' weight itself: at weight 0 only those sites get a term."""
    old, _ = old_plus
    common = dict(model=sd15, ipadapter=old, image=make_image(seed=3), weight=0.0, combine_embeds="concat",
                  clip_vision=cv, **CONTROLS)
    (silent,) = run_node("IPAdapterPreciseStyleTransfer", style_boost=0.0, **common)
    (boosted,) = run_node("IPAdapterPreciseStyleTransfer", style_boost=1.0, **common)
    (full,) = run_node("IPAdapterPreciseStyleTransfer", style_boost=1.0, **{**common, "weight": 1.0})
    assert "patches_replace" not in silent.model_options.get("transformer_options", {})  # no term anywhere
    some, every = set(attn2_patches(boosted)), set(attn2_patches(full))
    assert some and some < every, (some, every)


def test_errors_name_the_node_and_input(run_node, old_plus, cv, make_image, sd15, pack_module):
    errors = pack_module("ip_adapter_core.errors")
    old, _ = old_plus
    with pytest.raises(errors.IPAdapterError, match="IPAdapter Tiled: .*clip_vision"):
        run_node("IPAdapterTiled", model=sd15, ipadapter=old, image=make_image(), weight=1.0, weight_type="linear",
                 combine_embeds="concat", sharpening=0.0, **CONTROLS)
    with pytest.raises(errors.IPAdapterError, match="IPAdapter Mad Scientist: input 'layer_weights': cannot read "
                                                    "'3=1'"):
        run_node("IPAdapterMS", model=sd15, ipadapter=old, image=make_image(), weight=1.0, weight_faceidv2=1.0,
                 weight_type="linear", combine_embeds="concat", layer_weights="3=1", clip_vision=cv, **CONTROLS)


PROMPT_TIMEOUT = 600.0


def test_mad_scientist_applies_a_faceid_adapter(buffalo_server):
    """IPAdapter Unified Loader FaceID -> IPAdapter Mad Scientist: the FaceID path with layer weights."""
    import numpy as np

    w = wc.Graph()
    ckpt = w.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    pos = w.add("CLIPTextEncode", text="a portrait", clip=[ckpt[0], 1])
    neg = w.add("CLIPTextEncode", text="", clip=[ckpt[0], 1])
    loaded = w.add("IPAdapterUnifiedLoaderFaceID", model=ckpt, preset="FACEID PLUS V2", lora_strength=0.0,
                   provider="CPU", ipadapter=None)
    model = w.add("IPAdapterMS", model=loaded, ipadapter=[loaded[0], 1],
                  image=w.add("LoadImage", image="ipadapter_face_reference.jpg"), weight=1.0, weight_faceidv2=1.5,
                  weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                  layer_weights="0:1, 1:1, 5:0.5, 6:1", image_negative=None, attn_mask=None, clip_vision=None,
                  insightface=None)
    sampled = w.add("KSampler", model=model, seed=3, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                    positive=pos, negative=neg, latent_image=w.add("EmptyLatentImage", width=64, height=64,
                                                                   batch_size=1), denoise=1.0)
    w.add("SaveImage", images=w.add("VAEDecode", samples=sampled, vae=[ckpt[0], 2]), filename_prefix="ms")
    graph = wc.use_standins(w.root)
    on = buffalo_server.queue_ok(graph, timeout=PROMPT_TIMEOUT)
    off = buffalo_server.queue_ok(wc.set_inputs(graph, "IPAdapterMS", weight=0.0), timeout=PROMPT_TIMEOUT)
    effect = float(np.abs(on.images[0].astype(np.float64) - off.images[0]).mean())
    assert effect > 2.0, f"weight 1 vs 0 differ by only {effect:.3f}"
