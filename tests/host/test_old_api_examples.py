"""The served ComfyUI_IPAdapter_plus IDs (nodes/old_api/) against the old pack itself, through real servers.

1. The old pack's own example workflows (its examples/*.json, UI format, read from the old pack's folder: never
   copied here) are converted to API format with this server's /object_info, run on the stand-ins with this pack
   serving the old IDs, and differ from the same graph with every adapter weight 0.
2. The same old-ID API graphs run on a server with the old pack (linked into that server only) and on a server with
   this pack serving the IDs, on the same models (testkit/old_pack.make_models), seed and sampler: the latents agree
   within the migration tests' tolerance (fp32 on the CPU: only the order of float operations differs).

Both need the old pack's folder: IPA_OLD_PACK=/path/to/ComfyUI_IPAdapter_plus. An old pack installed in the
ComfyUI's own custom_nodes would be loaded by every server of that ComfyUI (then no old ID is served by this pack):
skipped, with the reason printed, as when no old pack is found.
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

from testkit import workflow_convert as wc
from testkit.comfyui_env import REPO
from testkit.old_api_table import load_table, served_ids
from testkit.old_pack import make_models, not_found_reason, old_pack_folder

SERVED = served_ids(load_table())
PROMPT_TIMEOUT = 600.0
MIN_WEIGHT_EFFECT = 2.0  # mean |difference| on the 0-255 scale; the stand-ins give far more at weight 1
RELATIVE_TOLERANCE = 1e-4  # as tests/host/test_migrate_server.py (measured there ~2e-6 of the largest latent)
REFERENCE = os.path.join(REPO, "example_workflows", "ipadapter_reference.png")
FACE_REFERENCE = os.path.join(REPO, "example_workflows", "ipadapter_face_reference.jpg")
STANDIN_PRESETS = ("STANDARD (medium strength)", "PLUS (high strength)")
WEIGHT_NAMES = ("weight", "weight_style", "weight_composition")  # 0 on every old node that has them = no term

pytestmark = pytest.mark.slow

# The old pack's examples that use only core nodes and served IDs; the others need nodes of other packs
# (ComfyUI_essentials' "+" nodes, Kolors' MZ_* loaders) or a model family the stand-ins do not have (CosXL edit).
EXAMPLES = ("ipadapter_simple", "ipadapter_advanced", "ipadapter_combine_embeds", "ipadapter_negative_image",
            "ipadapter_noise_injection", "ipadapter_weight_types", "ipadapter_weighted_embeds",
            "ipadapter_precise_weight_type", "ipadapter_faceid", "ipadapter_portrait", "ipadapter_faceid_batch",
            "ipadapter_ideal_faceid_config", "ipadapter_style_composition", "ipadapter_tiled",
            "ipadapter_precise_composition", "ipadapter_weights")


def _linked_old_pack(comfyui_path: str) -> str:
    folder, link = old_pack_folder(comfyui_path)
    if folder is None or not link:
        reason = (not_found_reason(comfyui_path) if folder is None else
                  f"ComfyUI_IPAdapter_plus is in {comfyui_path}'s own custom_nodes ({folder}): every server there "
                  "loads it, so this pack serves no old ID; point IPA_OLD_PACK at a copy outside it")
        print(f"\nSKIPPED: {reason}: the old pack's examples and latents not compared")
        pytest.skip(reason)
    return folder


def _skip_unless_served(*ids: str) -> None:
    missing = [i for i in ids if i not in SERVED]
    if missing:
        print(f"\nSKIPPED: {missing} not served by this pack")
        pytest.skip(f"{missing} not served")


# ---------------------------------------------------------------------------------------------- the old examples

@pytest.fixture(scope="module")
def examples_dir(comfyui_path) -> str:
    return os.path.join(_linked_old_pack(comfyui_path), "examples")


@pytest.fixture(scope="module")
def info(buffalo_server) -> dict:
    return buffalo_server.object_info()


def _old_types(ui: dict) -> set[str]:
    return {n["type"] for n in ui["nodes"]}


def _zero_weights(api: dict, info: dict) -> dict:
    out = copy.deepcopy(api)
    hit = 0
    for node in out.values():
        if node["class_type"] in SERVED:
            names = [n for n in WEIGHT_NAMES if n in info[node["class_type"]]["input"].get("required", {})]
            if names and node["class_type"] != "IPAdapterEncoder":  # the encoder's weight scales the embedding
                node["inputs"].update({n: 0.0 for n in names})
                hit += 1
    assert hit, "no old apply node in the graph"
    return out


def test_every_old_example_is_run_or_says_why(examples_dir, info):
    """The examples left out need nodes that neither ComfyUI nor this pack has (or a model the stand-ins lack)."""
    names = sorted(f[:-5] for f in os.listdir(examples_dir) if f.endswith(".json"))
    assert names, examples_dir
    left_out = {}
    for name in names:
        if name in EXAMPLES:
            continue
        with open(os.path.join(examples_dir, f"{name}.json"), encoding="utf-8") as f:
            ui = json.load(f)
        unknown = sorted(t for t in _old_types(ui) if t not in info and t not in wc.FRONTEND_ONLY)
        left_out[name] = unknown
    print("\nold examples not run (nodes this server lacks):", left_out)
    for name, unknown in left_out.items():
        assert unknown or name == "ipadapter_cosxl_edit", f"{name} needs no missing node: add it to EXAMPLES"


@pytest.mark.parametrize("name", EXAMPLES)
def test_old_example_runs_and_the_adapter_acts(buffalo_server, examples_dir, info, name):
    path = os.path.join(examples_dir, f"{name}.json")
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not in this old pack")
    with open(path, encoding="utf-8") as f:
        ui = json.load(f)
    _skip_unless_served(*(t for t in _old_types(ui) if t.startswith("IPA") or t == "PrepImageForClipVision"))
    api = wc.use_standins(wc.to_api(ui, info))
    face = any("FaceID" in n["class_type"] for n in api.values())
    for node in wc.nodes_of(api, "IPAdapterUnifiedLoader"):  # the stand-ins have base and plus adapters only
        if node["inputs"]["preset"] not in STANDIN_PRESETS:
            print(f"\n{name}: IPAdapterUnifiedLoader preset {node['inputs']['preset']!r} -> 'PLUS (high strength)' "
                  "(the stand-ins have no such adapter)")
            node["inputs"]["preset"] = "PLUS (high strength)"
    for node in wc.nodes_of(api, "LoadImage"):
        node["inputs"]["image"] = os.path.basename(FACE_REFERENCE if face else REFERENCE)
    run = buffalo_server.queue_ok(api, timeout=PROMPT_TIMEOUT)
    off = buffalo_server.queue_ok(_zero_weights(api, info), timeout=PROMPT_TIMEOUT)
    on_images, off_images = run.images + run.previews, off.images + off.previews
    assert on_images and len(on_images) == len(off_images), (name, run.history.get("outputs"))
    effect = max(float(np.abs(a.astype(np.float64) - b).mean()) for a, b in zip(on_images, off_images))
    print(f"\n{name}: {len(on_images)} images, largest mean |weights as saved - weights 0| = {effect:.2f}")
    assert effect > MIN_WEIGHT_EFFECT, f"{name}: the adapter hardly changes the images ({effect:.3f})"


# ---------------------------------------------------------------------------------------------- old pack vs this pack

@pytest.fixture(scope="module")
def two_servers(comfyui_path, tmp_path_factory):
    """(a server with the old pack, a server with this pack serving the old IDs), on the same models."""
    folder = _linked_old_pack(comfyui_path)
    from testkit.comfy_server import ComfyServer

    base = make_models(comfyui_path, str(tmp_path_factory.mktemp("old_pack_models")))
    workdir = str(tmp_path_factory.mktemp("old_pack_server"))
    os.makedirs(os.path.join(workdir, "custom_nodes"))
    os.symlink(folder, os.path.join(workdir, "custom_nodes", "ComfyUI_IPAdapter_plus"))
    with ComfyServer(comfyui_path, models_dir=base, helper_nodes=True, cpu=True, quiet=True, workdir=workdir) as old, \
            ComfyServer(comfyui_path, models_dir=base, helper_nodes=True, cpu=True, quiet=True) as ours:
        module = old.object_info("IPAdapterAdvanced").get("IPAdapterAdvanced", {}).get("python_module", "")
        if "ComfyUI_IPAdapter_plus" not in module:
            pytest.fail(f"ComfyUI_IPAdapter_plus at {folder} did not load (IPAdapterAdvanced from {module!r}):\n"
                        f"{old.log_tail(60)}")
        for srv in (old, ours):
            srv.copy_input(REFERENCE)
        yield old, ours


def _definition(entry: dict) -> dict:
    """What a client sees of one node in /object_info, less the lists of files on disk."""
    def inputs(section: str) -> list:
        out = []
        for name in entry.get("input_order", {}).get(section, []):
            spec = entry["input"][section][name]
            kind = spec[0]
            options = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
            options.pop("tooltip", None)
            if isinstance(kind, list) and any(str(k).endswith((".safetensors", ".bin", ".ipadpt")) for k in kind):
                kind = "<files>"
            out.append((name, kind, options))
        return out
    return {"display_name": entry["display_name"], "category": entry["category"], "output": list(entry["output"]),
            "output_name": list(entry["output_name"]), "output_node": entry.get("output_node", False),
            "required": inputs("required"), "optional": inputs("optional")}


def test_every_served_id_is_defined_as_the_old_pack_defines_it(two_servers):
    """The old pack's own /object_info against this pack's, for every served ID (the typed-in table checked
    against the source it was typed from)."""
    old_server, ours = two_servers
    old_info, our_info = old_server.object_info(), ours.object_info()
    differ = {}
    for node_id in SERVED:
        assert node_id in old_info, f"{node_id} is not an ID of the old pack"
        if "ComfyUI_IPAdapter_plus" in our_info[node_id].get("python_module", ""):
            pytest.fail(f"{node_id} of 'this pack' comes from the old pack")
        want, got = _definition(old_info[node_id]), _definition(our_info[node_id])
        if want != got:
            differ[node_id] = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
    print(f"\n{len(SERVED)} served IDs compared with the old pack's /object_info; differing: {sorted(differ)}")
    assert not differ, json.dumps(differ, indent=1, default=str)[:6000]


ADAPTERS = {"base": "ip-adapter_sd15_test.safetensors", "plus": "ip-adapter-plus_sd15_test.safetensors"}


def _old_graph(case: str) -> tuple[dict, str]:
    """An old-ID API graph on make_models' files, ending in SaveLatent; (graph, the apply node's class)."""
    kind, apply, inputs, extra = (*CASES[case], {})[:4]
    w = wc.Graph()
    ckpt = w.add("CheckpointLoaderSimple", ckpt_name="ipa_standin_sd15.safetensors")
    clip_vision = w.add("IPATest_CLIPVisionLoaderJSON", clip_name="ipa_clip_vision_224.safetensors")
    ipadapter = w.add("IPAdapterModelLoader", ipadapter_file=ADAPTERS[kind])
    image = w.add("LoadImage", image=os.path.basename(REFERENCE))
    if "size" in extra:  # a reference of another shape (the tiled geometry depends on it)
        width, height = extra["size"]
        image = w.add("ImageScale", image=image, upscale_method="bicubic", width=width, height=height, crop="disabled")
    inverted = w.add("ImageInvert", image=image)
    batch = 1
    common = {"model": ckpt, "ipadapter": ipadapter, "start_at": 0.0, "end_at": 1.0}
    if "mask_size" in extra:  # the reference's red channel as an attention mask of another shape
        width, height = extra["mask_size"]
        scaled = w.add("ImageScale", image=image, upscale_method="bicubic", width=width, height=height,
                       crop="disabled")
        common["attn_mask"] = w.add("ImageToMask", image=scaled, channel="red")
    if apply == "IPAdapterEmbeds":  # Krita's shape: each reference encoded with its strength, concat, Embeds
        embeds = [w.add("IPAdapterEncoder", ipadapter=ipadapter, image=im, weight=wt, clip_vision=clip_vision)
                  for im, wt in ((image, 1.0), (inverted, 0.7))]
        both = w.add("IPAdapterCombineEmbeds", embed1=embeds[0], embed2=embeds[1], method="concat")
        model = w.add(apply, pos_embed=both, clip_vision=clip_vision, **{"attn_mask": None, **common}, **inputs)
    else:
        if apply.endswith("Batch"):
            image, batch = w.add("ImageBatch", image1=image, image2=inverted), 2
        model = w.add(apply, image=image, clip_vision=clip_vision, **common, **inputs)
    pos = w.add("CLIPTextEncode", text="a mountain lake at sunset", clip=[ckpt[0], 1])
    neg = w.add("CLIPTextEncode", text="blurry", clip=[ckpt[0], 1])
    latent = w.add("EmptyLatentImage", width=64, height=64, batch_size=batch)
    sampled = w.add("KSampler", model=model, seed=7, steps=3, cfg=6.0, sampler_name="euler", scheduler="normal",
                    positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    w.add("SaveLatent", samples=sampled, filename_prefix=f"old_api_{case.replace(' ', '_')}")
    return w.root, apply


def _plain(case: str, graph: dict, apply: str) -> dict:
    """The same graph without the adapter's effect: weight 0 (and a precise node's boost 0, which acts alone)."""
    extra = (*CASES[case], {})[3]
    return wc.set_inputs(graph, apply, weight=0.0, **extra.get("plain", {}))


ADVANCED = {"weight": 1.0, "combine_embeds": "concat", "embeds_scaling": "V only"}
TILED = {"weight": 0.9, "weight_type": "linear", "sharpening": 0.0, "embeds_scaling": "V only"}
CASES = {  # case -> (adapter, old apply ID, its other inputs[, extra: "size" / "mask_size" (w, h), "plain" inputs])
    "Advanced base linear": ("base", "IPAdapterAdvanced", {**ADVANCED, "weight_type": "linear"}),
    "Advanced plus style transfer K+V": ("plus", "IPAdapterAdvanced",
                                         {**ADVANCED, "weight_type": "style transfer", "embeds_scaling": "K+V"}),
    "Advanced plus ease in, average": ("plus", "IPAdapterAdvanced",
                                       {**ADVANCED, "weight_type": "ease in", "combine_embeds": "average"}),
    "Encoder, Combine concat, Embeds (Krita)": ("plus", "IPAdapterEmbeds",
                                                {"weight": 0.9, "weight_type": "linear", "embeds_scaling": "V only"}),
    "Batch, two images, two latents": ("plus", "IPAdapterBatch",
                                       {"weight": 0.8, "weight_type": "linear", "embeds_scaling": "V only",
                                        "encode_batch_size": 0}),
    "Precise Style Transfer, style_boost 1.5": ("plus", "IPAdapterPreciseStyleTransfer",
                                                {**ADVANCED, "style_boost": 1.5}, {"plain": {"style_boost": 0.0}}),
    "Precise Style Transfer at weight 0 (the boost acts alone)": (
        "plus", "IPAdapterPreciseStyleTransfer", {**ADVANCED, "weight": 0.0, "style_boost": 1.0},
        {"plain": {"style_boost": 0.0}}),
    "Precise Composition, composition_boost 0.3, K+V": (
        "plus", "IPAdapterPreciseComposition", {**ADVANCED, "composition_boost": 0.3, "embeds_scaling": "K+V"},
        {"plain": {"composition_boost": 0.0}}),
    "Precise Composition Batch, two images, two latents": (
        "plus", "IPAdapterPreciseCompositionBatch", {**ADVANCED, "composition_boost": 0.0}),
    "Mad Scientist, layer_weights": ("plus", "IPAdapterMS", {**ADVANCED, "weight_type": "linear", "weight": 0.9,
                                                             "weight_faceidv2": 1.0,
                                                             "layer_weights": "0:1.0, 3:0.5, 5:1.2, 12:0.8"}),
    "Mad Scientist, layer_weights with style transfer precise": (
        "base", "IPAdapterMS", {**ADVANCED, "weight_type": "style transfer precise", "weight_faceidv2": 1.0,
                                "layer_weights": "4:0.6, 5:1.0, 9:1.0"}),
    "Tiled, square reference (4 tiles)": ("plus", "IPAdapterTiled", {**TILED, "combine_embeds": "concat"}),
    "Tiled, wide reference 700x300, sharpening 0.4, base": (
        "base", "IPAdapterTiled", {**TILED, "combine_embeds": "average", "sharpening": 0.4,
                                   "weight_type": "ease out"}, {"size": (700, 300)}),
    "Advanced with a 7:3 attn_mask": ("plus", "IPAdapterAdvanced", {**ADVANCED, "weight_type": "linear"},
                                     {"mask_size": (700, 300)}),
    "Tiled Batch, two images, two latents": ("plus", "IPAdapterTiledBatch", {**TILED, "encode_batch_size": 0}),
    "ClipVision Enhancer, 2 x 2 tiles, ratio 0.6": (
        "plus", "IPAdapterClipVisionEnhancer", {**ADVANCED, "weight_type": "linear", "enhance_tiles": 2,
                                                "enhance_ratio": 0.6}),
    "ClipVision Enhancer Batch, 3 x 3 tiles, two images, two latents": (
        "plus", "IPAdapterClipVisionEnhancerBatch", {"weight": 0.8, "weight_type": "ease in",
                                                     "embeds_scaling": "K+V", "enhance_tiles": 3,
                                                     "enhance_ratio": 0.5, "encode_batch_size": 1}),
}


def _latent(server, graph: dict):
    import torch
    from safetensors.torch import load_file

    run = server.queue_ok(graph, timeout=PROMPT_TIMEOUT)
    (ref,) = [r for out in run.history["outputs"].values() for r in out.get("latents", [])]
    path = os.path.join(server.output_dir, ref.get("subfolder", ""), ref["filename"])
    return load_file(path)["latent_tensor"].to(torch.float64)


@pytest.mark.parametrize("case", CASES)
def test_the_old_pack_and_this_pack_give_the_same_latents(two_servers, case):
    old_server, ours = two_servers
    graph, apply = _old_graph(case)
    _skip_unless_served(*{n["class_type"] for n in graph.values() if n["class_type"].startswith("IPAdapter")})
    latent_old, latent_ours = _latent(old_server, graph), _latent(ours, graph)
    plain = _plain(case, graph, apply)
    latent_plain = _latent(old_server, plain)
    scale = float(latent_old.abs().max())
    effect = float((latent_old - latent_plain).abs().max())
    delta = float((latent_old - latent_ours).abs().max())
    print(f"\n{case}: max |old pack - this pack| = {delta:.3g}, adapter effect max |weight - weight 0| = "
          f"{effect:.3g}, max |latent| = {scale:.3g}")
    tolerance = RELATIVE_TOLERANCE * scale
    assert effect > 100 * tolerance, f"the adapter hardly changes the latents ({effect:.3g}): no test"
    assert delta <= tolerance, f"max |old pack - this pack| = {delta:.3g} > {tolerance:.3g} ({case})"


def test_beside_the_old_pack_this_packs_own_nodes_still_work(two_servers):
    """The old pack installed beside this one: the server starts, the old IDs are the old pack's, this pack's IPA_*
    nodes are registered from this pack and run: an IPA Apply graph gives the latents it gives without the old pack."""
    import torch

    old_server, ours = two_servers
    info = old_server.object_info()
    assert "ComfyUI_IPAdapter_plus" in info["IPAdapter"]["python_module"]
    assert "ComfyUI_IPAdapter_plus" not in info["IPA_Apply"]["python_module"]
    w = wc.Graph()
    ckpt = w.add("CheckpointLoaderSimple", ckpt_name="ipa_standin_sd15.safetensors")
    clip_vision = w.add("IPATest_CLIPVisionLoaderJSON", clip_name="ipa_clip_vision_224.safetensors")
    adapter = w.add("IPA_ModelLoader", ipadapter_file=ADAPTERS["plus"])
    image = w.add("LoadImage", image=os.path.basename(REFERENCE))
    model = w.add("IPA_Apply", model=ckpt, ipadapter=adapter, image=image, clip_vision=clip_vision, weight=0.8,
                  start_at=0.0, end_at=1.0)
    pos = w.add("CLIPTextEncode", text="a mountain lake at sunset", clip=[ckpt[0], 1])
    neg = w.add("CLIPTextEncode", text="blurry", clip=[ckpt[0], 1])
    latent = w.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = w.add("KSampler", model=model, seed=7, steps=3, cfg=6.0, sampler_name="euler", scheduler="normal",
                    positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    w.add("SaveLatent", samples=sampled, filename_prefix="ipa_beside_old_pack")
    beside, alone = _latent(old_server, w.root), _latent(ours, w.root)
    assert torch.equal(beside, alone)
