"""Reliability battery ("never break a user's session"), through a real ComfyUI server (main.py --cpu) with this pack
and the random stand-in models (scripts/standins.py), started once for the module.

1. Bad inputs: every case either is rejected at validation (POST /prompt answers node_errors naming the node and the
   input) or fails at execution with one of the pack's typed errors (IPAdapterError subclasses) whose message names
   the node and the input -- or, for the odd-but-legal inputs (1-pixel, 1x4096, 4096x4096, RGBA, gray images,
   weights -1 and 5), runs. After every case the server still serves and the good prompt gives exactly the pixels
   it gave before the battery.
2. Long run: N prompts queued back to back (IPA_LONG_RUN_N, default 40; 200 for the full run) alternating two
   adapters, two images and five weights. The server's resident memory after the run stays within
   LONG_RUN_RSS_BOUND_MB of its memory after the first 20 prompts, every repeat of a prompt gives the same pixels,
   and a few prompts re-run alone after POST /free give the same pixels.
3. Interrupt: a 200-step prompt with the adapter, interrupted with POST /interrupt once it runs; then the same model
   without the adapter gives exactly the unpatched pixels obtained before (no patch left behind).
4. Removing this pack's nodes from a workflow gives exactly the output without them: covered by
   tests/host/test_server_workflow.py::test_weight0_equals_the_unpatched_model (the graph with the apply nodes
   bypassed vs. the adapters at weight 0) and by the interrupt test here (the plain graph after patched prompts).

Cases that no core node can produce are skipped with the reason (empty image batch, NaN/inf pixels, 1-channel
IMAGE); they are covered at node level in tests/host/test_errors.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO, "scripts")
TESTS = os.path.join(REPO, "tests")
for _p in (SCRIPTS, TESTS):
    if _p not in sys.path:
        sys.path.insert(0, _p)
import standins  # noqa: E402

pytestmark = pytest.mark.slow

REFERENCE = os.path.join(REPO, "example_workflows", "ipadapter_reference.png")
PROMPT_TIMEOUT = 300.0
PACK_ERRORS = {"IPAdapterError", "NotAnIPAdapterError", "CorruptFileError", "UnsupportedAdapterError",
               "IncompatibleError", "InputError"}
DISPLAY = {"IPA_ModelLoader": "IPA Load Adapter", "IPA_Encode": "IPA Encode Image", "IPA_Apply": "IPA Apply",
           "IPA_ApplySimple": "IPA Apply (simple)", "IPA_SaveEmbeds": "IPA Save Embeds"}
LONG_RUN_N = int(os.environ.get("IPA_LONG_RUN_N", "40"))
LONG_RUN_RSS_BOUND_MB = 150.0
PEAK_BOUND_MB = 1000.0   # peak RSS rise allowed during one case (4096x4096 image: ~200 MB float tensor + PNG decode)

# Files of the module's models folder (beside the stand-ins).
ADAPTER = standins.ADAPTER                  # base stand-in adapter (A)
ADAPTER_PLUS = standins.ADAPTER_PLUS
ADAPTER_B = "ipa_other_base_sd15.safetensors"   # same shapes as A, other weights
CV = standins.CLIP_VISION
CV_NARROW = "ipa_narrow_clip_vision.safetensors"  # hidden 32, projection 40 (the stand-in: 64, 48)
BAD_FILES = {  # case -> file name in the ipadapter folder
    "empty": "bad_empty.safetensors",
    "truncated": "bad_truncated.safetensors",
    "random_bytes": "bad_random.safetensors",
    "random_bytes_bin": "bad_random.bin",
    "renamed_safetensors_as_bin": "renamed_safetensors.bin",
    "renamed_bin_as_safetensors": "renamed_pickle.safetensors",
    "lora": "bad_lora.safetensors",
    "unet": "bad_unet.safetensors",
    "clip_vision": "bad_clip_vision.safetensors",
    "site_widths": "bad_site_widths_sd15.safetensors",
    "sdxl_context": "bad_sdxl_context.safetensors",
}


# ---------------------------------------------------------------------------------------------- fixtures

def _save(path: str, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


@pytest.fixture(scope="module")
def models_dir(comfyui_path, tmp_path_factory) -> str:
    """The stand-ins (generated once, cached in .standins/) linked into a scratch models folder, plus the bad files."""
    import torch
    from safetensors.torch import load_file
    from testkit.adapters import adapter_parts

    if not standins.is_fresh():
        subprocess.run([sys.executable, os.path.join(SCRIPTS, "standins.py"), "--comfyui", comfyui_path], check=True,
                       timeout=900)
    src = standins.paths()
    base = str(tmp_path_factory.mktemp("ipa_models"))
    ck, cv, ipa = (os.path.join(base, d) for d in ("checkpoints", "clip_vision", "ipadapter"))
    for d in (ck, cv, ipa):
        os.makedirs(d)
    os.symlink(src["checkpoint"], os.path.join(ck, standins.CHECKPOINT))
    os.symlink(src["clip_vision"], os.path.join(cv, CV))
    os.symlink(src["clip_vision_json"], os.path.join(cv, os.path.splitext(CV)[0] + ".json"))
    os.symlink(src["adapter"], os.path.join(ipa, ADAPTER))
    os.symlink(src["adapter_plus"], os.path.join(ipa, ADAPTER_PLUS))

    # A narrower CLIP vision: the stand-in's tensors with every width changed (hidden 64->32, mlp 128->64,
    # projection 48->40), random values.
    g = torch.Generator().manual_seed(7)
    remap = {64: 32, 128: 64, 48: 40}
    narrow = {k: torch.randn([remap.get(s, s) for s in v.shape], generator=g) * 0.05
              for k, v in load_file(src["clip_vision"]).items()}
    _save(os.path.join(cv, CV_NARROW), narrow)
    cfg = dict(standins.CLIP_VISION_CONFIG, hidden_size=32, intermediate_size=64, projection_dim=40)
    with open(os.path.join(cv, os.path.splitext(CV_NARROW)[0] + ".json"), "w") as f:
        json.dump(cfg, f)

    def adapter(name, kind="base", *, site_dims=standins.SITE_DIMS, ctx=768, seed=99, fmt="safetensors", **kw):
        kw.setdefault("encoder_dim", standins.CLIP_VISION_CONFIG["projection_dim"])
        proj, layers = adapter_parts(kind, ctx=ctx, site_dims=site_dims, seed=seed, tokens=4, **kw)
        path = os.path.join(ipa, name)
        if fmt == "bin":
            with open(path, "wb") as f:
                torch.save({"image_proj": proj, "ip_adapter": layers}, f)
        else:
            flat = {f"image_proj.{k}": v for k, v in proj.items()}
            flat.update({f"ip_adapter.{k}": v for k, v in layers.items()})
            _save(path, flat)
        return path

    adapter(ADAPTER_B, seed=1234)
    adapter(BAD_FILES["site_widths"], site_dims=(640,) * len(standins.SITE_DIMS))
    # SDXL context width (2048) on the stand-in's 7 sites, fp16: the pack tells SD1.5 from SDXL by the context width.
    adapter(BAD_FILES["sdxl_context"], ctx=2048, dtype=torch.float16)
    adapter(BAD_FILES["renamed_bin_as_safetensors"], fmt="bin")
    with open(src["adapter"], "rb") as f:
        good = f.read()
    with open(os.path.join(ipa, BAD_FILES["renamed_safetensors_as_bin"]), "wb") as f:
        f.write(good)
    with open(os.path.join(ipa, BAD_FILES["truncated"]), "wb") as f:
        f.write(good[: len(good) // 2])
    open(os.path.join(ipa, BAD_FILES["empty"]), "wb").close()
    rng = np.random.default_rng(3)
    for key in ("random_bytes", "random_bytes_bin"):
        with open(os.path.join(ipa, BAD_FILES[key]), "wb") as f:
            f.write(rng.bytes(65536))
    lora = {}
    for i in range(4):
        stem = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k{i}"
        lora[f"{stem}.lora_down.weight"] = torch.randn(4, 320, generator=g)
        lora[f"{stem}.lora_up.weight"] = torch.randn(320, 4, generator=g)
        lora[f"{stem}.alpha"] = torch.tensor(4.0)
    _save(os.path.join(ipa, BAD_FILES["lora"]), lora)
    _save(os.path.join(ipa, BAD_FILES["unet"]), {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(320, 4, 3, 3, generator=g),
        "model.diffusion_model.input_blocks.0.0.bias": torch.randn(320, generator=g),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.randn(320, 768, generator=g),
        "model.diffusion_model.out.2.weight": torch.randn(4, 320, 3, 3, generator=g)})
    os.symlink(src["clip_vision"], os.path.join(ipa, BAD_FILES["clip_vision"]))
    return base


@pytest.fixture(scope="module")
def server(comfyui_path, models_dir, tmp_path_factory):
    from PIL import Image
    from run_workflow import ComfyServer

    # One torch thread in the server (IPA_SERVER_THREADS): on a shared 2-core machine two busy intra-op thread pools
    # made every sampling step 10-15x slower (0.2 s -> 9 s per prompt).
    threads = os.environ.get("IPA_SERVER_THREADS", "1")
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    srv = ComfyServer(comfyui_path, models_dir=models_dir, helper_nodes=True, cpu=True, quiet=True)
    try:
        srv.start()
    except BaseException:
        srv.stop()
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        srv.copy_input(REFERENCE, "ref.png")
        d = tmp_path_factory.mktemp("ipa_images")
        rng = np.random.default_rng(11)
        images = {
            "noise.png": Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)),
            "px1.png": Image.fromarray(np.array([[[200, 30, 90]]], dtype=np.uint8)),
            "tall_1x4096.png": Image.fromarray(rng.integers(0, 256, (4096, 1, 3), dtype=np.uint8)),
            "wide_1x4096.png": Image.fromarray(rng.integers(0, 256, (1, 4096, 3), dtype=np.uint8)),
            "big_4096.png": Image.fromarray(rng.integers(0, 256, (4096, 4096, 3), dtype=np.uint8)),
            "rgba.png": Image.fromarray(rng.integers(0, 256, (40, 48, 4), dtype=np.uint8), "RGBA"),
            "gray.png": Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8), "L"),
        }
        for name, img in images.items():
            path = os.path.join(str(d), name)
            img.save(path, compress_level=1)
            srv.copy_input(path)
        yield srv
    finally:
        srv.stop()


def graph(*, adapter=ADAPTER, image="ref.png", weight=1.0, start_at=0.0, end_at=1.0, clip_vision=CV, steps=3,
          seed=42, apply=True) -> dict:
    """Checkpoint -> IPA_ApplySimple(adapter, CLIP vision, LoadImage) -> KSampler (64 px, 3 steps) -> SaveImage."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": standins.CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a mountain lake at sunset"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "IPA_ModelLoader", "inputs": {"ipadapter_file": adapter}},
        "5": {"class_type": "IPATest_CLIPVisionLoaderJSON", "inputs": {"clip_name": clip_vision}},
        "6": {"class_type": "LoadImage", "inputs": {"image": image}},
        "7": {"class_type": "IPA_ApplySimple", "inputs": {
            "model": ["1", 0], "ipadapter": ["4", 0], "clip_vision": ["5", 0], "image": ["6", 0],
            "weight": weight, "start_at": start_at, "end_at": end_at}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["7", 0], "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": "dpmpp_2m",
            "scheduler": "karras", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["8", 0],
            "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "ipa_rel"}},
    }
    if not apply:
        for k in ("4", "5", "6", "7"):
            del g[k]
        g["9"]["inputs"]["model"] = ["1", 0]
    return g


