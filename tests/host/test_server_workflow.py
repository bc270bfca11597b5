"""Every example workflow, run end to end through a real ComfyUI server (HTTP /prompt) on random stand-in models.

The server is started once for the module (testkit.comfy_server.ComfyServer) with this pack and the test-only
helper nodes as custom node folders; the stand-ins are generated once and cached in <repo>/.standins/.
Skipped, with the reason, when no ComfyUI is found (testkit.comfyui_env.find_comfyui).

The first tests check the example files themselves and need no ComfyUI.
"""
from __future__ import annotations

import glob
import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from testkit import standins
from testkit import workflow_convert as wc

EXAMPLES = sorted(glob.glob(os.path.join(REPO, "example_workflows", "*.json")))
SIMPLE = os.path.join(REPO, "example_workflows", "ipadapter_simple.json")
FLUX = os.path.join(REPO, "example_workflows", "ipadapter_flux_xlabs.json")
INSTANTX = os.path.join(REPO, "example_workflows", "ipadapter_flux_instantx.json")
FLUX_BASE_FILES = [("diffusion_models", "flux1-dev.safetensors"), ("text_encoders", "clip_l.safetensors"),
                   ("text_encoders", "t5xxl_fp16.safetensors"), ("vae", "ae.safetensors")]
FLUX_FILES = {  # each Flux example: FLUX.1-dev's files, its adapter and its encoder
    FLUX: FLUX_BASE_FILES + [("ipadapter", "flux-ip-adapter-v2.safetensors"),
                             ("clip_vision", "clip-vit-large-patch14.safetensors")],
    INSTANTX: FLUX_BASE_FILES + [("ipadapter", "flux-ip-adapter-instantx.bin"),
                                 ("clip_vision", "siglip-so400m-patch14-384.safetensors")],
}
REFERENCE = os.path.join(REPO, "example_workflows", "ipadapter_reference.png")
PACK_NODES = ("IPA_ModelLoader", "IPA_Encode", "IPA_Apply", "IPA_ApplySimple")
# weight 1 vs weight 0 on the stand-ins: measured ~40 (0-255 scale); anything above 2 shows the adapter acts.
MIN_WEIGHT_EFFECT = 2.0
PROMPT_TIMEOUT = 600.0

pytestmark = pytest.mark.slow


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------- no ComfyUI needed

def test_examples_exist():
    names = [os.path.basename(p) for p in EXAMPLES]
    assert "ipadapter_simple.json" in names and "ipadapter_encode_apply.json" in names, names


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_is_ui_format_with_real_file_names(path):
    """The template browser opens the UI ("workflow") format; loaders name the published files."""
    wf = _load(path)
    assert wc.is_ui_format(wf), f"{path} is not a UI-format workflow (nodes + links)"
    if any(n["type"] == "UNETLoader" for n in wf["nodes"]):  # Flux: the separate files of FLUX.1-dev
        assert sorted(wc.model_files(wf)) == sorted(FLUX_FILES[path]), wc.model_files(wf)
        _check_reference_images(wf)
        return
    files = dict(wc.model_files(wf))
    assert files["checkpoints"] == "v1-5-pruned-emaonly.safetensors"
    unified = [n for n in wf["nodes"] if n["type"] == "IPA_UnifiedLoader"]
    if unified:  # it finds both files by their headers: no file name to check, 'auto' for both
        assert all(n["widgets_values"][1:] == ["auto", "auto"] for n in unified), unified
    else:
        assert files["ipadapter"].startswith("ip-adapter")
        if any(n["type"] == "CLIPVisionLoader" for n in wf["nodes"]):
            assert files["clip_vision"] == "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
    faces = [n for n in wf["nodes"] if n["type"] == "IPA_FaceModelLoader"]
    if faces:  # FaceID: the buffalo_l face models, and a published FaceID adapter
        assert [n["widgets_values"][0] for n in faces] == ["buffalo_l"] and "faceid" in files["ipadapter"]
    _check_reference_images(wf)


def _check_reference_images(wf: dict) -> None:
    images = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "LoadImage"]
    assert images and all(os.path.isfile(os.path.join(REPO, "example_workflows", i)) for i in images), images
    assert os.path.getsize(REFERENCE) < 100_000


