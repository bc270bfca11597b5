"""Read adapter files safely and split them into their two parts.

``.safetensors`` headers are validated before anything is allocated; ``.bin`` / ``.pt`` files are read with
``torch.load(weights_only=True)``, which refuses to run pickled code.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Mapping

import torch

from .errors import CorruptFileError, NotAnIPAdapterError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
# XLabs Flux files are flat: their projection's prefix (stripped) and their double-block layers (kept whole).
_XLABS_PROJ, _XLABS_LAYERS = "ip_adapter_proj_model.", "double_blocks."
# Prefix pairs used by published files and training checkpoints, in the order they are tried.
_PART_PREFIXES = (("image_proj.", "ip_adapter."), ("image_proj_model.", "adapter_modules."), ("image_proj.", "adapter_modules."))


@dataclass(frozen=True)
class AdapterParts:
    """The two state dicts of an IP-Adapter file, keys without their part prefix."""

    image_proj: dict[str, torch.Tensor]
    ip_adapter: dict[str, torch.Tensor]


def file_key(path: str) -> tuple[str, int, int]:
    """What identifies one version of a file for every cache of the package (loaded adapters and encoders, header
    scans, the unified loader's folder stamp): (real path, size, modification time in ns). OSError when it is gone."""
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def validate_safetensors_header(path: str) -> dict:
    """Parse and check a safetensors header without reading tensor data.

    Every tensor's byte range must lie inside the file and match its dtype and shape, so a truncated file or a
    header that claims huge tensors fails here, before any allocation.
    """
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"'{name}' is {size} bytes, too short to be a safetensors file (header missing).")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER_BYTES, size - 8):
            raise CorruptFileError(
                f"'{name}' is not a valid safetensors file: its header claims {n} bytes but the file has {size}. "
                "The file is truncated or not a safetensors file; download it again."
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"'{name}' has an unreadable safetensors header ({e}); download it again.") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"'{name}' has a malformed safetensors header; download it again.")
    data_size = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in info["data_offsets"])
            numel = 1
            for d in info["shape"]:
                numel *= int(d)
            itemsize = _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"'{name}': tensor '{key}' has a malformed header entry; download it again.") from None
        if not 0 <= start <= end <= data_size or end - start != numel * itemsize:
            raise CorruptFileError(
                f"'{name}': tensor '{key}' needs bytes {start}..{end} ({numel * itemsize} expected) but the file "
                f"holds {data_size} data bytes. The file is truncated or corrupt; download it again."
            )
    return header


def is_safetensors(path: str) -> bool:
    """True for a ``.safetensors`` / ``.sft`` name or safetensors content under any other name."""
    return path.lower().endswith(SAFETENSORS_SUFFIXES) or _looks_like_safetensors(path)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load every tensor of a file, safely. Nested ``.bin`` layouts are flattened as ``part.key``."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise CorruptFileError(f"'{path}' does not exist or is not a file.")
    if is_safetensors(path):
        validate_safetensors_header(path)
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CorruptFileError(f"'{name}' could not be read as safetensors ({e}); download it again.") from None
    return load_torch_file(path)


