"""Generate small RANDOM-WEIGHT stand-ins for the models the example workflows use. They are NOT real models.

They have the shapes ComfyUI and this pack need to run a workflow end to end (CheckpointLoaderSimple detects the
checkpoint as SD1.5, the adapter fits its UNet), generated from a fixed seed so every run gives the same pixels.
The pictures they produce are noise-like and mean nothing.

    models/checkpoints/ipa_standin_sd15.safetensors      SD1.5 UNet (320 channels, 2 levels, 7 cross-attention
                                                          sites), random TAESD VAE, random full-size CLIP-L; fp16
    models/clip_vision/ipa_standin_clip_vision.safetensors + .json
                                                          tiny CLIP vision (hidden 64, 3 layers, 32 px, projection 48);
                                                          ComfyUI's CLIPVisionLoader cannot detect it, load it with
                                                          tests/host/helper_nodes (IPATest_CLIPVisionLoaderJSON)
    models/ipadapter/ipa_standin_sd15.safetensors         base adapter (reads the 48-wide image embeds)
    models/ipadapter/ipa_standin_plus_sd15.safetensors    plus adapter (resampler over the 64-wide hidden states)
    the FaceID adapters and face models of testkit/faceid_standins.py, where the onnx package is importable
    the Flux stand-ins of testkit/flux_standins.py (a tiny Flux, its text encoders and 16-channel VAE in
    diffusion_models/, text_encoders/, vae/; an XLabs and an InstantX adapter in ipadapter/; a tiny SigLIP with
    its pooling head and one without in clip_vision/), loaded with the test-only IPATest_UNETLoaderJSON /
    IPATest_DualCLIPLoaderJSON / IPATest_CLIPVisionLoaderJSON (ComfyUI's detection only knows full-size models)

Files that exist and are listed in the manifest with the current VERSION and the hash of the code that wrote them
(this module, testkit/adapters.py and the modules in faceid_standins.SOURCES / flux_standins.SOURCES), with their
size and (checkpoint) all three parts, are kept; the rest are (re)generated.
Usage: python3 scripts/standins.py [--models-dir DIR] [--comfyui PATH] [--force]
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from typing import Callable, Iterator

from . import faceid_standins as faces
from . import flux_standins as flux
from .comfyui_env import REPO, find_comfyui, import_comfyui

DEFAULT_MODELS_DIR = os.path.join(REPO, ".standins", "models")
MANIFEST = "standins_manifest.json"
VERSION = "1"  # bump whenever the generated content changes
SEED = 20251127

CHECKPOINT = "ipa_standin_sd15.safetensors"
CLIP_VISION = "ipa_standin_clip_vision.safetensors"
ADAPTER = "ipa_standin_sd15.safetensors"
ADAPTER_PLUS = "ipa_standin_plus_sd15.safetensors"
FILES = {  # key -> path relative to the models dir
    "checkpoint": os.path.join("checkpoints", CHECKPOINT),
    "clip_vision": os.path.join("clip_vision", CLIP_VISION),
    "clip_vision_json": os.path.join("clip_vision", CLIP_VISION[: -len(".safetensors")] + ".json"),
    "adapter": os.path.join("ipadapter", ADAPTER),
    "adapter_plus": os.path.join("ipadapter", ADAPTER_PLUS),
}
PRODUCES = {"checkpoint": ("checkpoint",), "clip_vision": ("clip_vision_json", "clip_vision"),
            "adapter": ("adapter",), "adapter_plus": ("adapter_plus",)}  # generator -> the FILES it writes
FILES.update(faces.FILES)
PRODUCES.update(faces.PRODUCES)
FILES.update(flux.FILES)
PRODUCES.update(flux.PRODUCES)
ADAPTER_XLABS = flux.ADAPTER
ADAPTER_INSTANTX = flux.ADAPTER_INSTANTX
SIGLIP = flux.SIGLIP
SIGLIP_HEADLESS = flux.SIGLIP_HEADLESS


def _wanted() -> dict[str, tuple[str, ...]]:
    """The generators to run here: the FaceID ones only where they can be built (onnx importable)."""
    return {k: v for k, v in PRODUCES.items() if faces.available() or k not in faces.PRODUCES}

# SD1.5 family as ComfyUI detects it (model_channels 320, context 768), shrunk to two levels of one res block each.
UNET_CONFIG = dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False,
                   adm_in_channels=None, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1, 1],
                   transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], channel_mult=[1, 1],
                   transformer_depth_middle=1, use_linear_in_transformer=False, context_dim=768,
                   use_temporal_resblock=False, use_temporal_attention=False)
# Widths of the UNet's attn2 sites in checkpoint order (input 1, 3; output 0..3; middle 0). Checked when built.
SITE_DIMS = (320,) * 7
CLIP_VISION_CONFIG = {
    "model_type": "clip_vision_model", "hidden_act": "quick_gelu", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_hidden_layers": 3, "num_channels": 3, "patch_size": 8, "image_size": 32,
    "projection_dim": 48, "layer_norm_eps": 1e-5,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
}
CALIBRATION_PROMPTS = ("a mountain lake at sunset, best quality, highly detailed",  # the examples' prompts
                       "blurry, low quality, watermark, text")
BANNER = ("NOTE: these are RANDOM-WEIGHT STAND-INS, not real models: they only exercise the pipeline; "
          "their images are noise-like and mean nothing.")


def paths(models_dir: str | None = None) -> dict[str, str]:
    """Absolute paths of every stand-in file."""
    base = os.path.abspath(models_dir or DEFAULT_MODELS_DIR)
    return {k: os.path.join(base, rel) for k, rel in FILES.items()}


def is_fresh(models_dir: str | None = None) -> bool:
    """True when every stand-in exists with the current version (no ComfyUI import needed)."""
    base = os.path.abspath(models_dir or DEFAULT_MODELS_DIR)
    manifest = _read_manifest(base)
    return all(_fresh(base, manifest, FILES[f]) for files in _wanted().values() for f in files)


def ensure(models_dir: str | None = None, *, comfyui: str | None = None, force: bool = False,
           log: Callable[[str], None] = print) -> dict[str, str]:
    """Generate what is missing or stale; return the paths. Safe to call from several processes at once."""
    base = os.path.abspath(models_dir or DEFAULT_MODELS_DIR)
    os.makedirs(base, exist_ok=True)
    log(BANNER)
    with _locked(os.path.join(base, ".lock")):
        manifest = _read_manifest(base)
        if not faces.available():
            log("  the FaceID stand-ins are skipped: they need the onnx package (pip install onnx)")
        todo = [name for name, files in _wanted().items()
                if force or not all(_fresh(base, manifest, FILES[f]) for f in files)]
        if not todo:
            log(f"stand-ins up to date in {base}")
            return paths(base)
        if {"checkpoint", "clip_vision", *flux.NEEDS_COMFY} & set(todo):
            _import_comfy(comfyui)
        makers = {"checkpoint": _make_checkpoint, "clip_vision": _make_clip_vision, "adapter": _make_adapter,
                  "adapter_plus": _make_adapter_plus,
                  "adapters_faceid": lambda b: faces.make_adapters(b, site_dims=SITE_DIMS, seed=SEED + 3,
                                                                   clip_hidden=CLIP_VISION_CONFIG["hidden_size"],
                                                                   save=_save_tensors),
                  "face_models": lambda b: faces.make_face_models(b, seed=SEED + 4),
                  "flux": lambda b: flux.make_flux(b, seed=SEED + 5, save=_save_tensors, write_json=flux.write_json,
                                                   randomise=_randomise),
                  "adapter_xlabs": lambda b: flux.make_adapter(b, seed=SEED + 6,
                                                               encoder_dim=CLIP_VISION_CONFIG["projection_dim"],
                                                               save=_save_tensors),
                  "siglip": lambda b: flux.make_siglip(b, seed=SEED + 7, save=_save_tensors,
                                                       write_json=flux.write_json, randomise=_randomise),
                  "adapter_instantx": lambda b: flux.make_instantx_adapter(b, seed=SEED + 9, save=_save_tensors)}
        for name in todo:
            t0 = time.time()
            makers[name](base)
            for rel in (FILES[f] for f in PRODUCES[name]):
                size = os.path.getsize(os.path.join(base, rel))
                if not _valid(os.path.join(base, rel), rel):
                    raise SystemExit(f"standins: {rel} was written without one of {CHECKPOINT_PREFIXES}")
                manifest["files"][rel] = {"version": VERSION, "source": _source_stamp(), "size": size}
                log(f"  generated {rel} ({size / 1e6:.1f} MB, {time.time() - t0:.1f} s)")
            manifest["version"] = VERSION
            _atomic_write(os.path.join(base, MANIFEST), json.dumps(manifest, indent=1).encode())
    return paths(base)


# ---------------------------------------------------------------------------------------------- bookkeeping

def _read_manifest(base: str) -> dict:
    try:
        with open(os.path.join(base, MANIFEST)) as f:
            data = json.load(f)
        if isinstance(data.get("files"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"version": VERSION, "files": {}}


def _source_stamp() -> str:
    """A hash of the code that generates the files (this module and the test kit's adapter layout): a file written
    by other code is stale even when VERSION was not bumped."""
    import hashlib

    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for path in ([os.path.abspath(__file__), os.path.join(here, "adapters.py")]
                 + [os.path.join(here, n) for n in faces.SOURCES + flux.SOURCES]):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _fresh(base: str, manifest: dict, rel: str) -> bool:
    entry = manifest["files"].get(rel)
    full = os.path.join(base, rel)
    return (entry is not None and entry.get("version") == VERSION and entry.get("source") == _source_stamp()
            and os.path.isfile(full) and os.path.getsize(full) == entry.get("size") and _valid(full, rel))


def _valid(full: str, rel: str) -> bool:
    """The checkpoint holds all three parts (UNet, CLIP, VAE): reads only the safetensors header."""
    if rel != FILES["checkpoint"]:
        return True
    try:
        with open(full, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            keys = json.loads(f.read(n)).keys()
    except (OSError, ValueError):
        return False
    return all(any(k.startswith(p) for k in keys) for p in CHECKPOINT_PREFIXES)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _save_tensors(path: str, tensors: dict) -> None:
    """Write a .safetensors atomically, marked as a stand-in in its metadata."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
              metadata={"ipa_standin": VERSION, "description": BANNER})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _import_comfy(comfyui: str | None) -> None:
    """Make ComfyUI's ``comfy`` package importable, on the CPU."""
    if comfyui is None:
        comfyui, why = find_comfyui()
        if comfyui is None:
            raise SystemExit(f"standins: ComfyUI is needed to build the checkpoint and CLIP vision stand-ins: {why}")
    import_comfyui(comfyui, cpu=True)


