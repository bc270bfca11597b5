"""Reading adapter files: containers, prefixes, dtypes, corrupt files, non-adapters and pickle safety.

Files are made by the tests from tiny random weights in the published key layout (formats reference §0/§1).
"""
from __future__ import annotations

import json
import os
import shlex
import struct

import pytest
import torch
from safetensors.torch import save_file

from ip_adapter_core import detect_spec
from ip_adapter_core.checkpoint import load_adapter_parts, read_state_dict, split_parts
from ip_adapter_core.errors import (
    CorruptFileError,
    IPAdapterError,
    NotAnIPAdapterError,
)
from testkit.aten import AtenLog

from testkit.adapters import adapter_parts, save_adapter

SITES = (32, 32, 64)  # three cross-attention sites, N = 1, 3, 5


def tiny(kind: str, dtype=torch.float32, seed=0):
    kw = dict(ctx=24, encoder_dim=16, site_dims=SITES, dtype=dtype, seed=seed)
    if kind == "plus":
        kw.update(tokens=4, resampler_dim=64, resampler_heads=1, depth=2)
    elif kind == "full_face":
        kw.update(tokens=None)
    return adapter_parts(kind, **kw)


def assert_same_parts(parts, image_proj, ip_adapter):
    for got, want in ((parts.image_proj, image_proj), (parts.ip_adapter, ip_adapter)):
        assert set(got) == set(want)
        for k in want:
            assert got[k].dtype == want[k].dtype, k
            assert got[k].shape == want[k].shape, k
            assert torch.equal(got[k], want[k]), k


def spec_of(path):
    parts = load_adapter_parts(str(path))
    return detect_spec(parts.image_proj, parts.ip_adapter, name=os.path.basename(str(path)))


class NoLoad:
    """Fails the test if safetensors is asked to read tensors (the header check must reject the file first)."""

    def __init__(self, monkeypatch):
        import safetensors
        import safetensors.torch

        def refuse(*a, **k):
            raise AssertionError("tensor data was read before the header was validated")

        monkeypatch.setattr(safetensors.torch, "load_file", refuse)
        monkeypatch.setattr(safetensors.torch, "safe_open", refuse, raising=False)
        monkeypatch.setattr(safetensors, "safe_open", refuse)


# --- round trips ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["base", "plus", "full_face"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("ext", [".safetensors", ".bin"])
def test_round_trip_identical_parts(tmp_path, kind, dtype, ext):
    p, ip = tiny(kind, dtype)
    path = save_adapter(str(tmp_path / f"a{ext}"), p, ip)
    assert_same_parts(load_adapter_parts(path), p, ip)


def test_mixed_dtypes_kept_as_stored(tmp_path):
    # Some published .bin files keep image_proj in fp32 and the layers in fp16 (§0): load any dtype as stored.
    p, _ = tiny("plus", torch.float32)
    _, ip = tiny("plus", torch.float16)
    for ext in (".bin", ".safetensors"):
        path = save_adapter(str(tmp_path / f"mixed{ext}"), p, ip)
        assert_same_parts(load_adapter_parts(path), p, ip)


def _flat(p, ip, proj_prefix, layers_prefix):
    flat = {f"{proj_prefix}{k}": v for k, v in p.items()}
    flat.update({f"{layers_prefix}{k}": v for k, v in ip.items()})
    return flat


@pytest.mark.parametrize("prefixes", [("image_proj.", "ip_adapter."), ("image_proj_model.", "adapter_modules."),
                                      ("image_proj.", "adapter_modules.")])
@pytest.mark.parametrize("ext", [".safetensors", ".bin"])
def test_flat_prefix_layouts(tmp_path, prefixes, ext):
    p, ip = tiny("base", torch.float16)
    flat = _flat(p, ip, *prefixes)
    path = str(tmp_path / f"flat{ext}")
    if ext == ".bin":
        torch.save(flat, path)
    else:
        save_file(flat, path)
    assert_same_parts(load_adapter_parts(path), p, ip)


