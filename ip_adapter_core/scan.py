"""What the files in the model folders are, from their tensor headers only: no tensor data is read.

Adapters: the variant (an AdapterSpec) from the names and shapes in a safetensors header or a memory-mapped ``.bin``.
CLIP vision encoders: widths and image size from their header, in both layouts ComfyUI loads (transformers
``vision_model.*`` + ``visual_projection`` and open_clip ``visual.*``), and SigLIP vision encoders (transformers'
layout: no class token, no projection; whether the file holds the pooling head ``vision_model.head.*``, which the
InstantX Flux adapter reads). Presets: which adapters a unified-loader preset accepts, the published file names to
suggest when none is there, the documented choice among several, and which presets a model's kind takes.
Scans are cached by (real path, size, modification time): an unchanged file is never read twice.
"""
from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from .checkpoint import file_key, guess_kind, is_safetensors, load_torch_file, split_parts, validate_safetensors_header
from .compat import clip_vision_need
from .errors import CorruptFileError, InputError, IPAdapterError
from . import families
from .families import Preset
from .spec import FAMILY_BY_ADAPTER, FAMILY_LABEL, AdapterSpec, detect_spec

TensorShapes = dict[str, tuple[tuple[int, ...], str]]

_DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def read_tensor_shapes(path: str) -> TensorShapes:
    """{tensor name: (shape, dtype)} of a ``.safetensors`` (validated header) or a zip-format ``.bin`` / ``.pt``
    (``torch.load(mmap=True, weights_only=True)``: mapped, not read). Raises CorruptFileError."""
    if not os.path.isfile(path):
        raise CorruptFileError(f"'{path}' does not exist or is not a file.")
    if is_safetensors(path):
        header = validate_safetensors_header(path)
        return {k: (tuple(int(d) for d in v["shape"]), str(v["dtype"])) for k, v in header.items() if k != "__metadata__"}
    return {k: (tuple(t.shape), _DTYPE_NAMES.get(t.dtype, str(t.dtype))) for k, t in load_torch_file(path, mmap=True).items()}


# ---------------------------------------------------------------------------------------------- adapters

@dataclass(frozen=True)
class AdapterScan:
    """spec: the detected variant, or None with ``problem`` saying why the file is not a usable adapter."""

    spec: AdapterSpec | None
    problem: str | None = None


def scan_adapter(path: str) -> AdapterScan:
    """The variant of the adapter file at ``path`` from its header (cached)."""
    return _cached("adapter", path, _scan_adapter)


def _scan_adapter(path: str) -> AdapterScan:
    name = f"'{os.path.basename(path)}'"
    try:
        meta = {k: torch.empty(shape, device="meta") for k, (shape, _) in read_tensor_shapes(path).items()}
        parts = split_parts(meta, name=name)
        return AdapterScan(detect_spec(parts.image_proj, parts.ip_adapter, name=name))
    except IPAdapterError as e:
        return AdapterScan(None, str(e))


# ---------------------------------------------------------------------------------------------- CLIP vision

# (hidden, projection) -> name of the published encoder with those widths (for messages; matching uses widths).
_REAL_ENCODERS = {(1280, 1024): "CLIP ViT-H", (1664, 1280): "CLIP ViT-bigG", (1024, 768): "CLIP ViT-L"}
_REAL_SIGLIP = {1152: "SigLIP so400m"}  # a SigLIP's hidden width -> the published encoder (google/siglip-so400m-*)
# (patch, grid side) -> image size where the grid does not tile the image exactly: SigLIP so400m's 384 px in 14 px
# patches is a 27 x 27 grid (the convolution drops the last 6 px)
_IMAGE_SIZES = {(14, 27): 384}
SIGLIP_HEAD_PREFIX = "vision_model.head."  # SigLIP's attention-pooling head, in the published files
# Layouts ComfyUI's comfy.clip_vision.load accepts: patch conv, position embedding, projection (and whether it is
# stored transposed, [hidden, proj]), per-layer key prefix.
_LAYOUTS = (
    ("vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.position_embedding.weight",
     "visual_projection.weight", False, "vision_model.encoder.layers."),
    ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", True, "visual.transformer.resblocks."),
)


