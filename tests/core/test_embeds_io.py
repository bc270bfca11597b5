"""Embeds as safetensors data (ip_adapter_core.embeds_io): round trip, metadata checks, save-name rules."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ip_adapter_core.checkpoint import validate_safetensors_header
from ip_adapter_core.embeds import ImageTokens
from ip_adapter_core.embeds_io import check_prefix, from_safetensors_dict, next_file_name, to_safetensors_dict
from ip_adapter_core.errors import CorruptFileError, IncompatibleError, InputError, NotAnIPAdapterError
from ip_adapter_core.spec import AdapterSpec

SPEC = AdapterSpec(kind="plus", cross_attention_dim=8, encoder_input="penultimate", encoder_dim=12, num_tokens=4,
                   site_dims=(16, 32), resampler_dim=8, resampler_heads=1, resampler_depth=2)


def tokens() -> ImageTokens:
    g = torch.Generator().manual_seed(0)
    return ImageTokens(cond=torch.randn(3, 4, 8, generator=g), uncond=torch.randn(1, 4, 8, generator=g), spec=SPEC,
                       adapter_id="abc123", adapter_name="plus_ünïcode.safetensors")


def test_round_trip_through_a_file_is_exact(tmp_path):
    original = tokens()
    tensors, metadata = to_safetensors_dict(original)
    assert all(isinstance(v, str) for v in metadata.values())
    path = str(tmp_path / "e.safetensors")
    save_file(tensors, path, metadata=metadata)
    validate_safetensors_header(path)
    with safe_open(path, framework="pt") as f:
        loaded = from_safetensors_dict({k: f.get_tensor(k) for k in f.keys()}, f.metadata(), name="e.safetensors")
    assert torch.equal(loaded.cond, original.cond) and torch.equal(loaded.uncond, original.uncond)
    assert loaded.spec == SPEC and loaded.adapter_id == "abc123" and loaded.adapter_name == original.adapter_name
    loaded.check_fits(SPEC, "abc123", "x", where="t")
    with pytest.raises(IncompatibleError, match="plus_ünïcode"):
        loaded.check_fits(SPEC, "other", "x", where="t")


def _with(**changes):
    tensors, metadata = to_safetensors_dict(tokens())
    for key, value in changes.items():
        target = tensors if key in ("cond", "uncond") else metadata
        if value is None:
            target.pop(key)
        else:
            target[key] = value
    return tensors, metadata


@pytest.mark.parametrize("change, error, words", [
    (dict(format=None), NotAnIPAdapterError, "not an embeds file saved by 'IPA Save Embeds'"),
    (dict(format="lora"), NotAnIPAdapterError, "found 'lora'"),
    (dict(format_version="9"), CorruptFileError, "version '9'"),
    (dict(adapter_id=None), CorruptFileError, "lacks adapter_id"),
    (dict(uncond=None), CorruptFileError, "lacks uncond"),
    (dict(spec="{not json"), CorruptFileError, "unreadable adapter metadata"),
    (dict(spec=json.dumps({"kind": "plus"})), CorruptFileError, "fields"),
    (dict(cond=torch.zeros(3, 4, 7)), CorruptFileError, r"\(N, T, 8\)"),
    (dict(uncond=torch.zeros(2, 4, 8)), CorruptFileError, "uncond"),
])
def test_bad_metadata_or_tensors_get_clear_errors(change, error, words):
    tensors, metadata = _with(**change)
    with pytest.raises(error, match=words) as e:
        from_safetensors_dict(tensors, metadata, name="x.safetensors")
    assert "'x.safetensors'" in str(e.value)


def test_a_file_without_metadata_is_not_embeds():
    with pytest.raises(NotAnIPAdapterError, match="IPA Save Embeds"):
        from_safetensors_dict({"weight": torch.zeros(2)}, None, name="lora.safetensors")


@pytest.mark.parametrize("prefix", ["../x", "a/../../x", "/etc/x", "\\\\server\\x", "C:x", "c:\\x", "a/./b", "a//b",
                                    "..", "", "   ", "x\0y", "a\\..\\b"])
def test_traversal_and_absolute_prefixes_are_rejected(prefix):
    with pytest.raises(InputError, match="filename_prefix"):
        check_prefix(prefix, where="filename_prefix")


@pytest.mark.parametrize("prefix, parts", [
    ("ipa_embeds", ["ipa_embeds"]),
    ("faces/anna", ["faces", "anna"]),
    ("gesichter/jürgen_顔", ["gesichter", "jürgen_顔"]),
    ("a..b", ["a..b"]),
])
def test_relative_and_non_ascii_prefixes_are_accepted(prefix, parts):
    assert check_prefix(prefix, where="t") == parts


def test_next_file_name_counts_up_per_stem():
    assert next_file_name("e", []) == "e_00001.safetensors"
    assert next_file_name("e", ["e_00001.safetensors", "e_00007.safetensors", "e_x_00009.safetensors",
                                "e_00008.txt"]) == "e_00008.safetensors"
    assert next_file_name("顔", ["顔_00002.safetensors"]) == "顔_00003.safetensors"


def test_an_xlabs_flux_spec_round_trips_through_the_embeds_file():
    """Flux tokens saved by IPA Save Embeds load back as the same spec (family, kind, widths), so they fit the same
    XLabs adapter again."""
    spec = AdapterSpec(kind="xlabs", cross_attention_dim=16, encoder_input="image_embeds", encoder_dim=12, num_tokens=4,
                       site_dims=(8, 8, 8), adapter_family="xlabs-flux")
    g = torch.Generator().manual_seed(1)
    original = ImageTokens(cond=torch.randn(2, 4, 16, generator=g), uncond=torch.randn(1, 4, 16, generator=g),
                           spec=spec, adapter_id="f1", adapter_name="ip_adapter.safetensors")
    loaded = from_safetensors_dict(*to_safetensors_dict(original), name="flux.safetensors")
    assert loaded.spec == spec and loaded.spec.describe().startswith("XLabs Flux v1, Flux")
    assert torch.equal(loaded.cond, original.cond) and torch.equal(loaded.uncond, original.uncond)