def test_nested_bin_with_adapter_modules_key(tmp_path):
    # Kolors-style nested .bin: {"image_proj": ..., "adapter_modules": ...} (§0).
    p, ip = tiny("plus", torch.float16)
    path = str(tmp_path / "kolors.bin")
    torch.save({"image_proj": p, "adapter_modules": ip}, path)
    assert_same_parts(load_adapter_parts(path), p, ip)


def test_training_checkpoint_with_extra_keys(tmp_path):
    # Training checkpoints also carry UNet weights; the two adapter parts are still found by prefix.
    p, ip = tiny("base")
    flat = _flat(p, ip, "image_proj_model.", "adapter_modules.")
    flat["unet.conv_in.weight"] = torch.zeros(2, 2)
    path = str(tmp_path / "checkpoint-1000.bin")
    torch.save(flat, path)
    assert_same_parts(load_adapter_parts(path), p, ip)


def test_split_parts_in_memory_matches_file():
    p, ip = tiny("base")
    parts = split_parts(_flat(p, ip, "image_proj.", "ip_adapter."))
    assert_same_parts(parts, p, ip)


@pytest.mark.parametrize("kind", ["base", "plus", "full_face"])
def test_file_name_does_not_change_detection(tmp_path, kind):
    p, ip = tiny(kind, torch.float16)
    original = save_adapter(str(tmp_path / "x.safetensors"), p, ip)
    want = spec_of(original)
    for misleading in ("ip-adapter-plus_sdxl.safetensors", "ip-adapter-full-face_sd15.safetensors",
                       "ip-adapter_sd15_light.safetensors", "ip-adapter-faceid-plusv2_sd15.safetensors"):
        target = str(tmp_path / misleading)
        os.replace(original, target)
        assert spec_of(target) == want, misleading
        original = target
    assert want.kind == kind


# --- corrupt files ----------------------------------------------------------------------------------------------

def _good_file(tmp_path):
    p, ip = tiny("plus", torch.float16)
    return save_adapter(str(tmp_path / "good.safetensors"), p, ip)


def _header_len(path):
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


@pytest.mark.parametrize("where", ["data", "header", "length field"])
def test_truncated_safetensors_rejected_before_allocation(tmp_path, monkeypatch, where):
    path = _good_file(tmp_path)
    size, n = os.path.getsize(path), _header_len(path)
    cut = {"data": 8 + n + (size - 8 - n) // 2, "header": 8 + n // 2, "length field": 5}[where]
    with open(path, "rb") as f:
        data = f.read(cut)
    with open(path, "wb") as f:
        f.write(data)
    NoLoad(monkeypatch)
    with AtenLog() as log, pytest.raises(CorruptFileError) as e:
        read_state_dict(path)
    assert log.ops == []
    assert "good.safetensors" in str(e.value)


@pytest.mark.parametrize("ext", [".safetensors", ".bin", ".pt"])
def test_random_bytes(tmp_path, ext):
    path = tmp_path / f"noise{ext}"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CorruptFileError):
        read_state_dict(str(path))


