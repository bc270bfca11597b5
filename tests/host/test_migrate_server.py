"""Converted ComfyUI_IPAdapter_plus workflows (migration.migrate_workflow) run through a real ComfyUI server.

1. Old-format workflows written here (API and UI format, the old pack's node IDs and inputs) are converted and
   queued on a server with this pack and the random stand-in models (testkit/standins.py): they must run, and the
   adapter must change the image.
2. Where cubiq's ComfyUI_IPAdapter_plus is installed (a folder with IPAdapterPlus.py in the ComfyUI's custom_nodes,
   or the folder named by IPA_OLD_PACK, which is linked into this test's own server only), the old workflow runs on
   the old pack and the converted one on this pack, on the same server and models, and the latents must agree. The
   old pack hard-codes SD1.5's real block layout and Resampler shape, so that test generates an SD1.5-layout UNet
   (320 channels on every level, random weights), a 224 px tiny CLIP vision and adapters in the published shapes.
   Skipped, with the reason printed, when the old pack is not installed.
"""
from __future__ import annotations

import json
import os

import pytest

from migration import migrate_workflow as mw
from testkit import standins
from testkit import workflow_convert as wc
from testkit.old_pack import make_models, not_found_reason, old_pack_folder
from testkit.comfyui_env import REPO

REFERENCE = os.path.join(REPO, "example_workflows", "ipadapter_reference.png")
IMAGE = os.path.basename(REFERENCE)
PROMPT_TIMEOUT = 600.0
MIN_WEIGHT_EFFECT = 2.0  # mean abs pixel difference (0-255) that shows the adapter acts; stand-ins give ~tens
# Old pack vs converted workflow, same models, seed and sampler, fp32 on the CPU: only the order of float operations
# differs (the old pack projects K/V every step, this pack once), so the latents agree to float rounding: measured
# ~2e-6 of the largest latent value (the random SD1.5-layout UNet gives latents of a few hundred).
RELATIVE_TOLERANCE = 1e-4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(standin_server):
    return standin_server


def _run_ok(server, graph: dict):
    return server.queue_ok(graph, timeout=PROMPT_TIMEOUT)


