"""The LoRA route: an adapter file's LoRA (FaceID) onto a UNet clone through ComfyUI's own weight patching.

ip_adapter_core.lora maps the file's keys to (site, attention, projection) targets; here each target gets the name
of the model weight it patches, ComfyUI's ``comfy.lora.load_lora`` reads the pairs (the file's "<prefix>_lora.up /
.down" names are one of the layouts it knows; no alpha = no alpha/rank factor, as the official processors), and
``ModelPatcher.add_patches`` records them on the clone. ComfyUI applies them when it loads the model and takes them
off again (no weight is copied by this package; the caller's model keeps no patch).
"""
from __future__ import annotations

import logging
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


LORAS = "ipa_loras"  # transformer_options: adapter_id -> strength of the adapter LoRAs already on this model


def add_adapter_lora(m: Any, adapter: Any, strength: float, *, where: str) -> list[str]:
    """Add the LoRA of ``adapter`` (a LoadedAdapter whose file carries one: FaceID, FaceID Plus) to the clone ``m``
    once: a second apply of the same adapter on a model that has it already adds nothing (its strength stays the
    first one's). Returns notes for the node's text: what was applied, and a warning when the model already carries
    the same LoRA from elsewhere (the separate ``*_lora.safetensors`` through a LoRA loader: applied twice)."""
    lora = getattr(adapter, "lora", None)
    if not lora or strength == 0:
        return []
    to = m.model_options.setdefault("transformer_options", {})
    done = dict(to.get(LORAS, {}))
    if adapter.adapter_id in done:
        return [f"LoRA of '{adapter.name}' already on this model (strength {done[adapter.adapter_id]:g}); not added again"]
    notes = []
    twice = _loaded_elsewhere(m, lora)
    if twice:
        notes.append(f"warning: the model already has this adapter's LoRA ({twice}); it is now applied twice. "
                     f"Remove the LoRA loader, or set lora_strength to 0.")
        logging.warning("IP-Adapter: %s: %s", where, notes[-1])
    count = add_lora(m, lora, strength, adapter_name=adapter.name, where=where)
    done[adapter.adapter_id] = float(strength)
    to[LORAS] = done
    return [f"LoRA of '{adapter.name}' applied at strength {strength:g} ({count} weights)"] + notes


def _loaded_elsewhere(m: Any, lora: Mapping[str, torch.Tensor]) -> str | None:
    """Whether a patch already on ``m`` holds this LoRA's first pair (the same values, any key layout)."""
    sites = model_sites(m)
    targets = lora_targets(lora, sites, model_context_dim(m) or 0, adapter_name="", where="")
    if not targets:
        return None
    first = targets[0]
    paths = {(block, block_id, t): path for block, block_id, t, path, _ in transformer_blocks(m)}
    weight = f"{paths[sites[first.site].key]}.{first.attention}.{first.module}.weight"
    down = lora[f"{first.prefix}_lora.down.weight"].float().cpu()
    for patch in m.patches.get(weight, []):
        v = patch[1]
        tensors = getattr(v, "weights", None) or (v[1] if isinstance(v, tuple) and len(v) == 2 else ())
        for t in tensors if isinstance(tensors, (tuple, list)) else ():
            if isinstance(t, torch.Tensor) and t.shape == down.shape and torch.allclose(
                    t.float().cpu(), down, rtol=1e-2, atol=1e-3 * float(down.abs().max())):
                return f"a LoRA patch on {weight} with the same values"
    return None
