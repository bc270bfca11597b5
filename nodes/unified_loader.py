"""IPA_UnifiedLoader: picks an adapter and its CLIP vision encoder for a MODEL from what the files contain.

Every file of the ``ipadapter`` and ``clip_vision`` folders (extra_model_paths.yaml included) is identified from its
tensor header (ip_adapter_core.scan, cached by path + size + modification time); file names never decide what a file
is. The preset and the MODEL's layout decide which adapters fit: each adapter is checked against the sites of its own
family on the model (host.family_sites: the UNet's cross-attention layers, or Flux's blocks), and a preset made for
another kind of model (an SD preset on Flux, a Flux preset on an SD model) is refused by name first. The encoder is
the file whose widths give what that adapter reads (for SigLIP's pooled output: a SigLIP file with its pooling head).
"""
from __future__ import annotations

import hashlib
import os

import folder_paths

from ..ip_adapter_core import families
from ..ip_adapter_core.checkpoint import file_key
from ..ip_adapter_core.compat import check_model
from ..ip_adapter_core.errors import IncompatibleError, InputError
from ..ip_adapter_core.scan import (PRESETS, Found, check_preset_for_model, choose, family_bases, scan_adapter,
                                    scan_clip_vision)
from ..ip_adapter_core.spec import FAMILY_BY_CONTEXT_DIM, FAMILY_LABEL, AdapterSpec
from .common import ADAPTER, CATEGORY, reports
from .folders import CLIP_FOLDER, FOLDER
from .patch.host import dit_sites, family_sites, load_adapter, load_clip_vision, model_context_dim, model_sites

AUTO = "auto"


def _family_label(ctx: int | None) -> str:
    fam = FAMILY_BY_CONTEXT_DIM.get(ctx) if ctx else None
    return FAMILY_LABEL[fam] if fam else f"context width {ctx}"


def _model_kind(model) -> tuple[str, str | None]:
    """(label for messages, base model family for the suggestions: "sd15", "sdxl", "flux" or None)."""
    sites, ctx = model_sites(model), model_context_dim(model)
    if sites:
        return f"{_family_label(ctx)}, {len(sites)} cross-attention layers", FAMILY_BY_CONTEXT_DIM.get(ctx)
    double, single = (len(dit_sites(model, (kind,))) for kind in ("double", "single"))
    if double:
        return f"Flux, {double} double + {single} single blocks", "flux"
    return "a model without UNet cross-attention layers or Flux blocks", None


def _files(folder_name: str) -> list[tuple[str, str]]:
    """(folder, relative name) of every model file under every path registered for ``folder_name``, in folder order
    then name order."""
    out = []
    extensions = folder_paths.folder_names_and_paths[folder_name][1]
    for folder in folder_paths.get_folder_paths(folder_name):
        if os.path.isdir(folder):
            names = folder_paths.recursive_search(folder, excluded_dir_names=[".git"])[0]
            out += [(folder, name) for name in sorted(folder_paths.filter_files_extensions(names, extensions))]
    return out


def _found(folder_name: str, scan) -> list[Found]:
    return [Found(name=name.replace(os.sep, "/"), folder=folder, path=os.path.join(folder, name),
                  scan=scan(os.path.join(folder, name))) for folder, name in _files(folder_name)]


def _folder_stamp() -> str:
    """Changes when a file in the ipadapter / clip_vision folders appears, disappears or is modified."""
    stamp = hashlib.sha256()
    for folder_name in (FOLDER, CLIP_FOLDER):
        for folder, name in _files(folder_name):
            try:
                key = file_key(os.path.join(folder, name))
            except OSError:  # a dangling link
                key = None
            stamp.update(f"{folder}\0{name}\0{key}\n".encode())
    return stamp.hexdigest()


def _pinned(folder_name: str, name: str, scan, input_name: str) -> list[Found]:
    path = folder_paths.get_full_path(folder_name, name)
    if path is None:
        raise InputError(f"input '{input_name}': '{name}' is not in the {folder_name} folders "
                         f"{folder_paths.get_folder_paths(folder_name)}; choose 'auto' or a listed file.")
    folder = next((f for f in folder_paths.get_folder_paths(folder_name)
                   if os.path.abspath(path).startswith(os.path.abspath(f) + os.sep)), os.path.dirname(path))
    return [Found(name=name, folder=folder, path=path, scan=scan(path))]