def _sampler_tail(model: list, *, clip: list, first_id: int = 20, save: str = "SaveImage") -> dict:
    """Prompt encode + 64 px latent + KSampler (3 steps, fixed seed) + output, API format."""
    i = first_id
    tail = {
        str(i): {"class_type": "CLIPTextEncode", "inputs": {"text": "a mountain lake at sunset", "clip": clip}},
        str(i + 1): {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        str(i + 2): {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        str(i + 3): {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 7, "steps": 3, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": [str(i), 0], "negative": [str(i + 1), 0], "latent_image": [str(i + 2), 0], "denoise": 1.0}},
    }
    if save == "SaveImage":
        tail[str(i + 4)] = {"class_type": "VAEDecode", "inputs": {"samples": [str(i + 3), 0], "vae": ["1", 2]}}
        tail[str(i + 5)] = {"class_type": "SaveImage", "inputs": {"images": [str(i + 4), 0],
                                                                   "filename_prefix": "migrated"}}
    else:
        tail[str(i + 4)] = {"class_type": "SaveLatent", "inputs": {"samples": [str(i + 3), 0],
                                                                    "filename_prefix": save}}
    return tail


def old_advanced_api(ckpt: str, adapter: str, clip_vision: str, *, clip_loader: str = "CLIPVisionLoader",
                     weight: float = 1.0, weight_type: str = "linear", noise_negative: bool = False,
                     save: str = "SaveImage", node: str = "IPAdapterAdvanced", extra: dict | None = None) -> dict:
    """An old-pack workflow in API format: IPAdapter Model Loader + IPAdapter Advanced (+ IPAdapter Noise); ``node``
    another apply node of the old pack with the same inputs but weight_type (e.g. IPAdapterPreciseStyleTransfer) plus
    ``extra`` inputs (its style_boost)."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": adapter}},
        "3": {"class_type": clip_loader, "inputs": {"clip_name": clip_vision}},
        "4": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "5": {"class_type": "IPAdapterAdvanced", "inputs": {
            "model": ["1", 0], "ipadapter": ["2", 0], "image": ["4", 0], "clip_vision": ["3", 0], "weight": weight,
            "weight_type": weight_type, "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
            "embeds_scaling": "V only", **(extra or {})}},
    }
    if node != "IPAdapterAdvanced":
        g["5"]["class_type"] = node
        del g["5"]["inputs"]["weight_type"]
    if noise_negative:
        g["6"] = {"class_type": "IPAdapterNoise", "inputs": {"type": "fade", "strength": 0.5, "blur": 0,
                                                             "image_optional": ["4", 0]}}
        g["5"]["inputs"]["image_negative"] = ["6", 0]
    g.update(_sampler_tail(["5", 0], clip=["1", 1], save=save))
    return g


def _convert(old: dict) -> dict:
    new, entries = mw.migrate(old)
    assert not [e for e in entries if e.status == "unmapped"], mw.report_text(entries)
    assert not any(n["class_type"] in mw.OLD_TYPES for n in new.values())
    return new


# ---------------------------------------------------------------------------------------------- converted graphs run

def test_converted_advanced_with_negative_noise_runs_and_the_adapter_acts(server):
    old = old_advanced_api(standins.CHECKPOINT, standins.ADAPTER_PLUS, standins.CLIP_VISION, noise_negative=True)
    graph = wc.use_standins(_convert(old))
    assert wc.nodes_of(graph, "IPA_Encode") and wc.nodes_of(graph, "IPA_NoiseImage")
    applies = wc.nodes_of(graph, "IPA_ApplyAdvanced")
    assert applies and all(n["inputs"]["compatibility"] == "ComfyUI_IPAdapter_plus" for n in applies)
    from testkit.run_workflow import mean_abs_diff

    one = _run_ok(server, graph).images[0]
    zero = _run_ok(server, wc.set_adapter_weight(graph, 0.0)).images[0]
    assert one.shape == (64, 64, 3)
    diff = mean_abs_diff(one, zero)
    assert diff > MIN_WEIGHT_EFFECT, f"weight 1 vs 0: mean abs pixel difference {diff:.3f}"


def test_converted_encoder_embeds_and_prep_run(server):
    old = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": standins.CHECKPOINT}},
        "2": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": standins.ADAPTER}},
        "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": standins.CLIP_VISION}},
        "4": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "5": {"class_type": "PrepImageForClipVision", "inputs": {"image": ["4", 0], "interpolation": "LANCZOS",
                                                                 "crop_position": "top", "sharpening": 0.1}},
        "6": {"class_type": "IPAdapterEncoder", "inputs": {"ipadapter": ["2", 0], "image": ["5", 0], "weight": 1.0,
                                                           "clip_vision": ["3", 0]}},
        "7": {"class_type": "IPAdapterEmbeds", "inputs": {
            "model": ["1", 0], "ipadapter": ["2", 0], "pos_embed": ["6", 0], "neg_embed": ["6", 1], "weight": 0.9,
            "weight_type": "style transfer", "start_at": 0.0, "end_at": 0.8, "embeds_scaling": "K+V"}},
        **_sampler_tail(["7", 0], clip=["1", 1]),
    }
    graph = wc.use_standins(_convert(old))
    assert graph["7"]["inputs"]["embeds"] == ["6", 0] and graph["6"]["class_type"] == "IPA_Encode"
    assert _run_ok(server, graph).images[0].shape == (64, 64, 3)


def test_converted_ui_workflow_with_unified_loader_runs(server):
    """UI format, as the editor saves it: the unified loader's bundled CLIP vision becomes a second link."""
    nodes = [
        {"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "pos": [0, 0], "size": [315, 98], "inputs": [],
         "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1], "slot_index": 0},
                     {"name": "CLIP", "type": "CLIP", "links": [5, 6], "slot_index": 1},
                     {"name": "VAE", "type": "VAE", "links": [11], "slot_index": 2}],
         "widgets_values": [standins.CHECKPOINT]},
        {"id": 2, "type": "IPAdapterUnifiedLoader", "mode": 0, "pos": [350, 0], "size": [315, 78],
         "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                    {"name": "ipadapter", "type": "IPADAPTER", "link": None}],
         "outputs": [{"name": "model", "type": "MODEL", "links": [2], "slot_index": 0},
                     {"name": "ipadapter", "type": "IPADAPTER", "links": [3], "slot_index": 1}],
         "widgets_values": ["PLUS (high strength)"]},
        {"id": 3, "type": "IPAdapter", "mode": 0, "pos": [700, 0], "size": [315, 170],
         "inputs": [{"name": "model", "type": "MODEL", "link": 2},
                    {"name": "ipadapter", "type": "IPADAPTER", "link": 3},
                    {"name": "image", "type": "IMAGE", "link": 4}, {"name": "attn_mask", "type": "MASK", "link": None}],
         "outputs": [{"name": "MODEL", "type": "MODEL", "links": [7], "slot_index": 0}],
         "widgets_values": [1.0, 0.0, 1.0, "standard"]},
        {"id": 4, "type": "LoadImage", "mode": 0, "pos": [350, 200], "size": [315, 314], "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4], "slot_index": 0},
                     {"name": "MASK", "type": "MASK", "links": None, "slot_index": 1}],
         "widgets_values": [IMAGE, "image"]},
        {"id": 5, "type": "CLIPTextEncode", "mode": 0, "pos": [700, 250], "size": [400, 200],
         "inputs": [{"name": "clip", "type": "CLIP", "link": 5}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [8], "slot_index": 0}],
         "widgets_values": ["a mountain lake at sunset"]},
        {"id": 6, "type": "CLIPTextEncode", "mode": 0, "pos": [700, 500], "size": [400, 200],
         "inputs": [{"name": "clip", "type": "CLIP", "link": 6}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [9], "slot_index": 0}],
         "widgets_values": ["blurry"]},
        {"id": 7, "type": "EmptyLatentImage", "mode": 0, "pos": [700, 750], "size": [315, 106], "inputs": [],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [10], "slot_index": 0}],
         "widgets_values": [64, 64, 1]},
        {"id": 8, "type": "KSampler", "mode": 0, "pos": [1150, 0], "size": [315, 262],
         "inputs": [{"name": "model", "type": "MODEL", "link": 7},
                    {"name": "positive", "type": "CONDITIONING", "link": 8},
                    {"name": "negative", "type": "CONDITIONING", "link": 9},
                    {"name": "latent_image", "type": "LATENT", "link": 10}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [12], "slot_index": 0}],
         "widgets_values": [7, "fixed", 3, 6.0, "euler", "normal", 1.0]},
        {"id": 9, "type": "VAEDecode", "mode": 0, "pos": [1500, 0], "size": [210, 46],
         "inputs": [{"name": "samples", "type": "LATENT", "link": 12}, {"name": "vae", "type": "VAE", "link": 11}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [13], "slot_index": 0}]},
        {"id": 10, "type": "SaveImage", "mode": 0, "pos": [1750, 0], "size": [315, 270],
         "inputs": [{"name": "images", "type": "IMAGE", "link": 13}], "outputs": [], "widgets_values": ["migrated"]},
    ]
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 2, 1, 3, 1, "IPADAPTER"], [4, 4, 0, 3, 2, "IMAGE"],
             [5, 1, 1, 5, 0, "CLIP"], [6, 1, 1, 6, 0, "CLIP"], [7, 3, 0, 8, 0, "MODEL"],
             [8, 5, 0, 8, 1, "CONDITIONING"], [9, 6, 0, 8, 2, "CONDITIONING"], [10, 7, 0, 8, 3, "LATENT"],
             [11, 1, 2, 9, 1, "VAE"], [12, 8, 0, 9, 0, "LATENT"], [13, 9, 0, 10, 0, "IMAGE"]]
    old = {"last_node_id": 10, "last_link_id": 13, "nodes": nodes, "links": links, "groups": [], "config": {},
           "extra": {}, "version": 0.4}
    new, entries = mw.migrate(old)
    assert [e.status for e in entries] == ["converted", "converted"], mw.report_text(entries)
    graph = wc.use_standins(server.convert(new))
    assert graph["3"]["inputs"]["clip_vision"] == ["2", 2] and graph["2"]["class_type"] == "IPA_UnifiedLoader"
    assert _run_ok(server, graph).images[0].shape == (64, 64, 3)


