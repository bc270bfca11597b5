"""The LoRA an adapter file may carry (FaceID, FaceID-Plus, FaceID-Plus v2), mapped onto a UNet's attention weights.

Key format (reference/ip-adapter-formats.md §1): ``"{N}.to_{q,k,v,out}_lora.{down,up}.weight"`` for every attention
processor N in diffusers' registration order: N = 2i is the attn1 (self-attention) and N = 2i + 1 the attn2 of the
i-th site in checkpoint order (ip_adapter_core.sites), the same numbering as the ``to_k_ip`` / ``to_v_ip`` keys.
The official processors add ``up(down(x))`` to to_q / to_k / to_v / to_out[0] with no alpha/rank factor.

:func:`lora_targets` turns a file's LoRA keys into (site, attention, projection) targets, checked against the
model's sites (count and widths), pure torch; the host layer (nodes/patch/lora.py) names the model's weights and
hands them to ComfyUI's own weight patching, so no weight is copied and the caller's model is never changed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .errors import IncompatibleError
from .sites import Site

PROJECTIONS = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}  # LoRA name -> module path in the block
_KEY = re.compile(r"^(?P<n>\d+)\.to_(?P<proj>q|k|v|out)_lora\.(?P<part>down|up)\.weight$")


@dataclass(frozen=True)
class LoraTarget:
    """One LoRA pair: ``prefix`` ("7.to_k", the file's name without "_lora.{down,up}.weight") onto the ``module`` of
    site ``site``'s ``attention`` ("attn1" or "attn2"): "to_q", "to_k", "to_v" or "to_out.0"."""

    prefix: str
    site: int
    attention: str
    module: str


def has_lora(ip_adapter: Mapping[str, torch.Tensor]) -> bool:
    return lora_rank(ip_adapter) is not None


def lora_rank(ip_adapter: Mapping[str, torch.Tensor]) -> int | None:
    """The rank r of the file's LoRA (``down.weight`` is [r, in]), None without one."""
    for key, t in ip_adapter.items():
        m = _KEY.match(key)
        if m and m["part"] == "down":
            return int(t.shape[0])
    return None


def lora_targets(ip_adapter: Mapping[str, torch.Tensor], sites: Sequence[Site], context_dim: int, *,
                 adapter_name: str, where: str) -> list[LoraTarget]:
    """The targets of every LoRA pair in ``ip_adapter`` (keys without their part prefix) on a model with ``sites``
    (checkpoint order) and text width ``context_dim``. IncompatibleError when a pair is incomplete, addresses a
    processor the model does not have, or has widths that do not fit the weight it patches."""
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in ip_adapter.items():
        m = _KEY.match(key)
        if m:
            pairs.setdefault((int(m["n"]), m["proj"]), {})[m["part"]] = t
    targets = []
    for (n, proj), parts in sorted(pairs.items()):
        prefix = f"{n}.to_{proj}"
        if set(parts) != {"down", "up"}:
            raise IncompatibleError(f"{where}: '{adapter_name}' has a LoRA key '{prefix}_lora' without its "
                                    f"{'up' if 'down' in parts else 'down'} half; the file is damaged.")
        site, attention = n // 2, ("attn1" if n % 2 == 0 else "attn2")
        if site >= len(sites):
            raise IncompatibleError(f"{where}: '{adapter_name}' has a LoRA for attention processor {n}, but the model "
                                    f"has {2 * len(sites)} (0-{2 * len(sites) - 1}); the adapter is for another "
                                    f"base model.")
        hidden = sites[site].hidden
        width_in = context_dim if attention == "attn2" and proj in ("k", "v") else hidden
        down, up = parts["down"], parts["up"]
        if (down.dim() != 2 or up.dim() != 2 or down.shape[1] != width_in or up.shape[0] != hidden
                or up.shape[1] != down.shape[0]):
            raise IncompatibleError(
                f"{where}: '{adapter_name}' LoRA '{prefix}' is down {tuple(down.shape)} / up {tuple(up.shape)}, but "
                f"the model's {attention} {PROJECTIONS[proj]} at site {site} maps {width_in} -> {hidden}; the "
                f"adapter is for another base model.")
        targets.append(LoraTarget(prefix=prefix, site=site, attention=attention, module=PROJECTIONS[proj]))
    return targets