@dataclass(frozen=True)
class EncoderInfo:
    """A CLIP vision encoder's widths: hidden (penultimate states), projection (image embeds; None without one).
    kind: "clip" (a class token) or "siglip" (none: every position is a patch); pooling_head: a SigLIP file that
    holds its attention-pooling head (``vision_model.head.*``), which SigLIP's pooled output needs."""

    hidden: int
    projection: int | None
    image_size: int
    patch: int
    layers: int
    kind: str = "clip"
    pooling_head: bool = False

    @property
    def name(self) -> str:
        if self.kind == "siglip":
            real = _REAL_SIGLIP.get(self.hidden)
            if real and self.image_size != 384:  # so400m-patch14-384, the one the InstantX adapters read
                return f"{real} ({self.image_size} px)"
            return real or "a SigLIP vision encoder"
        real = _REAL_ENCODERS.get((self.hidden, self.projection))
        if real == "CLIP ViT-L" and self.image_size != 224:
            return f"{real} ({self.image_size} px)"
        return real or "a CLIP vision encoder"

    def describe(self) -> str:
        proj = f"projection {self.projection}" if self.projection else "no projection"
        head = ""
        if self.kind == "siglip":
            head = (", pooling head" if self.pooling_head else
                    ", no pooling head (vision_model.head.*): no pooled output")
        return f"{self.name} (hidden {self.hidden}, {proj}, {self.image_size} px, {self.layers} layers{head})"

    def serves(self, spec: AdapterSpec) -> bool:
        """True when the encoder gives what the adapter's projection reads from CLIP vision (the width is the whole
        need; SigLIP's pooled output also needs a SigLIP file with its pooling head); False for an adapter that reads
        no CLIP vision (FaceID, portrait: a face model)."""
        need = clip_vision_need(spec)
        if need is None:
            return False
        if need.output == "pooled":
            return self.kind == "siglip" and self.pooling_head and self.hidden == need.width
        return (self.projection if need.output == "image_embeds" else self.hidden) == need.width


@dataclass(frozen=True)
class EncoderScan:
    encoder: EncoderInfo | None
    problem: str | None = None


def scan_clip_vision(path: str) -> EncoderScan:
    """The widths of the CLIP vision file at ``path`` from its header (cached)."""
    return _cached("clip_vision", path, _scan_clip_vision)


def _scan_clip_vision(path: str) -> EncoderScan:
    try:
        shapes = read_tensor_shapes(path)
    except IPAdapterError as e:
        return EncoderScan(None, str(e))
    return encoder_from_shapes(shapes, name=f"'{os.path.basename(path)}'")


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def encoder_from_shapes(shapes: TensorShapes, *, name: str = "the file") -> EncoderScan:
    """CLIP: a class token, so positions = grid + 1 (ViT-H 224 px: 257). SigLIP (transformers' layout, no class
    embedding, no projection): positions = grid (so400m 384 px: 729 = 27 x 27)."""
    for patch_key, pos_key, proj_key, transposed, layer_prefix in _LAYOUTS:
        if patch_key not in shapes:
            continue
        patch, pos, proj = shapes[patch_key][0], shapes.get(pos_key, ((),))[0], shapes.get(proj_key, (None,))[0]
        positions = pos[0] if len(pos) == 2 else -1
        siglip = (patch_key.startswith("vision_model.") and proj is None and _is_square(positions)
                  and "vision_model.embeddings.class_embedding" not in shapes)
        grid = positions if siglip else positions - 1
        side = math.isqrt(grid) if grid > 0 else 0
        if len(patch) != 4 or side * side != grid or (proj is not None and len(proj) != 2):
            return EncoderScan(None, f"{name} has a CLIP vision layout but unexpected shapes (patch embedding "
                                     f"{patch}, position embedding {pos}, projection {proj}); the file is damaged.")
        layer = re.compile(re.escape(layer_prefix) + r"(\d+)\.")
        layers = len({m.group(1) for k in shapes if (m := layer.match(k))})
        projection = None if proj is None else int(proj[1] if transposed else proj[0])
        step = int(patch[2])
        return EncoderScan(EncoderInfo(hidden=int(patch[0]), projection=projection,
                                       image_size=_IMAGE_SIZES.get((step, side), side * step), patch=step,
                                       layers=layers, kind="siglip" if siglip else "clip",
                                       pooling_head=siglip and f"{SIGLIP_HEAD_PREFIX}probe" in shapes))
    keys = {k: None for k in shapes}
    if any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys):
        what = "an IP-Adapter (it belongs in models/ipadapter)"
    else:
        what = guess_kind(keys)
    return EncoderScan(None, f"{name} is not a CLIP vision encoder ComfyUI loads: it looks like {what}.")


# ---------------------------------------------------------------------------------------------- cache

_cache: dict[tuple[str, str], tuple[tuple[int, int], object]] = {}
_cache_lock = threading.Lock()


def _cached(what: str, path: str, scan: Callable[[str], object]):
    """scan(path), remembered per real path until the file's size or modification time changes."""
    try:
        real, size, mtime = file_key(path)
    except OSError:  # a dangling link, or removed meanwhile: the scan says why, nothing to remember
        return scan(path)
    key, stamp = (what, real), (size, mtime)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    result = scan(path)
    with _cache_lock:
        _cache[key] = (stamp, result)
    return result


