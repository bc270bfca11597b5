"""pytest fixtures (a plugin, registered in tests/conftest.py) and helpers of the reliability battery
(tests/host/test_reliability_*.py): a real ComfyUI server (main.py --cpu) with this pack and the random stand-in
models (testkit/standins.py) beside deliberately bad files, started once per test module, and the prompts the
battery queues on it.

Fixtures (module scope): ``reliability_models_dir`` (the stand-ins linked into a scratch models folder, plus the
files of BAD_FILES, a second base adapter ADAPTER_B and a narrower CLIP vision CV_NARROW), ``reliability_server``
(a testkit.comfy_server.ComfyServer on it), ``reliability_baseline`` (the pixels of ``graph()``).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from . import standins
from .comfyui_env import REPO

REFERENCE = os.path.join(REPO, "example_workflows", "ipadapter_reference.png")
PROMPT_TIMEOUT = 300.0

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




def _save(path: str, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


@pytest.fixture(scope="module")
def reliability_models_dir(comfyui_path, standins_dir, tmp_path_factory) -> str:
    """The stand-ins (generated once, cached in .standins/) linked into a scratch models folder, plus the bad files."""
    import torch
    from safetensors.torch import load_file

    from .adapters import adapter_parts

    src = standins.paths(standins_dir)
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
def reliability_server(comfyui_path, reliability_models_dir, tmp_path_factory):
    """A real ComfyUI server (--cpu, one torch thread) on reliability_models_dir, with the test helper nodes; its
    input folder holds ref.png and the odd images the cases name (noise, 1 px, 1x4096, 4096x4096, RGBA, gray)."""
    from PIL import Image

    from .comfy_server import ComfyServer

    # One torch thread in the server (IPA_SERVER_THREADS): on a shared 2-core machine two busy intra-op thread pools
    # made every sampling step 10-15x slower (0.2 s -> 9 s per prompt).
    threads = os.environ.get("IPA_SERVER_THREADS", "1")
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    srv = ComfyServer(comfyui_path, models_dir=reliability_models_dir, helper_nodes=True, cpu=True, quiet=True)
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
def reliability_baseline(reliability_server) -> np.ndarray:
    """The good prompt's pixels (``graph()``) before any other prompt of the module."""
    return run_ok(reliability_server, graph()).images[0]


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
