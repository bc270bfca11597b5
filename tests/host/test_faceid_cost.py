"""Per-step cost of a FaceID apply (issue #12), counted with the benchmark's tools like tests/host/test_cost.py: the
FaceID term adds exactly the ops a base IPA Apply adds per site (the same attn2 patch over cached K'/V'), no step
adds a host sync, and the adapter's LoRA adds no op to any step (ComfyUI merges it into the weights when it loads
the model; the steps run the merged weights)."""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("onnx", reason="the FaceID cost test builds its ONNX face-model stand-ins with the onnx package")
pytest.importorskip("onnxruntime", reason="the FaceID nodes run the face models with onnxruntime")

from bench import bench_step, measure  # noqa: E402  (the benchmark's counting tools)
from testkit import faceid_adapters as fk  # noqa: E402
from testkit import onnx_faces  # noqa: E402

TINY_SD15 = dict(bench_step.SD15_UNET, model_channels=32)
SITES = 16


@pytest.fixture(scope="module")
def model(comfy_nodes):
    import comfy.supported_models

    return bench_step.build_unet(TINY_SD15, comfy.supported_models.SD15, dtype=torch.float32, compute_dtype=None)


@pytest.fixture(scope="module")
def setup(model, host, ipadapter_dir, make_adapter_file, make_clip_vision, make_image, run_node, tmp_path_factory):
    import folder_paths

    root = tmp_path_factory.mktemp("insightface_cost")
    onnx_faces.buffalo_folder(str(root), detector="planted", seed=1)
    paths, ext = folder_paths.folder_names_and_paths["insightface"]
    folder_paths.folder_names_and_paths["insightface"] = ([str(root)] + list(paths), ext)
    faces = run_node("IPA_FaceModelLoader", model_name="buffalo_l", provider="CPU")["result"][0]
    folder_paths.folder_names_and_paths["insightface"] = (paths, ext)

    sites = [s.hidden for s in host.model_sites(model)]
    name = "cost-faceid_sd15.bin"
    fk.save_faceid(os.path.join(str(ipadapter_dir), name), "faceid", ctx=host.model_context_dim(model),
                   site_dims=sites, lora_rank=8, seed=4)
    faceid = run_node("IPA_ModelLoader", ipadapter_file=name)["result"][0]
    image = torch.from_numpy(onnx_faces.blob_image(200, 240, [(120, 100)], 28)).float()[None] / 255.0
    face_tokens = run_node("IPA_EncodeFace", ipadapter=faceid, face_models=faces, image=image)["result"][0]

    clip = make_clip_vision()
    base_path = make_adapter_file(ipadapter_dir, "base", model, clip, dtype=torch.float16)
    base = run_node("IPA_ModelLoader", ipadapter_file=os.path.basename(base_path))["result"][0]
    base_tokens = run_node("IPA_Encode", ipadapter=base, clip_vision=clip, image=make_image())[0]
    return faceid, face_tokens, base, base_tokens


@pytest.fixture(scope="module")
def profile(sample):
    def run(m, steps: int = 3):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return measure.probe_sampling(lambda x: sample(x, steps=steps, size=8), m, measure.StepProbe())
        finally:
            torch.set_num_threads(threads)

    return run


def test_faceid_step_costs_what_a_base_apply_costs_and_its_lora_costs_nothing(model, setup, profile, pack_module):
    faceid, face_tokens, base, base_tokens = setup
    install = pack_module("nodes.patch.install")

    def patched(adapter, tokens, lora_strength):
        plan = install.plan_for(model, adapter, where="test", weight=1.0, start_at=0.0, end_at=1.0, lora_strength=lora_strength)
        return install.install(model, adapter, tokens, plan, where="test")

    with_lora = patched(faceid, face_tokens, 1.0)
    without_lora = patched(faceid, face_tokens, 0.0)
    assert with_lora.patches and not without_lora.patches
    plain = profile(model)
    base_run = profile(patched(base, base_tokens, 1.0))
    lora_run, term_run = profile(with_lora), profile(without_lora)
    for step in (1, 2):  # warm steps
        added_base = base_run[step].total_ops - plain[step].total_ops
        added_face = term_run[step].total_ops - plain[step].total_ops
        detail = bench_step.fmt_counter(bench_step.diff(term_run[step].ops, base_run[step].ops), 10)
        assert added_face == added_base, f"step {step}: FaceID adds {added_face} ops, base {added_base}: {detail}"
        assert added_base <= 12 * SITES
        print(f"step {step}: base +{added_base / SITES:.2f} ops/site, FaceID +{added_face / SITES:.2f} ops/site, "
              f"FaceID LoRA +{lora_run[step].total_ops - term_run[step].total_ops} ops")
        lora_detail = bench_step.fmt_counter(bench_step.diff(lora_run[step].ops, term_run[step].ops), 10)
        assert lora_run[step].total_ops == term_run[step].total_ops, f"the LoRA adds ops per step: {lora_detail}"
    for step in range(3):
        for run in (lora_run, term_run):
            assert not bench_step.diff(run[step].syncs, plain[step].syncs), f"step {step} adds a sync"
