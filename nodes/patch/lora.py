"""The LoRA route: an adapter file's LoRA (FaceID) onto a UNet clone through ComfyUI's own weight patching.

ip_adapter_core.lora maps the file's keys to (site, attention, projection) targets; here each target gets the name
of the model weight it patches, ComfyUI's ``comfy.lora.load_lora`` reads the pairs (the file's "<prefix>_lora.up /
.down" names are one of the layouts it knows; no alpha = no alpha/rank factor, as the official processors), and
``ModelPatcher.add_patches`` records them on the clone. ComfyUI applies them when it loads the model and takes them
off again (no weight is copied by this package; the caller's model keeps no patch).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import comfy.lora

from ...ip_adapter_core.errors import IncompatibleError
from ...ip_adapter_core.lora import lora_targets
from .host import model_context_dim, model_sites, transformer_blocks


def add_lora(m: Any, ip_adapter: Mapping[str, torch.Tensor], strength: float, *, adapter_name: str,
             where: str) -> int:
    """Add the LoRA in ``ip_adapter`` (the file's ip_adapter part) at ``strength`` to the clone ``m``; returns the
    number of weights patched. IncompatibleError when it does not fit the model or ComfyUI takes fewer pairs."""
    sites = model_sites(m)
    targets = lora_targets(ip_adapter, sites, model_context_dim(m) or 0, adapter_name=adapter_name, where=where)
    if not targets:
        return 0
    paths = {(block, block_id, t): path for block, block_id, t, path, _ in transformer_blocks(m)}
    to_load = {t.prefix: f"{paths[sites[t.site].key]}.{t.attention}.{t.module}.weight" for t in targets}
    patches = comfy.lora.load_lora(dict(ip_adapter), to_load, log_missing=False)
    added = m.add_patches(patches, float(strength))
    if len(added) != len(targets):
        missing = sorted(set(to_load.values()) - set(added))[:3]
        raise IncompatibleError(f"{where}: ComfyUI patched {len(added)} of the {len(targets)} LoRA weights of "
                                f"'{adapter_name}' (not found: {missing}).")
    return len(added)