# ---------------------------------------------------------------------------------------------- presets

ENCODER_FILES = {"CLIP ViT-H": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
                 "CLIP ViT-bigG": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
                 "CLIP ViT-L": "clip-vit-large-patch14.safetensors (the model.safetensors of "
                               "openai/clip-vit-large-patch14, renamed)",
                 "SigLIP so400m": "siglip-so400m-patch14-384.safetensors (the full model.safetensors of "
                                  "google/siglip-so400m-patch14-384, with its pooling head, renamed)"}

# The families whose presets the node's combo lists, in the order they joined it: combo values are only ever
# appended (saved workflows store the value). The SD image adapters' presets (the combo before other families came),
# then FaceID's, then the Flux families' (XLabs, InstantX). Presets of any other family come after these, in
# registration order.
COMBO_FAMILIES = ("sd-unet", "faceid", "xlabs-flux", "instantx-flux")


def combo_presets() -> dict[str, Preset]:
    """Every registered family's presets in the combo's order (:data:`COMBO_FAMILIES` first)."""
    table = families.presets()  # also checks that no two families define one name
    known = [f for name in COMBO_FAMILIES for f in families.registered() if f.name == name]
    rest = [f for f in families.registered() if f.name not in COMBO_FAMILIES]
    return {name: table[name] for family in known + rest for name in family.presets}


# The unified-loader presets are the families' (ip_adapter_core.families); PRESETS is the table at import, with the
# built-in families, for the node's combo. choose() reads the registry at call time.
PRESETS = combo_presets()


def preset_family(preset_name: str) -> families.Family:
    """The family that defines a preset (KeyError for an unknown name)."""
    for family in families.registered():
        if preset_name in family.presets:
            return family
    raise KeyError(preset_name)


def family_bases(family: families.Family) -> str:
    """The base models a family's adapters are made for, for messages: "Flux" (the DiT families), else "SD1.5 /
    SDXL" (the UNet families)."""
    base = FAMILY_BY_ADAPTER.get(family.name)
    return FAMILY_LABEL.get(base, base) if base else "SD1.5 / SDXL"


def check_preset_for_model(preset_name: str, model_families: Sequence[str], model_label: str) -> None:
    """A preset is for one kind of model: its family's (UNet cross-attention for the SD and FaceID presets, Flux
    blocks for the Flux presets). model_families: the names of the families whose sites the model has (the node
    asks the host). InputError naming the preset, what it is for, the model, and the presets that fit it."""
    family = preset_family(preset_name)
    if family.name in model_families:
        return
    fitting = [name for name in combo_presets() if preset_family(name).name in model_families]
    fix = (f"choose a preset for it: {', '.join(fitting)}" if fitting else
           "no preset fits it (pin ipadapter_file to load a file that fits)")
    raise InputError(f"input 'preset': '{preset_name}' is a preset for {family_bases(family)} models "
                     f"({family.presets[preset_name].label}), but this model is {model_label}; {fix}.")


def choice_key(preset: Preset, name: str) -> tuple:
    """Order among files that all fit: preset words in the name (only ever between files the tensors already
    accepted), then .safetensors before .bin, then the name."""
    low = name.lower()
    hint = (not any(w in low for w in preset.prefer) if preset.prefer else False) or any(w in low for w in preset.avoid)
    return (hint, not low.endswith((".safetensors", ".sft")), low, name)


# ---------------------------------------------------------------------------------------------- the choice

@dataclass(frozen=True)
class Found:
    """One file of a model folder: its name as ComfyUI lists it, the folder, and its scan."""

    name: str
    folder: str
    path: str
    scan: AdapterScan | EncoderScan


@dataclass(frozen=True)
class Choice:
    """encoder: the CLIP vision file, None for an adapter that reads none (FaceID, portrait: their encoder is a face
    model, which is not in the clip_vision folders)."""

    adapter: Found
    encoder: Found | None
    others: tuple[str, ...] = field(default=())  # other adapter files that fit too
    same_tensors: bool = False  # the choice among ``others`` was made by name: their variants are identical


