"""Image tokens as a file: safetensors tensors ``cond`` / ``uncond`` plus string metadata. Never pickle.

Metadata keys: ``format`` = "ipa_embeds", ``format_version`` = "1", ``adapter_id``, ``adapter_name`` and ``spec``
(the AdapterSpec fields as JSON), so loaded tokens still refuse an adapter that did not make them (check_fits).
"""
from __future__ import annotations

import dataclasses
import json
import re

import torch

from .embeds import ImageTokens, payload_width
from .errors import CorruptFileError, InputError, NotAnIPAdapterError
from .spec import AdapterSpec

FORMAT = "ipa_embeds"
FORMAT_VERSION = "1"
_SPEC_FIELDS = {f.name for f in dataclasses.fields(AdapterSpec)}
_REQUIRED_SPEC = {f.name for f in dataclasses.fields(AdapterSpec) if f.default is dataclasses.MISSING}


def to_safetensors_dict(tokens: ImageTokens) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """ImageTokens -> (tensors, metadata) ready for ``safetensors.torch.save_file``."""
    tensors = {"cond": tokens.cond.detach().contiguous().cpu(), "uncond": tokens.uncond.detach().contiguous().cpu()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "adapter_id": tokens.adapter_id,
                "adapter_name": tokens.adapter_name, "spec": json.dumps(dataclasses.asdict(tokens.spec))}
    return tensors, metadata


def from_safetensors_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None, *,
                          name: str) -> ImageTokens:
    """(tensors, metadata) read from file ``name`` -> ImageTokens, with every field checked."""
    metadata = metadata or {}
    if metadata.get("format") != FORMAT:
        raise NotAnIPAdapterError(
            f"'{name}' is not an embeds file saved by 'IPA Save Embeds' (its metadata has no format '{FORMAT}'"
            f"{'' if 'format' not in metadata else ', found ' + repr(metadata['format'])}). Save the embeds again "
            f"with 'IPA Save Embeds'.")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CorruptFileError(f"'{name}' has embeds format version {metadata.get('format_version')!r}; this "
                               f"version of the pack reads version {FORMAT_VERSION}. Save the embeds again.")
    missing = [k for k in ("adapter_id", "adapter_name", "spec") if k not in metadata]
    missing += [k for k in ("cond", "uncond") if k not in tensors]
    if missing:
        raise CorruptFileError(f"'{name}' lacks {', '.join(missing)}; the file is damaged. Save the embeds again.")
    spec = _spec_from_json(metadata["spec"], name=name)
    cond, uncond = tensors["cond"], tensors["uncond"]
    width = payload_width(spec)  # the token width, or the encoder width for embeds that carry features (SD3.5)
    if (cond.dim() != 3 or uncond.dim() != 3 or uncond.shape[0] != 1 or cond.shape[0] < 1
            or cond.shape[1:] != uncond.shape[1:] or cond.shape[2] != width):
        raise CorruptFileError(f"'{name}' has tokens of shapes cond {tuple(cond.shape)} / uncond "
                               f"{tuple(uncond.shape)}; expected (N, T, {width}) / (1, T, {width}). "
                               f"The file is damaged; save the embeds again.")
    return ImageTokens(cond=cond.float(), uncond=uncond.float(), spec=spec, adapter_id=metadata["adapter_id"],
                       adapter_name=metadata["adapter_name"])


def _spec_from_json(text: str, *, name: str) -> AdapterSpec:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"'{name}' has unreadable adapter metadata ({e}); save the embeds again.") from None
    found = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
    if not isinstance(fields, dict) or not _REQUIRED_SPEC <= set(fields) or not set(fields) <= _SPEC_FIELDS:
        raise CorruptFileError(f"'{name}' has adapter metadata with fields {found}; expected "
                               f"{sorted(_SPEC_FIELDS)}. Save the embeds again.")
    fields["site_dims"] = tuple(fields["site_dims"])
    try:
        return AdapterSpec(**fields)
    except TypeError as e:
        raise CorruptFileError(f"'{name}' has invalid adapter metadata ({e}); save the embeds again.") from None


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_prefix(prefix: str, *, where: str) -> list[str]:
    """A save prefix -> its path parts (sub-folders then the file stem), relative to the embeds folder.

    Rejected: empty, absolute ("/x", "\\\\x", "C:x"), any ".." or "." part, empty parts, NUL. Both / and \\ separate
    folders. Non-ASCII names are fine.
    """
    if not prefix or not prefix.strip():
        raise InputError(f"{where}: the prefix is empty; give a file name such as 'ipa_embeds'.")
    if prefix.startswith(("/", "\\")) or _DRIVE.match(prefix):
        raise InputError(f"{where}: '{prefix}' is an absolute path; files are always saved in the "
                         f"ipadapter_embeds folder, so give a relative name such as 'faces/ipa_embeds'.")
    parts = re.split(r"[/\\]", prefix)
    if "\0" in prefix or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"{where}: '{prefix}' leaves or escapes the ipadapter_embeds folder ('..', '.', empty "
                         f"or NUL parts are not allowed); give a name such as 'faces/ipa_embeds'.")
    return parts


def next_file_name(stem: str, existing: list[str]) -> str:
    """'<stem>_NNNNN.safetensors' with NNNNN one above the highest already in ``existing`` (file names)."""
    pattern = re.compile(re.escape(stem) + r"_(\d{5,})\.safetensors$")
    numbers = [int(m.group(1)) for m in map(pattern.match, existing) if m]
    return f"{stem}_{max(numbers, default=0) + 1:05d}.safetensors"
