"""The ComfyUI_IPAdapter_plus node IDs this pack serves (nodes/old_api/), through a real server: /object_info equals
the old pack's definitions (tests/host/old_pack_api.json, typed in from the old pack's source), API graphs shaped
exactly as Krita AI Diffusion builds them (ai_diffusion/backend/comfy_workflow.py) run on the stand-ins and differ
from the same graph at weight 0, and with an old pack in custom_nodes none of its IDs is served.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from testkit import workflow_convert as wc
from testkit.old_api_table import load_table, served_ids

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE = load_table()
SERVED = served_ids(TABLE)
PROMPT_TIMEOUT = 600.0
MIN_WEIGHT_EFFECT = 2.0  # mean |difference| on the 0-255 scale; the stand-ins give far more at weight 1

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def info(standin_server) -> dict:
    return standin_server.object_info()


def _combo(spec: list) -> list | None:
    if isinstance(spec[0], list):
        return spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return opts.get("options") if spec[0] == "COMBO" else None


@pytest.mark.parametrize("node_id", SERVED)
def test_object_info_equals_the_old_pack_definition(info, node_id):
    want, got = TABLE[node_id], info.get(node_id)
    assert got is not None, f"{node_id} is not served"
    assert got["display_name"] == want["display_name"] and got["category"] == want["category"]
    assert list(got["output"]) == want["output"] and list(got["output_name"]) == want["output_name"]
    for section in ("required", "optional"):
        names = [entry[0] for entry in want[section]]
        assert list(got.get("input_order", {}).get(section, [])) == names, (node_id, section)
        for name, kind, *options in want[section]:
            spec = got["input"][section][name]
            where = f"{node_id}.{name}"
            if kind == "<files in the ipadapter folders>":
                assert _combo(spec) == _combo(info["IPA_ModelLoader"]["input"]["required"]["ipadapter_file"]), where
            elif where == "IPAdapterInsightFaceLoader.model_name":  # TABLE["_served"]: the old two, then on disk
                served = _combo(spec)
                assert served[:2] == kind and served == _combo(
                    info["IPA_FaceModelLoader"]["input"]["required"]["model_name"]), (where, served)
            elif kind == "<.ipadpt files in the input folder>":  # TABLE["_served"]: then this pack's saved embeds
                served = _combo(spec)
                assert isinstance(served, list) and all(
                    n.endswith(".ipadpt") or (n.startswith("ipadapter_embeds/") and n.endswith(".safetensors [output]"))
                    for n in served), (where, served)
            elif isinstance(kind, list):
                assert _combo(spec) == kind, where
            else:
                assert spec[0] == kind, where
            for key, value in (options[0] if options else {}).items():
                assert spec[1].get(key) == value, (where, key, spec[1])


def test_the_log_names_the_served_ids_once(standin_server):
    lines = [ln for ln in standin_server.log_text().splitlines() if "ComfyUI_IPAdapter_plus is not installed" in ln]
    assert len(lines) == 1, lines
    assert all(node_id in lines[0] for node_id in SERVED), lines[0]


# ---------------------------------------------------------------------------------------------- Krita's graphs


def _krita_graph(references: int = 1, weight_type: str = "linear", mask: bool = False, face: bool = False,
                 apply: str = "IPAdapterEmbeds", batch: int = 1) -> dict:
    """Krita AI Diffusion's apply_ip_adapter (backend/workflow.py) for SD1.5: encode each reference with its
    strength, combine with concat when there are several, IPAdapterEmbeds at weight 1; or its FaceID branch."""
    w = wc.Graph()
    ckpt = w.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    model, clip, vae = ckpt, [ckpt[0], 1], [ckpt[0], 2]
    pos = w.add("CLIPTextEncode", text="a photo", clip=clip)
    neg = w.add("CLIPTextEncode", text="", clip=clip)
    clip_vision = w.add("CLIPVisionLoader", clip_name="clip-vision_vit-h.safetensors")
    attn_mask = None
    if mask:
        attn_mask = w.add("ImageToMask", image=w.add("LoadImage", image="ipadapter_reference.png"), channel="red")
    if face:
        ip_adapter = w.add("IPAdapterModelLoader", ipadapter_file="ip-adapter-faceid-plusv2_sd15.bin")
        insight_face = w.add("IPAdapterInsightFaceLoader", provider="CPU", model_name="buffalo_l")
        image = w.add("LoadImage", image="ipadapter_face_reference.jpg")
        if batch > 1:  # one face per latent
            image = w.add("ImageBatch", image1=image, image2=image)
        weight = 0.8
        face_apply = "IPAdapterFaceID" if apply == "IPAdapterEmbeds" else apply
        model = w.add(face_apply, model=model, ipadapter=ip_adapter, image=image, clip_vision=clip_vision,
                      insightface=insight_face, weight=weight, weight_faceidv2=weight * 2, weight_type="linear",
                      combine_embeds="concat", start_at=0.0, end_at=1.0, attn_mask=attn_mask,
                      embeds_scaling="V only")
    else:
        ip_adapter = w.add("IPAdapterModelLoader", ipadapter_file="ip-adapter-plus_sd15.safetensors")
        embeds = []
        for i in range(references):
            image = w.add("LoadImage", image="ipadapter_reference.png")
            if i:
                image = w.add("ImageInvert", image=image)
            out = w.add("IPAdapterEncoder", image=image, weight=0.7 if i else 1.0, ipadapter=ip_adapter,
                        clip_vision=clip_vision)
            embeds.append(out)
        combined = (w.add("IPAdapterCombineEmbeds", method="concat",
                          **{f"embed{i + 1}": e for i, e in enumerate(embeds)}) if len(embeds) > 1 else embeds[0])
        model = w.add(apply, model=model, ipadapter=ip_adapter, pos_embed=combined,
                      clip_vision=clip_vision, weight=1.0, weight_type=weight_type, embeds_scaling="V only",
                      start_at=0.0, end_at=1.0, attn_mask=attn_mask)
    latent = w.add("EmptyLatentImage", width=512, height=512, batch_size=batch)
    sampled = w.add("KSampler", model=model, seed=1, steps=20, cfg=5.0, sampler_name="euler", scheduler="normal",
                    positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    w.add("SaveImage", images=w.add("VAEDecode", samples=sampled, vae=vae), filename_prefix="krita")
    return wc.use_standins(w.root)


def _image(server, graph: dict) -> np.ndarray:
    run = server.queue_ok(graph, timeout=PROMPT_TIMEOUT)
    assert run.images, run.history.get("outputs")
    return run.images[0].astype(np.float64)


KRITA = {
    "one reference": {},
    "two references, concat": {"references": 2},
    "attn_mask": {"mask": True},
    "style transfer": {"weight_type": "style transfer"},
    "composition": {"weight_type": "composition"},
    "FaceID": {"face": True},
    "IPAdapterEmbedsBatch, two references, two latents": {"references": 2, "apply": "IPAdapterEmbedsBatch",
                                                          "batch": 2},
    "IPAAdapterFaceIDBatch, two faces, two latents": {"face": True, "apply": "IPAAdapterFaceIDBatch", "batch": 2},
}


@pytest.mark.parametrize("case", KRITA)
def test_krita_graph_runs_and_the_adapter_acts(standin_server, case):
    graph = _krita_graph(**KRITA[case])
    apply = KRITA[case].get("apply", "IPAdapterFaceID" if KRITA[case].get("face") else "IPAdapterEmbeds")
    if not KRITA[case].get("mask"):  # Krita sends the unused optional input as null
        assert all(n["inputs"]["attn_mask"] is None for n in wc.nodes_of(graph, apply))
    on = _image(standin_server, graph)
    off = _image(standin_server, wc.set_inputs(graph, apply, weight=0.0))
    effect = float(np.abs(on - off).mean())
    assert effect > MIN_WEIGHT_EFFECT, f"{case}: weight 1 vs 0 differ by only {effect:.3f}"


# ---------------------------------------------------------------------------------------------- old pack installed

FAKE_INIT = "NODE_CLASS_MAPPINGS = {}\nNODE_DISPLAY_NAME_MAPPINGS = {}\n"


def test_none_served_when_the_old_pack_is_installed(comfyui_path, tmp_path):
    from testkit.comfy_server import ComfyServer

    fake = tmp_path / "custom_nodes" / "ComfyUI_IPAdapter_plus"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_INIT)
    (fake / "IPAdapterPlus.py").write_text("# a stand-in for the old pack's module\n")
    with ComfyServer(comfyui_path, cpu=True, quiet=True, workdir=str(tmp_path)) as srv:
        info = srv.object_info()
        log = srv.log_text()
    assert "IPA_ApplyAdvanced" in info and "IPA_ModelLoader" in info
    assert not [node_id for node_id in SERVED if node_id in info], [n for n in SERVED if n in info]
    said = [ln for ln in log.splitlines() if "ComfyUI_IPAdapter_plus is installed" in ln]
    assert len(said) == 1 and str(fake) in said[0], said
    assert "ComfyUI_IPAdapter_plus is not installed" not in log


def _unified_graph(node: str, batch: int = 1, **inputs) -> dict:
    """IPAdapterUnifiedLoader -> IPAdapter / IPAdapterAdvanced / IPAdapterBatch: the old pack's own simplest graph
    (batch 2: two reference images, the second inverted, and two latents)."""
    w = wc.Graph()
    ckpt = w.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors")
    pos = w.add("CLIPTextEncode", text="a photo", clip=[ckpt[0], 1])
    neg = w.add("CLIPTextEncode", text="", clip=[ckpt[0], 1])
    loader = w.add("IPAdapterUnifiedLoader", model=ckpt, preset="PLUS (high strength)", ipadapter=None)
    image = w.add("LoadImage", image="ipadapter_reference.png")
    if batch == 2:
        image = w.add("ImageBatch", image1=image, image2=w.add("ImageInvert", image=image))
    model = w.add(node, model=loader, ipadapter=[loader[0], 1], image=image, weight=1.0, start_at=0.0, end_at=1.0,
                  attn_mask=None, **inputs)
    latent = w.add("EmptyLatentImage", width=64, height=64, batch_size=batch)
    sampled = w.add("KSampler", model=model, seed=1, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                    positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    w.add("SaveImage", images=w.add("VAEDecode", samples=sampled, vae=[ckpt[0], 2]), filename_prefix="old")
    return wc.use_standins(w.root)


UNIFIED = {
    "IPAdapter": {"weight_type": "prompt is more important"},
    "IPAdapterAdvanced": {"weight_type": "ease in", "combine_embeds": "average", "embeds_scaling": "K+V",
                          "image_negative": None, "clip_vision": None},
    "IPAdapterBatch": {"batch": 2, "weight_type": "linear", "embeds_scaling": "V only", "encode_batch_size": 0,
                       "image_negative": None, "clip_vision": None},
}


@pytest.mark.parametrize("node", UNIFIED)
def test_unified_loader_graph_runs_and_the_adapter_acts(standin_server, node):
    graph = _unified_graph(node, **UNIFIED[node])
    on = _image(standin_server, graph)
    off = _image(standin_server, wc.set_inputs(graph, node, weight=0.0))
    effect = float(np.abs(on - off).mean())
    assert effect > MIN_WEIGHT_EFFECT, f"{node}: weight 1 vs 0 differ by only {effect:.3f}"


def test_the_switch_gives_the_reference_behaviour(standin_server, comfyui_path, standins_dir, monkeypatch):
    """IPA_OLD_API=reference: the log says so, and Krita's graph gives this pack's reference image, not the old
    pack's (uncond and middle block differ)."""
    from testkit.comfy_server import ComfyServer

    graph = _krita_graph()
    old = _image(standin_server, graph)
    monkeypatch.setenv("IPA_OLD_API", "reference")
    with ComfyServer(comfyui_path, models_dir=standins_dir, helper_nodes=True, cpu=True, quiet=True) as srv:
        srv.copy_input(os.path.join(os.path.dirname(os.path.dirname(HERE)), "example_workflows",
                                    "ipadapter_reference.png"))
        reference = _image(srv, graph)
        log = srv.log_text()
    assert "results: this pack's reference" in log, log[-2000:]
    assert float(np.abs(old - reference).mean()) > 0.5