def choose(preset_name: str, adapters: Sequence[Found], encoders: Sequence[Found], *,
           fits_model: Callable[[AdapterSpec], str | None], model_label: str, family: str | None,
           adapter_folders: Sequence[str], encoder_folders: Sequence[str], pinned: bool = False) -> Choice:
    """The adapter + CLIP vision pair for a preset (encoder None where the adapter reads no CLIP vision), or
    InputError listing every file found and what is needed.

    fits_model(spec) -> None when the adapter fits the model, else a short reason. pinned: the one adapter given is
    taken whatever the preset.
    """
    table = families.presets()
    preset = table[preset_name]
    notes: dict[int, str] = {}
    fitting: list[tuple[Found, Found]] = []
    for i, a in enumerate(adapters):
        spec = a.scan.spec
        if spec is None:
            notes[i] = f"not usable: {a.scan.problem}"
            continue
        why = None if pinned or preset.accepts(spec) else f"not {preset.label}"
        why = why or fits_model(spec)
        need = clip_vision_need(spec)
        served = sorted((e for e in encoders if e.scan.encoder is not None and e.scan.encoder.serves(spec)),
                        key=lambda e: choice_key(table["any"], e.name))
        if why is None and need is not None and not served:
            what = {"image_embeds": "image embeds", "pooled": "pooled output"}.get(need.output, "hidden states")
            why = f"no CLIP vision file gives its {need.width}-wide {what} ({need.label})"
            headless = [e.name for e in encoders if need.output == "pooled" and e.scan.encoder is not None
                        and e.scan.encoder.kind == "siglip" and e.scan.encoder.hidden == need.width
                        and not e.scan.encoder.pooling_head]
            if headless:
                why += (f"; {', '.join(headless)}: SigLIP without its pooling head ({SIGLIP_HEAD_PREFIX}*), "
                        f"which the pooled output needs: put the full SigLIP model.safetensors there instead")
        if why is None:
            fitting.append((a, served[0] if need is not None else None))
        else:
            notes[i] = f"{spec.describe()}: {why}"
    if fitting:
        fitting.sort(key=lambda pair: choice_key(preset, pair[0].name))
        best = fitting[0]
        others = tuple(a.name for a, _ in fitting[1:])
        same = any(_tensors(a.scan.spec) == _tensors(best[0].scan.spec) for a, _ in fitting[1:])
        return Choice(adapter=best[0], encoder=best[1], others=others, same_tensors=same)
    raise InputError(_nothing_fits(preset_name, preset, adapters, encoders, notes, model_label, family,
                                   adapter_folders, encoder_folders, pinned))


def _tensors(spec: AdapterSpec) -> AdapterSpec:
    """The spec without what the file name gave (FaceID Plus v1 / v2): what the tensors alone say."""
    return replace(spec, plus_version=None)


def _listing(kind: str, folders: Sequence[str], found: Sequence[Found], text: Callable[[int, Found], str]) -> str:
    lines = [f"Found in the {kind} folder(s):"]
    for folder in folders:
        mine = [(i, f) for i, f in enumerate(found) if f.folder == folder]
        lines.append(f"- {folder}:" + ("" if mine else " no model files"))
        lines += [f"    {f.name}: {text(i, f)}" for i, f in mine]
    return "\n".join(lines)


def _nothing_fits(preset_name: str, preset: Preset, adapters: Sequence[Found], encoders: Sequence[Found],
                  notes: dict[int, str], model_label: str, family: str | None, adapter_folders: Sequence[str],
                  encoder_folders: Sequence[str], pinned: bool) -> str:
    head = (f"the pinned ipadapter_file does not fit this model ({model_label})" if pinned else
            f"no adapter file fits preset '{preset_name}' and this model ({model_label})")
    adapter_list = _listing("ipadapter", adapter_folders, adapters, lambda i, f: notes.get(i, "?"))
    encoder_list = _listing("clip_vision", encoder_folders, encoders,
                            lambda i, f: f.scan.encoder.describe() if f.scan.encoder else f"not usable: {f.scan.problem}")
    example = preset.examples.get(family or "")
    a_dir = adapter_folders[0] if adapter_folders else "models/ipadapter"
    e_dir = encoder_folders[0] if encoder_folders else "models/clip_vision"
    fam = FAMILY_LABEL.get(family or "", model_label)
    if pinned:
        need = "Choose ipadapter_file 'auto' or a file listed above that fits."
    elif example and preset.encoder in ENCODER_FILES:
        need = (f"Needed: {preset.label} for {fam}, e.g. put {example} in {a_dir}, and its encoder {preset.encoder} "
                f"(e.g. put {ENCODER_FILES[preset.encoder]} in {e_dir}).")
    elif example:  # an encoder that is no clip_vision file (FaceID: a face model)
        need = f"Needed: {preset.label} for {fam}, e.g. put {example} in {a_dir}; it reads {preset.encoder}."
    else:
        need = f"Needed: {preset.label} for {fam}; none is published for {fam}, choose another preset."
    return "\n".join((head + ".", adapter_list, encoder_list, need))