@pytest.mark.parametrize("kind", ["IPAdapterStyleComposition", "IPAdapterTiled"])
def test_converted_style_composition_and_tiled_run(server, kind):
    old = old_advanced_api(standins.CHECKPOINT, standins.ADAPTER_PLUS, standins.CLIP_VISION)
    inputs = old["5"]["inputs"]
    old["5"]["class_type"] = kind
    if kind == "IPAdapterStyleComposition":
        image = inputs.pop("image")
        weight = inputs.pop("weight")
        inputs.pop("weight_type")
        inputs.update(image_style=image, image_composition=image, weight_style=weight, weight_composition=0.7,
                      expand_style=False, combine_embeds="average")
    else:
        inputs.update(sharpening=0.0)
    graph = wc.use_standins(_convert(old))
    target = {"IPAdapterStyleComposition": "IPA_StyleComposition", "IPAdapterTiled": "IPA_ApplyTiled"}[kind]
    assert graph["5"]["class_type"] == target and graph["5"]["inputs"]["clip_vision"] == ["3", 0]
    assert _run_ok(server, graph).images[0].shape == (64, 64, 3)


def test_converted_regional_params_run(server):
    """Regional Conditioning x2 -> Combine Params -> from Params: one IPA Regional Apply + core Set Mask prompts."""
    region = {"image_weight": 0.8, "prompt_weight": 1.0, "weight_type": "linear", "start_at": 0.0, "end_at": 1.0}
    old = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": standins.CHECKPOINT}},
        "2": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": standins.ADAPTER_PLUS}},
        "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": standins.CLIP_VISION}},
        "4": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "5": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "6": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 64, "height": 64}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lake", "clip": ["1", 1]}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "a mountain", "clip": ["1", 1]}},
        "9": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "10": {"class_type": "IPAdapterRegionalConditioning", "inputs": {
            **region, "image": ["4", 0], "mask": ["5", 0], "positive": ["7", 0], "negative": ["9", 0]}},
        "11": {"class_type": "IPAdapterRegionalConditioning", "inputs": {
            **region, "image": ["4", 0], "mask": ["6", 0], "positive": ["8", 0]}},
        "12": {"class_type": "IPAdapterCombineParams", "inputs": {"params_1": ["10", 0], "params_2": ["11", 0]}},
        "13": {"class_type": "IPAdapterFromParams", "inputs": {
            "model": ["1", 0], "ipadapter": ["2", 0], "ipadapter_params": ["12", 0], "combine_embeds": "concat",
            "embeds_scaling": "V only", "clip_vision": ["3", 0]}},
        "14": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["10", 1],
                                                               "conditioning_2": ["11", 1]}},
        **_sampler_tail(["13", 0], clip=["1", 1]),
    }
    old["23"]["inputs"].update(positive=["14", 0], negative=["10", 2])
    graph = wc.use_standins(_convert(old))
    assert graph["13"]["class_type"] == "IPA_RegionalApply" and "12" not in graph
    assert graph["10"]["class_type"] == graph["11"]["class_type"] == "ConditioningSetMask"
    from testkit.run_workflow import mean_abs_diff

    one = _run_ok(server, graph).images[0]
    zero = json.loads(json.dumps(graph))
    zero["13"]["inputs"].update(weight_1=0.0, weight_2=0.0)
    assert mean_abs_diff(one, _run_ok(server, zero).images[0]) > MIN_WEIGHT_EFFECT