def run_ok(server, g: dict):
    run = server.queue(g, timeout=PROMPT_TIMEOUT)
    assert run.status == "success", f"status {run.status}: {run.error}\n--- server log tail ---\n{server.log_tail()}"
    assert run.images, f"no image came back; outputs: {run.history.get('outputs')}"
    return run


@pytest.fixture(scope="module")
def baseline(server) -> np.ndarray:
    """The good prompt's pixels before any bad input."""
    return run_ok(server, graph()).images[0]


def exec_error(run) -> dict:
    for kind, data in run.history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return {}


def reset_peak(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM) so the next rss_mb() peak covers only what follows (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB (Linux /proc)."""
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


# ---------------------------------------------------------------------------------------------- 1. bad inputs

def _embeds_graph(encode_adapter: str, apply_adapter: str) -> dict:
    g = graph()
    g["12"] = {"class_type": "IPA_ModelLoader", "inputs": {"ipadapter_file": encode_adapter}}
    g["13"] = {"class_type": "IPA_Encode", "inputs": {"ipadapter": ["12", 0], "clip_vision": ["5", 0],
                                                      "image": ["6", 0]}}
    g["4"]["inputs"]["ipadapter_file"] = apply_adapter
    g["7"] = {"class_type": "IPA_Apply", "inputs": {"model": ["1", 0], "ipadapter": ["4", 0], "embeds": ["13", 0],
                                                    "weight": 1.0, "start_at": 0.0, "end_at": 1.0}}
    return g


def _mask_graph(value: float = 0.0, batch: int = 1) -> dict:
    """IPA_Apply (embeds route) with attn_mask = SolidMask(value), repeated to ``batch`` masks via core nodes."""
    g = _embeds_graph(ADAPTER, ADAPTER)
    g["20"] = {"class_type": "SolidMask", "inputs": {"value": value, "width": 48, "height": 80}}
    mask = ["20", 0]
    if batch > 1:
        g["21"] = {"class_type": "MaskToImage", "inputs": {"mask": ["20", 0]}}
        g["22"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["21", 0], "amount": batch}}
        g["23"] = {"class_type": "ImageToMask", "inputs": {"image": ["22", 0], "channel": "red"}}
        mask = ["23", 0]
    g["7"]["inputs"]["attn_mask"] = mask
    return g


def _save_embeds_graph(prefix: str) -> dict:
    g = _embeds_graph(ADAPTER, ADAPTER)
    g["14"] = {"class_type": "IPA_SaveEmbeds", "inputs": {"embeds": ["13", 0], "filename_prefix": prefix}}
    return g


def _rgba_tensor_graph() -> dict:
    """LoadImage gives RGB + MASK; JoinImageWithAlpha makes a real 4-channel IMAGE tensor."""
    g = graph(image="noise.png")
    g["12"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["6", 0], "alpha": ["6", 1]}}
    g["7"]["inputs"]["image"] = ["12", 0]
    return g


# Words a case's error message must NOT contain (a wrong diagnosis is not a clear message).
MISDIAGNOSIS = {
    "random_bytes_bin": ("Python objects", "could run code"),
    "renamed_safetensors_as_bin": ("Python objects", "could run code"),
}
BUG: dict[str, str] = {}  # case id -> reason, for cases found to fail (strict xfail); all fixed so far

# id -> (graph factory, expectation, node class, input name)
#   expectation "invalid": rejected at validation naming node and input; "error": a typed pack error at execution
#   naming node and input; "error_or_ok": either that or success; "ok": runs.
CASES = {
    "missing_file": (lambda: graph(adapter="no_such_adapter.safetensors"), "invalid", "IPA_ModelLoader", "ipadapter_file"),
    "renamed_safetensors_as_bin": (lambda: graph(adapter=BAD_FILES["renamed_safetensors_as_bin"]), "error_or_ok",
                                   "IPA_ModelLoader", "ipadapter_file"),
    "renamed_bin_as_safetensors": (lambda: graph(adapter=BAD_FILES["renamed_bin_as_safetensors"]), "error_or_ok",
                                   "IPA_ModelLoader", "ipadapter_file"),
    "empty_file": (lambda: graph(adapter=BAD_FILES["empty"]), "error", "IPA_ModelLoader", "ipadapter_file"),
    "truncated_file": (lambda: graph(adapter=BAD_FILES["truncated"]), "error", "IPA_ModelLoader", "ipadapter_file"),
    "random_bytes": (lambda: graph(adapter=BAD_FILES["random_bytes"]), "error", "IPA_ModelLoader", "ipadapter_file"),
    "random_bytes_bin": (lambda: graph(adapter=BAD_FILES["random_bytes_bin"]), "error", "IPA_ModelLoader",
                         "ipadapter_file"),
    "lora_in_ipadapter_folder": (lambda: graph(adapter=BAD_FILES["lora"]), "error", "IPA_ModelLoader", "ipadapter_file"),
    "unet_in_ipadapter_folder": (lambda: graph(adapter=BAD_FILES["unet"]), "error", "IPA_ModelLoader", "ipadapter_file"),
    "clip_vision_in_ipadapter_folder": (lambda: graph(adapter=BAD_FILES["clip_vision"]), "error", "IPA_ModelLoader",
                                        "ipadapter_file"),
    "adapter_site_widths_mismatch": (lambda: graph(adapter=BAD_FILES["site_widths"]), "error", "IPA_ApplySimple",
                                     "model"),
    "sdxl_adapter_on_sd15_model": (lambda: graph(adapter=BAD_FILES["sdxl_context"]), "error", "IPA_ApplySimple",
                                   "model"),
    "wrong_clip_vision_width": (lambda: graph(clip_vision=CV_NARROW), "error", "IPA_ApplySimple", "clip_vision"),
    "wrong_clip_vision_width_plus": (lambda: graph(adapter=ADAPTER_PLUS, clip_vision=CV_NARROW), "error",
                                     "IPA_ApplySimple", "clip_vision"),
    "image_1_pixel": (lambda: graph(image="px1.png"), "error_or_ok", "IPA_ApplySimple", "image"),
    "image_1x4096": (lambda: graph(image="wide_1x4096.png"), "error_or_ok", "IPA_ApplySimple", "image"),
    "image_4096x1": (lambda: graph(image="tall_1x4096.png"), "error_or_ok", "IPA_ApplySimple", "image"),
    "image_4096x4096": (lambda: graph(image="big_4096.png"), "ok", "IPA_ApplySimple", "image"),
    "image_rgba_png": (lambda: graph(image="rgba.png"), "ok", "IPA_ApplySimple", "image"),
    "image_gray_png": (lambda: graph(image="gray.png"), "ok", "IPA_ApplySimple", "image"),
    "image_rgba_tensor": (_rgba_tensor_graph, "ok", "IPA_ApplySimple", "image"),
    "weight_-1": (lambda: graph(weight=-1.0), "ok", "IPA_ApplySimple", "weight"),
    "weight_5": (lambda: graph(weight=5.0), "ok", "IPA_ApplySimple", "weight"),
    "weight_5.5": (lambda: graph(weight=5.5), "invalid", "IPA_ApplySimple", "weight"),
    "weight_-1.5": (lambda: graph(weight=-1.5), "invalid", "IPA_ApplySimple", "weight"),
    "start_after_end": (lambda: graph(start_at=0.8, end_at=0.2), "error", "IPA_ApplySimple", "start_at"),
    "embeds_from_another_adapter": (lambda: _embeds_graph(ADAPTER, ADAPTER_B), "error", "IPA_Apply", "embeds"),
    "embeds_from_plus_adapter": (lambda: _embeds_graph(ADAPTER_PLUS, ADAPTER), "error", "IPA_Apply", "embeds"),
    "mask_all_zeros": (lambda: _mask_graph(0.0), "ok", "IPA_Apply", "attn_mask"),
    "mask_batch_3_for_latent_batch_1": (lambda: _mask_graph(1.0, batch=3), "ok", "IPA_Apply", "attn_mask"),
    "saved_embeds_prefix_traversal": (lambda: _save_embeds_graph("../../escape/evil"), "error", "IPA_SaveEmbeds",
                                      "filename_prefix"),
    "saved_embeds_prefix_absolute": (lambda: _save_embeds_graph("/tmp/ipa_abs_evil"), "error", "IPA_SaveEmbeds",
                                     "filename_prefix"),
    "saved_embeds_prefix_non_ascii": (lambda: _save_embeds_graph("émbeds/日本語_テスト"), "ok", "IPA_SaveEmbeds",
                                      "filename_prefix"),
}
SKIPPED = {
    "image_batch_0": "no core ComfyUI 0.3.64 node yields an empty IMAGE batch (ImageFromBatch / RepeatImageBatch / "
                     "ImageCrop clamp to >= 1 image and >= 1 pixel); covered at node level by "
                     "tests/host/test_errors.py::test_empty_image_batch",
    "image_nan_inf": "no core node turns a finite image into NaN/inf (ImageBlend modes, ImageRGBToYUV, blur and sharpen "
                     "stay finite on 0..1 inputs); prepare_images rejects non-finite pixels at node level",
    "image_1_channel_tensor": "no core node outputs a 1-channel IMAGE (LoadImage gives RGB + MASK, ImageRGBToYUV expands "
                              "Y to 3 channels); the 'L' PNG case covers gray files",
    "sd15_adapter_on_sdxl_checkpoint": "a stand-in SDXL checkpoint (CLIP-G + CLIP-L + SDXL UNet) costs too much to "
                                       "build and load in CI; covered by adapter_site_widths_mismatch and "
                                       "sdxl_adapter_on_sd15_model here and test_errors.py::test_sd15_adapter_on_sdxl_model",
}


def _params():
    out = []
    for cid in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=BUG[cid])] if cid in BUG else []
        out.append(pytest.param(cid, id=cid, marks=marks))
    for cid, why in SKIPPED.items():
        out.append(pytest.param(cid, id=cid, marks=pytest.mark.skip(reason=why)))
    return out


def _check_clear_error(run, node_id: str, node_class: str, input_name: str) -> None:
    err = exec_error(run)
    assert err, f"no execution_error message; status {run.status}: {run.error}"
    etype = err.get("exception_type", "").rsplit(".", 1)[-1]
    msg = err.get("exception_message", "")
    assert err.get("node_id") == node_id and err.get("node_type") == node_class, (
        f"the error is reported on node {err.get('node_id')} ({err.get('node_type')}), expected {node_id} "
        f"({node_class}): {etype}: {msg}")
    assert etype in PACK_ERRORS, f"not one of the pack's typed errors: {etype}: {msg}"
    assert msg.startswith(DISPLAY[node_class]), f"the message does not name the node ({DISPLAY[node_class]}): {msg}"
    assert f"'{input_name}'" in msg or f"{input_name} (" in msg, f"the message does not name input '{input_name}': {msg}"
    assert len(msg) < 1500, f"message too long ({len(msg)} chars): {msg[:300]}..."


@pytest.mark.parametrize("case", _params())
def test_bad_input_then_good_prompt(server, baseline, case):
    factory, expect, node_class, input_name = CASES[case]
    g = factory()
    node_id = next(nid for nid, n in g.items() if n["class_type"] == node_class)
    reset_peak(server.pid)
    rss0, _ = rss_mb(server.pid)
    run = server.queue(g, timeout=PROMPT_TIMEOUT)
    rss, peak = rss_mb(server.pid)
    print(f"\n[{case}] status {run.status} in {run.seconds:.1f} s; server RSS {rss:.0f} MB, peak +{peak - rss0:.0f} MB; "
          f"{(exec_error(run).get('exception_message') or run.error)[:400]}")
    assert server.proc.poll() is None, f"the server died:\n{server.log_tail()}"
    if expect == "invalid":
        assert run.status == "invalid", f"expected a validation error, got {run.status}: {run.error}"
        assert f"node {node_id} ({node_class})" in run.error and input_name in run.error, run.error
    elif expect == "ok" or (expect == "error_or_ok" and run.status == "success"):
        assert run.status == "success", f"status {run.status}: {run.error}"
        assert run.images and run.images[0].shape == (64, 64, 3)
    else:
        assert run.status == "error", f"expected an execution error, got {run.status}: {run.error}"
        _check_clear_error(run, node_id, node_class, input_name)
        msg = exec_error(run).get("exception_message", "")
        wrong = [w for w in MISDIAGNOSIS.get(case, ()) if w in msg]
        assert not wrong, f"the message misdiagnoses the file ({wrong}): {msg}"
    assert peak - rss0 < PEAK_BOUND_MB, f"peak RSS rose {peak - rss0:.0f} MB above {rss0:.0f} MB during the case"
    again = run_ok(server, graph())
    assert (again.images[0] == baseline).all(), (
        f"after case {case} the good prompt gave other pixels (max abs diff "
        f"{np.abs(again.images[0].astype(int) - baseline).max()})")


def test_weights_at_the_limits_differ(server, baseline):
    """-1 and 5 really act (not clamped to something else silently)."""
    lo = run_ok(server, graph(weight=-1.0)).images[0]
    hi = run_ok(server, graph(weight=5.0)).images[0]
    assert not (lo == baseline).all() and not (hi == baseline).all() and not (lo == hi).all()


# ---------------------------------------------------------------------------------------------- 2. long run

def _long_run_graph(i: int) -> dict:
    return graph(adapter=(ADAPTER, ADAPTER_PLUS)[i % 2], image=("ref.png", "noise.png")[(i // 2) % 2],
                 weight=(0.5, 0.75, 1.0, 1.25, 1.5)[i % 5])


def test_long_run_memory_and_determinism(server, baseline):
    n = LONG_RUN_N
    assert n >= 21, "IPA_LONG_RUN_N must be > 20"
    runs: list[np.ndarray] = []

    def batch(first: int, last: int) -> None:
        ids = []
        for i in range(first, last):  # queued back to back, then collected
            pid, err = server.submit(_long_run_graph(i))
            assert pid, f"prompt {i} rejected: {err}"
            ids.append(pid)
        for i, pid in zip(range(first, last), ids):
            run = server.wait(pid, timeout=PROMPT_TIMEOUT)
            assert run.status == "success", f"prompt {i}: {run.status}: {run.error}\n{server.log_tail()}"
            assert "9" not in run.cached_nodes, f"prompt {i}: the sampler was served from cache"
            runs.append(run.images[0])

    t0 = time.time()
    batch(0, 20)
    rss20 = rss_mb(server.pid)[0]
    reset_peak(server.pid)
    batch(20, n)
    wall = time.time() - t0
    rss_end, peak = rss_mb(server.pid)
    print(f"\n[long run] N={n}: {wall:.1f} s, {wall / n:.2f} s/prompt; server RSS after 20: {rss20:.0f} MB, "
          f"after {n}: {rss_end:.0f} MB ({rss_end - rss20:+.0f} MB), peak {peak:.0f} MB")
    assert rss_end - rss20 < LONG_RUN_RSS_BOUND_MB, (
        f"server RSS grew {rss_end - rss20:.0f} MB between prompt 20 and {n} (bound {LONG_RUN_RSS_BOUND_MB} MB)")
    period = 20  # lcm of the adapter (2), image (4) and weight (5) cycles
    for i in range(period, n):
        assert (runs[i] == runs[i % period]).all(), f"prompt {i} differs from prompt {i % period} (same graph)"
    server.free()
    for i in (0, 1, 2, 7):
        solo = run_ok(server, _long_run_graph(i)).images[0]
        assert (solo == runs[i]).all(), f"prompt {i} run alone after /free differs from the queued run"


# ---------------------------------------------------------------------------------------------- 3. interrupt

def test_interrupt_leaves_no_patch_behind(server):
    plain = run_ok(server, graph(apply=False)).images[0]
    pid, err = server.submit(graph(steps=200, weight=1.3))
    assert pid, err
    t0 = time.time()
    while not server.queue_state().get("queue_running"):
        assert time.time() - t0 < 60, "the 200-step prompt did not start"
        time.sleep(0.05)
    time.sleep(1.5)  # into the sampling loop
    server.interrupt()
    run = server.wait(pid, timeout=PROMPT_TIMEOUT)
    kinds = [k for k, _ in run.history.get("status", {}).get("messages", [])]
    print(f"\n[interrupt] status {run.status} after {time.time() - t0:.1f} s; messages {kinds}")
    assert run.status == "error" and "execution_interrupted" in kinds, f"not interrupted: {run.status} {kinds}"
    assert server.proc.poll() is None
    after = server.queue(graph(apply=False), timeout=PROMPT_TIMEOUT)
    assert after.status == "success", after.error
    assert "9" not in after.cached_nodes, "the plain sampler was served from cache"
    assert (after.images[0] == plain).all(), (
        f"the model without the adapter gives other pixels after an interrupted patched prompt (max abs diff "
        f"{np.abs(after.images[0].astype(int) - plain).max()})")


def test_zero_mask_gives_the_unpatched_image(server, baseline):
    """A mask of zeros removes the image term everywhere: the pixels of the graph without the adapter."""
    plain = run_ok(server, graph(apply=False)).images[0]
    masked = run_ok(server, _mask_graph(0.0)).images[0]
    assert (masked == plain).all()
    assert not (baseline == plain).all(), "the adapter had no effect, the test proves nothing"


def test_saved_embeds_stay_inside_their_folder(server):
    """Non-ASCII names are saved inside output/ipadapter_embeds; traversal and absolute prefixes write nothing."""
    import glob

    out = server.output_dir
    run_ok(server, _save_embeds_graph("émbeds/日本語_テスト"))
    saved = glob.glob(os.path.join(out, "ipadapter_embeds", "émbeds", "日本語_テスト_*.safetensors"))
    assert saved, os.listdir(os.path.join(out, "ipadapter_embeds"))
    server.queue(_save_embeds_graph("../../escape/evil"), timeout=PROMPT_TIMEOUT)
    server.queue(_save_embeds_graph("/tmp/ipa_abs_evil"), timeout=PROMPT_TIMEOUT)
    root = os.path.dirname(os.path.dirname(out))  # the prefix climbs two levels: look everywhere below that
    assert not glob.glob(os.path.join(root, "**", "evil_*.safetensors"), recursive=True)
    assert not glob.glob("/tmp/ipa_abs_evil*")
