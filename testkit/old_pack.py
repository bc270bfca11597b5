"""Where cubiq's ComfyUI_IPAdapter_plus is installed for the comparison tests, and the models both packs can run:
the old pack hard-codes SD1.5's real block layout and the Resampler's shape, so :func:`make_models` writes an
SD1.5-layout UNet (320 channels on every level, random weights), a 224 px tiny CLIP vision and adapters in the
published shapes into a model folder. Nothing of the old pack is kept here: its folder is found, never copied.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys

from .comfyui_env import REPO

def old_pack_folder(comfyui: str) -> tuple[str | None, bool]:
    """(folder of ComfyUI_IPAdapter_plus, whether it must be linked into the test's server) or (None, False)."""
    env = os.environ.get("IPA_OLD_PACK")
    if env:
        return (env, True) if os.path.isfile(os.path.join(env, "IPAdapterPlus.py")) else (None, False)
    hits = glob.glob(os.path.join(comfyui, "custom_nodes", "*", "IPAdapterPlus.py"))
    return (os.path.dirname(hits[0]), False) if hits else (None, False)


# run with python3 -c in the repo root (the interpreter puts the working folder on sys.path: testkit imports)
MAKE_MODELS = r"""
import json, os, sys
comfyui, base = sys.argv[1:3]
from testkit import standins
standins._import_comfy(comfyui)
import torch
import comfy.clip_vision
from testkit.adapters import adapter_parts
from safetensors.torch import save_file

# SD1.5's real block layout (sites input 1,2,4,5,7,8 / middle / output 3..11), 320 channels on every level
standins.UNET_CONFIG = dict(standins.UNET_CONFIG, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 1, 1, 1],
                            transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],  # input blocks 1, 2, 4, 5, 7, 8, 10, 11
                            transformer_depth_output=[1] * 9 + [0] * 3)  # ComfyUI pops it from the end: 11 .. 0
standins.SITE_DIMS = (320,) * 16
for sub in ("checkpoints", "clip_vision", "ipadapter"):
    os.makedirs(os.path.join(base, sub), exist_ok=True)
standins._make_checkpoint(base)
# the old pack always feeds 224 px; its ClipVision Enhancer reads image embeds as a square grid even for plus
# adapters, so the projection width is a square (8 x 8)
config = dict(standins.CLIP_VISION_CONFIG, image_size=224, patch_size=32, projection_dim=64)
json_path = os.path.join(base, "clip_vision", "ipa_clip_vision_224.json")
with open(json_path, "w") as f:
    json.dump(config, f)
cv = comfy.clip_vision.ClipVisionModel(json_path)
standins._randomise(cv.model, torch.Generator().manual_seed(standins.SEED + 1))
save_file({k: v.float().contiguous() for k, v in cv.get_sd().items()}, json_path[:-5] + ".safetensors")
for name, kind, shape in (("ip-adapter_sd15_test.safetensors", "base", dict(encoder_dim=64, tokens=4)),
                          ("ip-adapter-plus_sd15_test.safetensors", "plus",  # the old pack's fixed Resampler
                           dict(encoder_dim=64, tokens=16, resampler_dim=768, resampler_heads=12, depth=4))):
    proj, layers = adapter_parts(kind, ctx=768, site_dims=standins.SITE_DIMS, seed=5, **shape)
    flat = {f"image_proj.{k}": v.contiguous() for k, v in proj.items()}
    flat.update({f"ip_adapter.{k}": v.contiguous() for k, v in layers.items()})
    save_file(flat, os.path.join(base, "ipadapter", name))
"""


def make_models(comfyui: str, base: str) -> str:
    """Write the models into ``base`` (a child process: comfy's model code stays out of this interpreter)."""
    subprocess.run([sys.executable, "-c", MAKE_MODELS, comfyui, base], check=True, timeout=1200, cwd=REPO)
    return base


def not_found_reason(comfyui: str) -> str:
    return ("ComfyUI_IPAdapter_plus is not installed (no */IPAdapterPlus.py in "
            f"{os.path.join(comfyui, 'custom_nodes')}, IPA_OLD_PACK not set)")