# ---------------------------------------------------------------------------------------------- against the old pack

@pytest.fixture(scope="module")
def old_pack_server(comfyui_path, tmp_path_factory):
    folder, link = old_pack_folder(comfyui_path)
    if folder is None:
        reason = f"{not_found_reason(comfyui_path)}: old-vs-converted latents not compared"
        print(f"\nSKIPPED: {reason}")
        pytest.skip(reason)
    from testkit.comfy_server import ComfyServer

    base = str(tmp_path_factory.mktemp("old_pack_models"))
    make_models(comfyui_path, base)
    workdir = str(tmp_path_factory.mktemp("old_pack_server"))
    if link:
        os.makedirs(os.path.join(workdir, "custom_nodes"), exist_ok=True)
        os.symlink(folder, os.path.join(workdir, "custom_nodes", "ComfyUI_IPAdapter_plus"))
    with ComfyServer(comfyui_path, models_dir=base, helper_nodes=True, cpu=True, quiet=True, workdir=workdir) as srv:
        if "IPAdapterAdvanced" not in srv.object_info("IPAdapterAdvanced"):
            pytest.fail(f"ComfyUI_IPAdapter_plus at {folder} did not load:\n{srv.log_tail(60)}")
        srv.copy_input(REFERENCE)
        yield srv