class IPAUnifiedLoader:
    DISPLAY_NAME = "IPA Unified Loader"
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", ADAPTER, "CLIP_VISION")
    RETURN_NAMES = ("model", "ipadapter", "clip_vision")
    OUTPUT_TOOLTIPS = ("The input model, unchanged (passed through so old workflows keep their wiring).",
                       "The chosen adapter, loaded once per file and shared.",
                       "The CLIP vision encoder that adapter needs (none for FaceID / portrait adapters, which read "
                       "a face model instead).")
    FUNCTION = "load"
    DESCRIPTION = ("Finds an IP-Adapter that fits the connected model and the CLIP vision encoder it needs, from what "
                   "the files contain (tensor headers), never from their names. Shows what it loaded; when nothing "
                   "fits, the error lists every file it found and what to put where.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD1.5, SDXL or Flux model the adapter is for; passed through "
                                               "unchanged."}),
                "preset": (list(PRESETS), {
                    "default": "standard",
                    "tooltip": "Which kind of adapter: standard (base, ViT-H), light (SD1.5), vit-G (base, ViT-bigG), "
                               "plus, plus face, full face (SD1.5), composition, or any (whatever fits); FaceID, "
                               "FaceID Plus (v1, SD1.5), FaceID Plus v2, FaceID portrait, FaceID portrait unnorm "
                               "(SDXL): these need 'IPA Load Face Models' too, and only Plus gets a CLIP vision. "
                               "Flux: FLUX XLabs v2 / v1 (CLIP ViT-L), FLUX InstantX (SigLIP so400m, the full file "
                               "with its pooling head). Files are recognised by their tensors; the help page says how "
                               "ties are broken."}),
            },
            "optional": {
                "ipadapter_file": ([AUTO] + folder_paths.get_filename_list(FOLDER), {
                    "default": AUTO,
                    "tooltip": "'auto' = choose by preset; or pin one adapter file (it must fit the model)."}),
                "clip_vision_file": ([AUTO] + folder_paths.get_filename_list(CLIP_FOLDER), {
                    "default": AUTO,
                    "tooltip": "'auto' = the CLIP vision file whose widths fit the adapter; or pin one file."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, **_inputs):
        """ComfyUI re-runs the node (instead of reusing its last outputs) when the folders' files changed: a new file
        may now fit. Costs one stat per file; headers are re-read only for changed files."""
        return _folder_stamp()

    @reports(DISPLAY_NAME)
    def load(self, model, preset: str, ipadapter_file: str = AUTO, clip_vision_file: str = AUTO):
        if preset not in PRESETS:
            raise InputError(f"input 'preset': '{preset}' is not one of {list(PRESETS)}.")
        ctx = model_context_dim(model)
        model_label, model_family = _model_kind(model)

        def fits_model(spec: AdapterSpec) -> str | None:
            family = families.family_of(spec)
            sites = family_sites(model, family)  # the UNet's cross-attention layers, or the family's DiT blocks
            try:
                check_model(spec, sites, ctx, adapter_name="", where="")
            except IncompatibleError:
                if not sites:
                    return (f"for {family_bases(family)} models, but the model has no {family_bases(family)} blocks"
                            if family.site_blocks else "the model has no UNet cross-attention layers")
                if ctx != spec.cross_attention_dim:
                    return f"for {_family_label(spec.cross_attention_dim)}, but the model is {_family_label(ctx)}"
                what = "blocks" if family.site_blocks else "layers"
                return f"its {spec.num_sites} {what} do not match the model's {len(sites)}"
            return None

        pinned = ipadapter_file not in (None, "", AUTO)
        if not pinned:  # a preset for another kind of model (an SD preset on Flux, a Flux one on SD) is named first
            check_preset_for_model(preset, [f.name for f in families.registered()
                                            if f.presets and family_sites(model, f)], model_label)
        adapters = (_pinned(FOLDER, ipadapter_file, scan_adapter, "ipadapter_file") if pinned
                    else _found(FOLDER, scan_adapter))
        encoders = (_found(CLIP_FOLDER, scan_clip_vision) if clip_vision_file in (None, "", AUTO)
                    else _pinned(CLIP_FOLDER, clip_vision_file, scan_clip_vision, "clip_vision_file"))
        choice = choose(preset, adapters, encoders, fits_model=fits_model, model_label=model_label,
                        family=model_family, pinned=pinned,
                        adapter_folders=folder_paths.get_folder_paths(FOLDER),
                        encoder_folders=folder_paths.get_folder_paths(CLIP_FOLDER))
        adapter = load_adapter(choice.adapter.path)
        if choice.encoder is None:  # FaceID / portrait: no CLIP vision, a face model instead
            clip_vision = None
            text = [f"{adapter.spec.describe()} — {choice.adapter.name}; no CLIP vision needed: connect "
                    f"'IPA Load Face Models' to the FaceID nodes."]
        else:
            clip_vision = load_clip_vision(choice.encoder.path)
            encoder = choice.encoder.scan.encoder
            text = [f"{adapter.spec.describe()} — {choice.adapter.name} + {choice.encoder.name} ({encoder.name})"]
        words = PRESETS[preset].prefer
        if pinned:
            text.append("ipadapter_file pinned: the preset was not used.")
        elif words and not any(w in choice.adapter.name.lower() for w in words):
            text.append(f"Note: '{preset}' adapters have the same tensors as other kinds or versions and no fitting "
                        f"file's name says '{words[0]}', so this may be another one with the same layout.")
        if choice.others and not pinned:
            same = " (some with the same variant: tensors cannot tell them apart)" if choice.same_tensors else ""
            text.append(f"Also fit: {', '.join(choice.others)}{same}. Chosen by preset words in the name, then "
                        ".safetensors before .bin, then name; pin ipadapter_file to choose another.")
        return {"ui": {"text": text}, "result": (model, adapter, clip_vision)}