@pytest.mark.parametrize("path", sorted(FLUX_FILES), ids=os.path.basename)
def test_flux_example_is_wired_as_flux_wants_it(path):
    """FLUX.1-dev's settings: cfg 1 with FluxGuidance, 16-channel latents (EmptySD3LatentImage), DualCLIPLoader type
    flux; the adapter (XLabs, InstantX) through IPA Apply with image + CLIP vision; every loader links its download;
    the InstantX note says the SigLIP file must be the full one, with its pooling head."""
    wf = _load(path)
    by_type = {n["type"]: n for n in wf["nodes"]}
    assert by_type["KSampler"]["widgets_values"][3] == 1.0 and by_type["FluxGuidance"]["widgets_values"] == [3.5]
    assert by_type["DualCLIPLoader"]["widgets_values"][2] == "flux" and "EmptySD3LatentImage" in by_type
    linked = {i["name"] for i in by_type["IPA_Apply"]["inputs"] if i.get("link") is not None}
    assert linked == {"model", "ipadapter", "image", "clip_vision"}, linked
    for node in wf["nodes"]:
        if node["type"] in wc.LOADERS:
            listed = [m["name"] for m in node["properties"]["models"]]
            assert listed == [v for folder, v in wc.model_files({"nodes": [node], "links": []})], node["type"]
    note = next(n for n in wf["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    assert all(name in note for _, name in FLUX_FILES[path]) and "cfg at 1.0" in note
    if path == INSTANTX:
        assert by_type["IPA_Apply"]["widgets_values"][0] == 0.7
        assert "full `model.safetensors` of google/siglip-so400m-patch14-384" in note and "pooling head" in note
        assert "vision_model.head" in note


def test_convert_maps_widgets_and_skips_frontend_values():
    """control_after_generate after the seed and the upload button after LoadImage's file are not inputs."""
    info = {
        "KSampler": {"input": {"required": {
            "model": ["MODEL"], "seed": ["INT", {"control_after_generate": True}], "steps": ["INT", {}],
            "cfg": ["FLOAT", {}], "sampler_name": [["euler", "dpmpp_2m"]], "scheduler": [["normal", "karras"]],
            "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
            "denoise": ["FLOAT", {}]}},
            "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                                         "negative", "latent_image", "denoise"]}},
        "LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]}}},
    }
    wf = {"nodes": [
        {"id": 3, "type": "KSampler", "mode": 0, "widgets_values": [7, "randomize", 20, 6.5, "dpmpp_2m", "karras", 1.0],
         "inputs": [{"name": "model", "link": 1}]},
        {"id": 6, "type": "LoadImage", "mode": 0, "widgets_values": ["a.png", "image"], "inputs": []},
        {"id": 9, "type": "MarkdownNote", "mode": 0, "widgets_values": ["text"]},
        {"id": 10, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "link": 2}]},
        {"id": 11, "type": "CheckpointLoaderSimple", "mode": 0, "widgets_values": ["m.safetensors"], "inputs": []},
    ], "links": [[1, 10, 0, 3, 0, "MODEL"], [2, 11, 0, 10, 0, "MODEL"]]}
    info["CheckpointLoaderSimple"] = {"input": {"required": {"ckpt_name": [["m.safetensors"]]}}}
    api = wc.to_api(wf, info)
    assert set(api) == {"3", "6", "11"}
    assert api["3"]["inputs"] == {"seed": 7, "steps": 20, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras",
                                  "denoise": 1.0, "model": ["11", 0]}
    assert api["6"]["inputs"] == {"image": "a.png"}


# ---------------------------------------------------------------------------------------------- the real server

@pytest.fixture(scope="module")
def server(standin_server):
    return standin_server


@pytest.fixture(scope="module")
def simple_graph(server) -> dict:
    return wc.use_standins(server.convert(_load(SIMPLE)))


def _run_ok(server, graph: dict):
    run = server.queue_ok(graph, timeout=PROMPT_TIMEOUT)
    assert run.images, f"no image came back; outputs: {run.history.get('outputs')}"
    return run


def test_pack_imported_cleanly(server):
    log = server.log_text()
    ours = ("comfyui_ip_adapter", "ipa_test_helper_nodes")
    bad = [line for line in log.splitlines()
           if ("IMPORT FAILED" in line or "Cannot import" in line) and any(name in line for name in ours)]
    assert not bad, "the pack failed to import:\n" + "\n".join(bad)
    info = server.object_info()
    missing = [n for n in PACK_NODES + ("IPATest_CLIPVisionLoaderJSON",) if n not in info]
    assert not missing, f"nodes missing from /object_info: {missing}"


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_workflow_runs(server, path):
    graph = wc.use_standins(server.convert(_load(path)))
    assert wc.nodes_of(graph, *wc.ADAPTER_CLASSES), "the example applies no adapter"
    run = _run_ok(server, graph)
    assert run.images[0].shape == (64, 64, 3)


def test_simple_weight_changes_the_image(server, simple_graph):
    from testkit.run_workflow import mean_abs_diff

    one = _run_ok(server, wc.set_adapter_weight(simple_graph, 1.0)).images[0]
    zero = _run_ok(server, wc.set_adapter_weight(simple_graph, 0.0)).images[0]
    diff = mean_abs_diff(one, zero)
    assert diff > MIN_WEIGHT_EFFECT, f"weight 1 vs 0: mean abs pixel difference {diff:.3f} <= {MIN_WEIGHT_EFFECT}"


def _without_adapters(graph: dict) -> dict:
    """Copy whose samplers take the model from before the first IPA apply node (the unpatched model)."""
    out = json.loads(json.dumps(graph))
    for node in wc.nodes_of(out, "KSampler"):
        src = node["inputs"]["model"]
        while out[src[0]]["class_type"] in wc.ADAPTER_CLASSES:
            src = out[src[0]]["inputs"]["model"]
        node["inputs"]["model"] = src
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_weight0_equals_the_unpatched_model(server, path):
    """Every adapter at weight 0 gives exactly the pixels of the same graph without the adapters."""
    graph = wc.use_standins(server.convert(_load(path)))
    plain = _run_ok(server, _without_adapters(graph)).images[0]
    zero = _run_ok(server, wc.set_adapter_weight(graph, 0.0)).images[0]
    assert (plain == zero).all(), f"weight 0 changed the image (max abs diff {abs(plain.astype(int) - zero).max()})"


def test_simple_rerun_is_identical(server, simple_graph):
    """Same prompt again, from another client after POST /free (nothing cached): the very same pixels."""
    graph = wc.set_adapter_weight(simple_graph, 1.0)
    first = _run_ok(server, graph)
    server.free()
    second = server.queue(graph, timeout=PROMPT_TIMEOUT, client_id="rerun-after-free")
    assert second.status == "success", second.error
    sampler = [nid for nid, n in graph.items() if n["class_type"] == "KSampler"]
    assert not set(sampler) & set(second.cached_nodes), f"the sampler was served from cache: {second.cached_nodes}"
    assert (first.images[0] == second.images[0]).all(), "re-running the same prompt changed the image"


FACEID_EXAMPLES = [p for p in EXAMPLES if "faceid" in os.path.basename(p)]


@pytest.mark.parametrize("path", FACEID_EXAMPLES, ids=os.path.basename)
def test_faceid_example_finds_the_face_and_acts(server, path):
    """The FaceID examples (planted-face detector stand-in): the preview shows the aligned face crop, the adapter
    changes the picture, and on IPA Apply FaceID lora_strength 0 differs from the example's LoRA strength."""
    from testkit.run_workflow import mean_abs_diff

    graph = wc.use_standins(server.convert(_load(path)))
    run = _run_ok(server, graph)
    assert run.previews and run.previews[0].shape == (224, 224, 3) and run.previews[0].mean() > 5
    zero = _run_ok(server, wc.set_adapter_weight(graph, 0.0)).images[0]
    assert mean_abs_diff(run.images[0], zero) > MIN_WEIGHT_EFFECT
    faceid = wc.nodes_of(graph, "IPA_ApplyFaceID")
    if faceid and "portrait" not in path:
        for node in faceid:
            node["inputs"]["lora_strength"] = 0.0
        no_lora = _run_ok(server, graph).images[0]
        assert mean_abs_diff(run.images[0], no_lora) > 0, "the adapter's LoRA changes nothing"


# ---------------------------------------------------------------------------------------------- Flux (XLabs)
# The Flux example runs on the Flux stand-ins (testkit/flux_standins.py) through the test-only loaders
# IPATest_UNETLoaderJSON / IPATest_DualCLIPLoaderJSON (use_standins); FluxGuidance, KSampler, VAELoader, VAEDecode and
# the pack's nodes are the real ones.

@pytest.fixture(scope="module")
def flux_graph(server) -> dict:
    graph = wc.use_standins(server.convert(_load(FLUX)))
    assert wc.nodes_of(graph, "IPATest_UNETLoaderJSON") and wc.nodes_of(graph, "IPATest_DualCLIPLoaderJSON")
    assert {n["inputs"]["ipadapter_file"] for n in wc.nodes_of(graph, "IPA_ModelLoader")} == {standins.ADAPTER_XLABS}
    return graph


def test_flux_example_weight_changes_the_image(server, flux_graph):
    """The example's weight (0.7) against weight 0: the XLabs term changes the picture."""
    from testkit.run_workflow import mean_abs_diff

    example = _run_ok(server, flux_graph).images[0]
    zero = _run_ok(server, wc.set_adapter_weight(flux_graph, 0.0)).images[0]
    diff = mean_abs_diff(example, zero)
    assert diff > MIN_WEIGHT_EFFECT, f"weight 0.7 vs 0: mean abs pixel difference {diff:.3f} <= {MIN_WEIGHT_EFFECT}"


def _named_error(run, graph: dict, class_type: str, display: str, pattern: str) -> str:
    """The run failed at the one ``class_type`` node with a pack error whose message starts with the node's name and
    matches ``pattern``; returns the message."""
    from testkit.reliability import exec_error

    err = exec_error(run)
    assert run.status == "error" and err, f"expected an execution error, got {run.status}: {run.error}"
    node_id = next(nid for nid, n in graph.items() if n["class_type"] == class_type)
    msg = err.get("exception_message", "")
    assert (err.get("node_id"), err.get("node_type")) == (node_id, class_type), (err.get("node_type"), msg)
    assert msg.startswith(display) and re.search(pattern, msg), msg
    return msg


def test_flux_wrong_adapter_is_named_through_the_server(server, flux_graph, simple_graph):
    """POST /prompt with the wrong adapter: an SD1.5 adapter on the Flux model, the XLabs adapter on the SD1.5
    checkpoint; each fails at the apply node saying why, and the server goes on serving the good Flux graph."""
    sd15_on_flux = wc.set_inputs(flux_graph, "IPA_ModelLoader", ipadapter_file=standins.ADAPTER)
    _named_error(server.queue(sd15_on_flux, timeout=PROMPT_TIMEOUT), sd15_on_flux, "IPA_Apply", "IPA Apply",
                 r"no UNet cross-attention layers \(is it a DiT such as Flux")
    xlabs_on_sd15 = wc.set_inputs(simple_graph, "IPA_ModelLoader", ipadapter_file=standins.ADAPTER_XLABS)
    _named_error(server.queue(xlabs_on_sd15, timeout=PROMPT_TIMEOUT), xlabs_on_sd15, "IPA_ApplySimple",
                 "IPA Apply (simple)", r"XLabs Flux v1.*for Flux models.*no Flux blocks")
    _run_ok(server, flux_graph)


# ---------------------------------------------------------------------------------------------- Flux (InstantX)
# The InstantX example on the same Flux stand-ins, with the InstantX stand-in adapter (a site per double and single
# block of the stand-in Flux) and the tiny SigLIP stand-in, whose file holds the pooling head the pack reads.

@pytest.fixture(scope="module")
def instantx_graph(server) -> dict:
    graph = wc.use_standins(server.convert(_load(INSTANTX)))
    assert {n["inputs"]["ipadapter_file"] for n in wc.nodes_of(graph, "IPA_ModelLoader")} == {standins.ADAPTER_INSTANTX}
    assert {n["inputs"]["clip_name"] for n in wc.nodes_of(graph, "IPATest_CLIPVisionLoaderJSON")} == {standins.SIGLIP}
    return graph


def test_instantx_example_weight_changes_the_image(server, instantx_graph):
    """The example's weight (0.7) against weight 0: the InstantX term (SigLIP's pooled output, read through the
    pooling head in the stand-in's own file) changes the picture."""
    from testkit.run_workflow import mean_abs_diff

    example = _run_ok(server, instantx_graph).images[0]
    zero = _run_ok(server, wc.set_adapter_weight(instantx_graph, 0.0)).images[0]
    diff = mean_abs_diff(example, zero)
    assert diff > MIN_WEIGHT_EFFECT, f"weight 0.7 vs 0: mean abs pixel difference {diff:.3f} <= {MIN_WEIGHT_EFFECT}"


def test_instantx_with_a_headless_siglip_names_the_file_through_the_server(server, instantx_graph):
    """POST /prompt with a SigLIP file that has no pooling head (vision_model.head.*): the apply node fails naming
    that file and the head; the server goes on serving the good graph."""
    headless = wc.set_inputs(instantx_graph, "IPATest_CLIPVisionLoaderJSON", clip_name=standins.SIGLIP_HEADLESS)
    msg = _named_error(server.queue(headless, timeout=PROMPT_TIMEOUT), headless, "IPA_Apply", "IPA Apply",
                       r"input 'clip_vision'.*'" + re.escape(standins.SIGLIP_HEADLESS) + r"'.*no pooling head")
    assert "vision_model.head" in msg and "google/siglip-so400m-patch14-384" in msg, msg
    _run_ok(server, instantx_graph)
