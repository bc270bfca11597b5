"""Converted ComfyUI_IPAdapter_plus FaceID graphs run through a real ComfyUI server (issue #12, item 6): the old
pack's IPAdapterUnifiedLoaderFaceID + IPAdapterFaceID, and IPAdapterInsightFaceLoader + IPAAdapterFaceIDBatch,
written as the old pack's API graphs, convert with no unmapped node and run on the FaceID stand-ins (a planted-face
detector finds the bright disc of the reference image; testkit/faceid_standins.py); the face term changes the
picture. The old pack itself needs insightface, so old-vs-converted latents are not compared here."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("onnx", reason="the FaceID stand-ins are built with the onnx package")

from migration import migrate_workflow as mw  # noqa: E402
from testkit import faceid_standins, standins  # noqa: E402
from testkit import workflow_convert as wc  # noqa: E402
from testkit.comfyui_env import REPO  # noqa: E402

FACE = os.path.join(REPO, "example_workflows", "ipadapter_face_reference.jpg")
PROMPT_TIMEOUT = 600.0
MIN_WEIGHT_EFFECT = 2.0  # mean abs pixel difference (0-255) that shows the face term acts

pytestmark = pytest.mark.slow


def _tail(model: list) -> dict:
    return {
        "20": {"class_type": "CLIPTextEncode", "inputs": {"text": "a portrait photo", "clip": ["1", 1]}},
        "21": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "22": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "23": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 7, "steps": 3, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["20", 0], "negative": ["21", 0], "latent_image": ["22", 0], "denoise": 1.0}},
        "24": {"class_type": "VAEDecode", "inputs": {"samples": ["23", 0], "vae": ["1", 2]}},
        "25": {"class_type": "SaveImage", "inputs": {"images": ["24", 0], "filename_prefix": "faceid_migrated"}},
    }


FACEID_ARGS = {"weight": 0.9, "weight_faceidv2": 1.0, "weight_type": "linear", "combine_embeds": "concat",
               "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}


def old_unified_faceid() -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": standins.CHECKPOINT}},
        "2": {"class_type": "IPAdapterUnifiedLoaderFaceID", "inputs": {
            "model": ["1", 0], "preset": "FACEID", "lora_strength": 0.6, "provider": "CPU"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": os.path.basename(FACE)}},
        "4": {"class_type": "IPAdapterFaceID", "inputs": {"model": ["2", 0], "ipadapter": ["2", 1], "image": ["3", 0],
                                                          **FACEID_ARGS}},
        **_tail(["4", 0]),
    }


def old_insightface_batch() -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": standins.CHECKPOINT}},
        "2": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": "ip-adapter-faceid_sd15.bin"}},
        "5": {"class_type": "IPAdapterInsightFaceLoader", "inputs": {"provider": "CPU", "model_name": "buffalo_l"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": os.path.basename(FACE)}},
        "4": {"class_type": "IPAAdapterFaceIDBatch", "inputs": {"model": ["1", 0], "ipadapter": ["2", 0],
                                                                "image": ["3", 0], "insightface": ["5", 0],
                                                                **FACEID_ARGS}},
        **_tail(["4", 0]),
    }


@pytest.fixture(scope="module")
def server(standin_server):
    return standin_server


def _run_ok(server, graph: dict):
    return server.queue_ok(graph, timeout=PROMPT_TIMEOUT)


@pytest.mark.parametrize("make", [old_unified_faceid, old_insightface_batch], ids=lambda f: f.__name__)
def test_converted_faceid_graph_runs_and_the_face_term_acts(server, make):
    from testkit.run_workflow import mean_abs_diff

    new, entries = mw.migrate(make())
    assert not [e for e in entries if e.status == "unmapped"], mw.report_text(entries)
    assert not any(n["class_type"] in mw.OLD_TYPES for n in new.values())
    (apply,) = wc.nodes_of(new, "IPA_ApplyFaceID")
    assert apply["inputs"]["lora_strength"] == (0.6 if make is old_unified_faceid else 0.0)
    assert apply["inputs"]["unfold_batch"] is (make is old_insightface_batch)
    graph = wc.use_standins(new)
    assert [n["inputs"]["model_name"] for n in wc.nodes_of(graph, "IPA_FaceModelLoader")] == \
        [faceid_standins.FACE_MODELS]
    one = _run_ok(server, graph).images[0]
    zero = _run_ok(server, wc.set_adapter_weight(graph, 0.0)).images[0]
    assert mean_abs_diff(one, zero) > MIN_WEIGHT_EFFECT