def load_torch_file(path: str, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A ``.bin`` / ``.pt`` state dict through ``torch.load(weights_only=True)``, flattened as ``part.key``.

    mmap=True maps the file instead of reading it: shapes and dtypes are known without reading tensor data (the file
    must be in torch's zip format, the default since torch 1.6; an older one raises CorruptFileError saying so).
    """
    name = os.path.basename(path)
    if mmap and not zipfile.is_zipfile(path):
        raise CorruptFileError(f"'{name}' is not in torch's zip format (an old .bin, or not a torch file): its tensors "
                               "cannot be listed without loading it all.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        culprit = re.search(r"GLOBAL ([\w.]+)", str(e))
        if culprit is None:  # not a refused Python object: the bytes are not a valid pickle at all
            raise CorruptFileError(f"'{name}' is neither a safetensors nor a torch weights file (it cannot be read "
                                   "from its first bytes); the download is damaged or it is another kind of file.") from None
        what = f" (it references {culprit.group(1)})"
        raise CorruptFileError(
            f"'{name}' was refused by safe loading: it contains Python objects other than tensors{what}, which could "
            "run code. Only plain weight files are loaded; use the .safetensors version of this adapter."
        ) from None
    except Exception as e:
        raise CorruptFileError(f"'{name}' is not a readable torch file ({type(e).__name__}: {e}); download it again.") from None
    return _flatten(obj, name)


def _looks_like_safetensors(path: str) -> bool:
    """True when the content is safetensors whatever the file is called: a little-endian header length that fits
    the file, followed by the header's opening brace."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] <= os.path.getsize(path) - 8


def _flatten(obj: object, name: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise NotAnIPAdapterError(f"'{name}' holds a {type(obj).__name__}, not a state dict of tensors.")
    flat: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, Mapping):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, torch.Tensor)})
        elif isinstance(v, torch.Tensor):
            flat[str(k)] = v
    return flat


def split_parts(state_dict: Mapping[str, torch.Tensor], *, name: str = "the file") -> AdapterParts:
    """Split a flat state dict into image_proj / ip_adapter parts by key prefix.

    XLabs Flux files: image_proj = the ``ip_adapter_proj_model.*`` keys without that prefix, ip_adapter = the
    ``double_blocks.*`` keys as they are (families/flux.py reads them).
    Raises NotAnIPAdapterError naming what the file looks like when neither prefix pair is present.
    """
    if any(k.startswith(_XLABS_PROJ) for k in state_dict):
        proj = {k[len(_XLABS_PROJ):]: v for k, v in state_dict.items() if k.startswith(_XLABS_PROJ)}
        layers = {k: v for k, v in state_dict.items() if k.startswith(_XLABS_LAYERS)}
        if not layers:
            raise NotAnIPAdapterError(f"{name} has an XLabs Flux image projection ('{_XLABS_PROJ}*') but no "
                                      f"'{_XLABS_LAYERS}*' layers; the file is incomplete.")
        return AdapterParts(image_proj=proj, ip_adapter=layers)
    for proj_prefix, layers_prefix in _PART_PREFIXES:
        proj = {k[len(proj_prefix):]: v for k, v in state_dict.items() if k.startswith(proj_prefix)}
        layers = {k[len(layers_prefix):]: v for k, v in state_dict.items() if k.startswith(layers_prefix)}
        if proj and layers:
            return AdapterParts(image_proj=proj, ip_adapter=layers)
    raise NotAnIPAdapterError(
        f"{name} is not an IP-Adapter: it has no 'image_proj.*' + 'ip_adapter.*' keys; it looks like "
        f"{guess_kind(state_dict)}. Put IP-Adapter files (e.g. ip-adapter_sd15.safetensors) in models/ipadapter."
    )


def guess_kind(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short human description of what a non-adapter state dict probably is, for error messages."""
    keys = list(state_dict)
    if not keys:
        return "an empty file (no tensors)"
    if any("lora_" in k or ".lora." in k or "lora_unet" in k for k in keys):
        return "a LoRA"
    if any(k.startswith(("vision_model.", "visual.")) for k in keys):
        return "a CLIP vision encoder (that belongs in models/clip_vision)"
    if any(k.startswith(("model.diffusion_model.", "input_blocks.", "down_blocks.", "double_blocks.")) for k in keys):
        return "a diffusion model / checkpoint"
    if any("controlnet" in k or k.startswith("control_model.") for k in keys):
        return "a ControlNet"
    return f"an unknown model ({len(keys)} tensors, e.g. '{keys[0]}')"


def load_adapter_parts(path: str) -> AdapterParts:
    """Read ``path`` safely and split it; the one entry point the host uses."""
    return split_parts(read_state_dict(path), name=f"'{os.path.basename(path)}'")