def _randomise(module, generator) -> None:
    """Fill every parameter (ComfyUI's ops leave them uninitialised): matrices and kernels N(0, 1/fan_in),
    norm scales 1 + N(0, 0.1^2), biases and other vectors N(0, 0.02^2); 0-d scalars keep their value."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 0:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() == 1 and leaf == "weight":
                value = 1.0 + 0.1 * torch.randn(p.shape, generator=generator)
            elif p.dim() == 1:
                value = 0.02 * torch.randn(p.shape, generator=generator)
            else:
                fan_in = p[0].numel()
                value = torch.randn(p.shape, generator=generator) * fan_in ** -0.5
            p.copy_(value.to(p.dtype))


# ---------------------------------------------------------------------------------------------- the models

def _make_checkpoint(base: str) -> None:
    """SD1.5-shaped UNet + random TAESD + random CLIP-L, fp16, in the layout CheckpointLoaderSimple loads.

    Two numbers are calibrated on the random network so its pictures are neither saturated nor flat: the TAESD
    latent scale (from the spread of latents a short sampling run produces) and the decoder's last layer (mid-gray
    mean, moderate contrast)."""
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models
    import comfy.taesd.taesd
    from comfy.ldm.modules.attention import SpatialTransformer

    g = torch.Generator().manual_seed(SEED)
    cfg = comfy.supported_models.SD15(UNET_CONFIG)
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({}, "")
    _randomise(model.diffusion_model, g)
    dm = model.diffusion_model
    order = list(dm.input_blocks) + list(dm.output_blocks) + [dm.middle_block]
    widths = tuple(tb.attn2.to_k.weight.shape[0] for blk in order for layer in blk
                   if isinstance(layer, SpatialTransformer) for tb in layer.transformer_blocks)
    assert widths == SITE_DIMS, f"stand-in UNet sites {widths} != SITE_DIMS {SITE_DIMS}"

    clip = cfg.clip_target().clip(device="cpu", dtype=torch.float32)
    _randomise(clip, g)
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    _randomise(taesd, g)

    with torch.no_grad():
        # Latents like the stand-in runs of the examples give (3 steps, cfg 6, 64 px, their prompts).
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        tokenizer = cfg.clip_target().tokenizer(embedding_directory=None, tokenizer_data={})
        cond, uncond = (clip.encode_token_weights(tokenizer.tokenize_with_weights(text))[0]
                        for text in CALIBRATION_PROMPTS)
        latent = torch.zeros(2, 4, 8, 8)
        noise = torch.randn(latent.shape, generator=g)
        samples = comfy.sample.sample(patcher, noise, 3, 6.0, "dpmpp_2m", "karras", [[cond, {}]], [[uncond, {}]],
                                      latent, denoise=1.0, disable_pbar=True, seed=SEED)
        samples = samples.float()  # already divided by the SD1.5 latent scale, as VAEDecode receives it
        taesd.vae_scale.fill_(1.5 / float(samples.std()))
        last = taesd.taesd_decoder[-1]
        last.bias.zero_()
        out = taesd.taesd_decoder((samples - taesd.vae_shift) * taesd.vae_scale)
        gain = 0.25 / float(out.std())
        last.weight.mul_(gain)
        last.bias.fill_(0.5 - gain * float(out.mean()))
        del patcher

    sd = checkpoint_keys(model.diffusion_model.state_dict(), clip.state_dict(), taesd.state_dict())
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    _save_tensors(os.path.join(base, FILES["checkpoint"]), sd)


# The original LDM single-file layout every SD1.5 checkpoint has, which CheckpointLoaderSimple reads on every
# ComfyUI: written directly, so no ComfyUI-internal saving method (their signatures change between releases) is used.
CHECKPOINT_PREFIXES = ("model.diffusion_model.", "cond_stage_model.", "first_stage_model.")
CLIP_L_DROPPED = ("transformer.text_projection.weight", "logit_scale")  # not in SD1.5 checkpoints


def checkpoint_keys(unet: dict, clip: dict, vae: dict) -> dict:
    """An SD1.5 checkpoint's state dict from the UNet's, ComfyUI's SD1 CLIP model's ("clip_l." keys) and the VAE's
    state dicts."""
    unet_prefix, clip_prefix, vae_prefix = CHECKPOINT_PREFIXES
    sd = {unet_prefix + k: v for k, v in unet.items()}
    for k, v in clip.items():
        name = k[len("clip_l."):] if k.startswith("clip_l.") else None
        if name is None:
            raise ValueError(f"standins: CLIP key {k!r} is not a clip_l. key")
        if name not in CLIP_L_DROPPED:
            sd[clip_prefix + name] = v
    sd.update({vae_prefix + k: v for k, v in vae.items()})
    return sd


def _make_clip_vision(base: str) -> None:
    """Tiny CLIP vision encoder (ComfyUI's own class) and the .json it is built from."""
    import torch
    import comfy.clip_vision

    json_path = os.path.join(base, FILES["clip_vision_json"])
    _atomic_write(json_path, json.dumps(CLIP_VISION_CONFIG, indent=1).encode())
    cv = comfy.clip_vision.ClipVisionModel(json_path)
    _randomise(cv.model, torch.Generator().manual_seed(SEED + 1))
    _save_tensors(os.path.join(base, FILES["clip_vision"]), {k: v.float() for k, v in cv.get_sd().items()})


def _adapter_file(base: str, rel: str, kind: str, **shape) -> None:
    import torch

    from .adapters import adapter_parts

    image_proj, ip_adapter = adapter_parts(kind, ctx=768, site_dims=SITE_DIMS, seed=SEED + 2, **shape)
    flat = {f"image_proj.{k}": v.to(torch.float16) for k, v in image_proj.items()}
    flat.update({f"ip_adapter.{k}": v.to(torch.float16) for k, v in ip_adapter.items()})
    _save_tensors(os.path.join(base, rel), flat)


def _make_adapter(base: str) -> None:
    """Base adapter: Linear+LayerNorm over the stand-in encoder's 48-wide image embeds, 4 tokens."""
    _adapter_file(base, FILES["adapter"], "base", encoder_dim=CLIP_VISION_CONFIG["projection_dim"], tokens=4)


def _make_adapter_plus(base: str) -> None:
    """Plus adapter: a one-layer resampler (dim 64, 1 head) over the 64-wide penultimate hidden states."""
    _adapter_file(base, FILES["adapter_plus"], "plus", encoder_dim=CLIP_VISION_CONFIG["hidden_size"], tokens=4,
                         resampler_dim=64, resampler_heads=1, depth=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", default=DEFAULT_MODELS_DIR, help="where to write (default: %(default)s)")
    ap.add_argument("--comfyui", default=None, help="ComfyUI folder (default: testkit.comfyui_env.find_comfyui())")
    ap.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = ap.parse_args(argv)
    t0 = time.time()
    out = ensure(args.models_dir, comfyui=args.comfyui, force=args.force)
    for key, path in out.items():
        print(f"  {key:17s} {path}")
    print(f"stand-ins ready in {time.time() - t0:.1f} s. {BANNER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