@pytest.mark.parametrize("ext", [".safetensors", ".bin"])
def test_zero_byte_file(tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError):
        load_adapter_parts(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(IPAdapterError):
        load_adapter_parts(str(tmp_path / "nope.safetensors"))


def _write_safetensors(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("case", ["offsets beyond file", "shape larger than its bytes", "header length huge",
                                  "negative shape", "unknown dtype", "header not json"])
def test_lying_safetensors_header(tmp_path, monkeypatch, case):
    path = str(tmp_path / "liar.safetensors")
    big = [1 << 20, 1 << 20]  # 4 TiB of F32
    ok = {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}
    if case == "offsets beyond file":
        _write_safetensors(path, {"image_proj.proj.weight": {"dtype": "F32", "shape": big, "data_offsets": [0, 4 << 40]},
                                  "ip_adapter.1.to_k_ip.weight": ok}, b"\0" * 16)
    elif case == "shape larger than its bytes":
        _write_safetensors(path, {"image_proj.proj.weight": {"dtype": "F32", "shape": big, "data_offsets": [0, 16]}}, b"\0" * 16)
    elif case == "header length huge":
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", 1 << 40) + b"{}" + b"\0" * 64)
    elif case == "negative shape":
        _write_safetensors(path, {"x": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16)
    elif case == "unknown dtype":
        _write_safetensors(path, {"x": {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16)
    else:
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", 8) + b"not json" + b"\0" * 16)
    NoLoad(monkeypatch)
    with AtenLog() as log, pytest.raises(CorruptFileError):
        read_state_dict(path)
    assert log.ops == []


def test_valid_file_still_loads_after_header_check(tmp_path):
    # Control for the tests above: the header check accepts a well-formed file with __metadata__.
    p, ip = tiny("base", torch.float16)
    path = str(tmp_path / "meta.safetensors")
    save_file(_flat(p, ip, "image_proj.", "ip_adapter."), path, metadata={"format": "pt"})
    assert_same_parts(load_adapter_parts(path), p, ip)


# --- readable files that are not IP-Adapters ------------------------------------------------------------------------

def _z(*shape):
    return torch.zeros(*shape, dtype=torch.float16)


NON_ADAPTERS = {
    "kohya LoRA": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": _z(4, 8),
                    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": _z(8, 4),
                    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": _z(())}, ("lora",)),
    "peft LoRA": ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": _z(4, 8),
                   "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": _z(8, 4)}, ("lora",)),
    "CLIP vision (transformers)": ({"vision_model.embeddings.patch_embedding.weight": _z(8, 3, 2, 2),
                                    "vision_model.post_layernorm.weight": _z(8),
                                    "visual_projection.weight": _z(4, 8)}, ("clip", "vision")),
    "CLIP vision (open_clip)": ({"visual.conv1.weight": _z(8, 3, 2, 2), "visual.proj": _z(8, 4)}, ("clip", "vision")),
    "SD checkpoint (UNet)": ({"model.diffusion_model.input_blocks.0.0.weight": _z(8, 4, 3, 3),
                              "model.diffusion_model.out.2.weight": _z(4, 8, 3, 3)}, ("diffusion model",)),
    "diffusers UNet": ({"conv_in.weight": _z(8, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": _z(8, 8, 3, 3)},
                       ("diffusion model",)),
    "image_proj only": ({"image_proj.proj.weight": _z(8, 4), "image_proj.norm.weight": _z(2)}, ()),
    "empty (no tensors)": ({}, ("empty",)),
}


@pytest.mark.parametrize("case", sorted(NON_ADAPTERS))
@pytest.mark.parametrize("ext", [".safetensors", ".bin"])
def test_not_an_adapter_names_what_it_looks_like(tmp_path, case, ext):
    sd, words = NON_ADAPTERS[case]
    path = str(tmp_path / f"thing{ext}")
    if ext == ".bin":
        torch.save(sd, path)
    else:
        save_file(sd, path)
    with pytest.raises(NotAnIPAdapterError) as e:
        load_adapter_parts(path)
    msg = str(e.value).lower()
    assert f"thing{ext}" in msg
    for w in words:
        assert w in msg, (case, str(e.value))


def test_bin_holding_a_tensor_not_a_dict(tmp_path):
    path = str(tmp_path / "tensor.bin")
    torch.save(torch.zeros(3), path)
    with pytest.raises(NotAnIPAdapterError):
        load_adapter_parts(path)


def test_xlabs_flux_adapter_is_split_and_detected(tmp_path):
    # XLabs flux-ip-adapter layout (§1 table, §7): 'ip_adapter_proj_model.*' + 'double_blocks.i.processor.*'.
    # split_parts strips the projection's prefix and keeps the block keys whole; families/flux.py detects it
    # (it used to be refused as "Flux is not supported yet").
    sd = {"ip_adapter_proj_model.proj.weight": _z(64, 8), "ip_adapter_proj_model.proj.bias": _z(64),
          "ip_adapter_proj_model.norm.weight": _z(16), "ip_adapter_proj_model.norm.bias": _z(16)}
    for i in range(19):
        for kv in ("k", "v"):
            sd[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj.weight"] = _z(12, 16)
            sd[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj.bias"] = _z(12)
    path = str(tmp_path / "ip_adapter.safetensors")
    save_file(sd, path)
    parts = load_adapter_parts(path)
    assert sorted(parts.image_proj) == ["norm.bias", "norm.weight", "proj.bias", "proj.weight"]
    assert sorted(parts.ip_adapter) == sorted(k for k in sd if k.startswith("double_blocks."))
    spec = spec_of(path)
    assert (spec.adapter_family, spec.kind, spec.num_tokens, spec.cross_attention_dim, spec.encoder_dim,
            spec.site_dims) == ("xlabs-flux", "xlabs", 4, 16, 8, (12,) * 19)


def test_xlabs_projection_without_block_layers_is_named_incomplete():
    sd = {"ip_adapter_proj_model.proj.weight": _z(64, 8), "ip_adapter_proj_model.norm.weight": _z(16)}
    with pytest.raises(NotAnIPAdapterError, match="XLabs Flux image projection .* but no 'double_blocks"):
        split_parts(sd, name="'ip_adapter.safetensors'")


# --- pickle safety ----------------------------------------------------------------------------------------------

class _OpenPayload:
    """Unpickling this calls open(marker, 'w'), creating the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemPayload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _malicious(tmp_path, payload_cls, zipfile):
    marker = str(tmp_path / "pwned")
    p, ip = tiny("base")
    obj = {"image_proj": p, "ip_adapter": {**ip, "1.to_k_ip.weight": payload_cls(marker)}}
    path = str(tmp_path / "evil.bin")
    torch.save(obj, path, _use_new_zipfile_serialization=zipfile)
    return path, marker


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", [_OpenPayload, _SystemPayload], ids=["open", "os.system"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, payload, zipfile):
    path, marker = _malicious(tmp_path, payload, zipfile)
    with pytest.raises(CorruptFileError) as e:
        read_state_dict(path)
    assert not os.path.exists(marker)
    with pytest.raises(CorruptFileError):
        load_adapter_parts(path)
    assert not os.path.exists(marker)
    assert "evil.bin" in str(e.value)


def test_pickle_payload_control_really_fires_on_unsafe_load(tmp_path):
    # Control: the payload is live - an unsafe torch.load does create the marker. Without this, the test above
    # could pass with a payload that never worked.
    path, marker = _malicious(tmp_path, _OpenPayload, True)
    obj = torch.load(path, weights_only=False)
    obj["ip_adapter"]["1.to_k_ip.weight"].close()
    assert os.path.exists(marker)


def test_refusal_message_is_plain_text(tmp_path):
    # The message is shown in the ComfyUI UI: no terminal escape codes copied from torch's own error text.
    path, _ = _malicious(tmp_path, _OpenPayload, True)
    with pytest.raises(CorruptFileError) as e:
        read_state_dict(path)
    assert "\x1b" not in str(e.value), repr(str(e.value))


def test_safetensors_content_is_read_whatever_the_extension(tmp_path):
    p, ip = adapter_parts("base", ctx=8, encoder_dim=4, site_dims=[8], tokens=2)
    path = save_adapter(str(tmp_path / "a.safetensors"), p, ip)
    renamed = tmp_path / "ip-adapter_sd15.bin"
    os.replace(path, renamed)
    parts = load_adapter_parts(str(renamed))
    assert torch.equal(parts.ip_adapter["1.to_k_ip.weight"], ip["1.to_k_ip.weight"])


def test_random_bytes_bin_is_not_called_a_code_payload(tmp_path):
    path = tmp_path / "broken.bin"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CorruptFileError) as e:
        read_state_dict(str(path))
    assert "neither a safetensors nor a torch weights file" in str(e.value)
    assert "could run code" not in str(e.value)