def _latent(server, graph: dict, prefix: str):
    import torch
    from safetensors.torch import load_file

    run = _run_ok(server, graph)
    (ref,) = [r for out in run.history["outputs"].values() for r in out.get("latents", [])]
    path = os.path.join(server.output_dir, ref.get("subfolder", ""), ref["filename"])
    return load_file(path)["latent_tensor"].to(torch.float64)


PRECISE = ("IPAdapterPreciseStyleTransfer", {"weight": 0.8, "style_boost": 1.6})


@pytest.mark.parametrize("adapter,weight_type", [
    ("ip-adapter_sd15_test.safetensors", "linear"),
    ("ip-adapter-plus_sd15_test.safetensors", "linear"),
    ("ip-adapter-plus_sd15_test.safetensors", "style transfer"),
    ("ip-adapter-plus_sd15_test.safetensors", PRECISE),
])
def test_old_pack_and_converted_workflow_give_the_same_latents(old_pack_server, adapter, weight_type):
    node, extra = weight_type if isinstance(weight_type, tuple) else ("IPAdapterAdvanced", {})
    weight_type = weight_type if node == "IPAdapterAdvanced" else f"{node} {extra}"
    tag = f"{adapter.split('_')[0]}_{node}_{weight_type.replace(' ', '_')}"[:80].replace("{", "").replace("}", "") \
        .replace("'", "").replace(":", "").replace(",", "")
    old = old_advanced_api("ipa_standin_sd15.safetensors", adapter, "ipa_clip_vision_224.safetensors",
                           clip_loader="IPATest_CLIPVisionLoaderJSON", weight_type=weight_type, save=f"old_{tag}",
                           node=node, extra=extra)
    new = _convert(old)
    new[max(new, key=int)]["inputs"]["filename_prefix"] = f"new_{tag}"
    plain = json.loads(json.dumps(old))
    plain["23"]["inputs"]["model"] = ["1", 0]  # the KSampler without the adapter
    plain[max(plain, key=int)]["inputs"]["filename_prefix"] = f"plain_{tag}"
    latent_old = _latent(old_pack_server, old, "old")
    latent_new = _latent(old_pack_server, new, "new")
    latent_plain = _latent(old_pack_server, plain, "plain")
    own = json.loads(json.dumps(new))  # the same converted graph with this pack's own behaviour
    for node in wc.nodes_of(own, "IPA_ApplyAdvanced"):
        node["inputs"]["compatibility"] = "this pack"
    own[max(own, key=int)]["inputs"]["filename_prefix"] = f"own_{tag}"
    latent_own = _latent(old_pack_server, own, "own")
    scale = float(latent_old.abs().max())
    effect = float((latent_old - latent_plain).abs().max())
    delta = float((latent_old - latent_new).abs().max())
    own_delta = float((latent_old - latent_own).abs().max())
    print(f"\n{adapter} {weight_type}: max |old - converted| = {delta:.3g}, adapter effect max |old - plain| = "
          f"{effect:.3g}, max |latent| = {scale:.3g}, max |old - converted with compatibility 'this pack'| = "
          f"{own_delta:.3g}")
    tolerance = RELATIVE_TOLERANCE * scale
    assert effect > 100 * tolerance, f"the adapter hardly changes the latents ({effect:.3g}): no test"
    assert delta <= tolerance, f"max |old - converted| = {delta:.3g} > {tolerance:.3g}"
    assert own_delta > 10 * tolerance, "the compatibility setting made no difference: the test cannot see it"
    if extra.get("style_boost", extra.get("weight", 1.0)) != extra.get("weight", 1.0):
        unboosted = json.loads(json.dumps(new))  # the boost dropped: the test must be able to see it
        for node_ in wc.nodes_of(unboosted, "IPA_ApplyAdvanced"):
            node_["inputs"]["precise_boost"] = 1.0
        unboosted[max(unboosted, key=int)]["inputs"]["filename_prefix"] = f"unboosted_{tag}"
        boost_delta = float((latent_old - _latent(old_pack_server, unboosted, "unboosted")).abs().max())
        print(f"max |old - converted without its precise_boost| = {boost_delta:.3g}")
        assert boost_delta > 10 * tolerance, "precise_boost made no difference: the test cannot see it"
