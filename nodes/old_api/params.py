"""Served ComfyUI_IPAdapter_plus node IDs: Regional Conditioning, Combine Params, From Params, Save / Load Embeds, the
FaceID and community unified loaders. Each class reads the old inputs (its definition in schema_params.py) and hands
them to this pack's nodes and core.

IPADAPTER_PARAMS carries an :class:`OldParams`: the old pack's lists of (image, attn_mask, weight, weight_type,
start_at, end_at), one :class:`ParamsEntry` per IPAdapter Regional Conditioning. IPAdapter from Params applies each
entry as IPAdapter Advanced does (the same helper), one after the other on one model. A dict in the old pack's
layout (lists under those six keys, as another pack may build) is accepted too.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import folder_paths
import node_helpers
import torch

from ...ip_adapter_core.embeds import ImageTokens
from ...ip_adapter_core.errors import CorruptFileError, InputError
from ...ip_adapter_core.masks import mask_batch
from ...migration.schemas import FACEID_PRESETS
from ..embeds_file import IPALoadEmbeds, IPASaveEmbeds
from ..face import IPAFaceModelLoader
from ..folders import EMBEDS_FOLDER, embeds_folder
from ..patch.lora import add_adapter_lora
from ..unified_loader import IPAUnifiedLoader
from . import schema
from .base import OldAdapter, old_node
from .schema_params import EMBEDS_FILES
from .wrappers import OldUnifiedLoader, _advanced

OLD_EXTENSION = ".ipadpt"
OUTPUT_TAG = " [output]"  # ComfyUI's annotation: the name is relative to the output folder
FACE_MODEL = "buffalo_l"  # the old FaceID loader's only face model set
OLD_LORA_PRESETS = ("FACEID", "FACEID PLUS - SD1.5 only", "FACEID PLUS V2")  # the old loader loaded a LoRA for these


# ---------------------------------------------------------------------------------------------- IPADAPTER_PARAMS

@dataclasses.dataclass(frozen=True, eq=False)
class ParamsEntry:
    """One image prompt of an IPADAPTER_PARAMS: what IPAdapter Regional Conditioning got."""
    image: torch.Tensor | None
    attn_mask: torch.Tensor | None
    weight: Any
    weight_type: str
    start_at: float
    end_at: float


@dataclasses.dataclass(frozen=True, eq=False)
class OldParams:
    """What an IPADAPTER_PARAMS socket carries here: the entries in order."""
    entries: tuple[ParamsEntry, ...]


_KEYS = ("image", "attn_mask", "weight", "weight_type", "start_at", "end_at")


def params_of(value: Any, where: str) -> OldParams:
    """An IPADAPTER_PARAMS input -> OldParams: ours, or the old pack's dict of six equal-length lists."""
    if isinstance(value, OldParams):
        return value
    if isinstance(value, dict) and set(_KEYS) <= set(value):
        lists = [value[k] if isinstance(value[k], (list, tuple)) else [value[k]] for k in _KEYS]
        if len({len(v) for v in lists}) == 1:
            return OldParams(tuple(ParamsEntry(*row) for row in zip(*lists)))
    raise InputError(f"{where}: expected IPADAPTER_PARAMS (from 'IPAdapter Regional Conditioning' or 'IPAdapter "
                     f"Combine Params'), got {type(value).__name__}.")


@old_node("IPAdapterRegionalConditioning")
class OldRegionalConditioning:
    def run(self, image: torch.Tensor, image_weight: float, prompt_weight: float, weight_type: str, start_at: float,
            end_at: float, mask: torch.Tensor | None = None, positive: list | None = None,
            negative: list | None = None):
        if mask is not None:  # the prompts masked as IPA Regional Apply (and core Conditioning (Set Mask)) do
            mask = mask_batch(mask, where="input 'mask'")
            values = {"mask": mask, "set_area_to_bounds": False, "mask_strength": prompt_weight}
            positive = None if positive is None else node_helpers.conditioning_set_values(positive, values)
            negative = None if negative is None else node_helpers.conditioning_set_values(negative, values)
        entry = ParamsEntry(image, mask, image_weight, weight_type, start_at, end_at)
        return (OldParams((entry,)), positive, negative)


@old_node("IPAdapterCombineParams")
class OldCombineParams:
    def run(self, params_1: Any, params_2: Any, params_3: Any = None, params_4: Any = None, params_5: Any = None):
        given = [(i, p) for i, p in enumerate((params_1, params_2, params_3, params_4, params_5), start=1)
                 if p is not None]
        entries = [e for i, p in given for e in params_of(p, f"input 'params_{i}'").entries]
        return (OldParams(tuple(entries)),)


@old_node("IPAdapterFromParams")
class OldFromParams:
    def run(self, model, ipadapter: OldAdapter, ipadapter_params: Any, combine_embeds: str, embeds_scaling: str,
            image_negative: torch.Tensor | None = None, clip_vision: Any = None):
        entries = params_of(ipadapter_params, "input 'ipadapter_params'").entries
        used = [(i, e) for i, e in enumerate(entries, start=1) if e.image is not None]
        if not used:
            raise InputError("input 'ipadapter_params': no entry has an image; connect 'IPAdapter Regional "
                             "Conditioning' with an image.")
        for i, e in used:  # each entry as IPAdapter Advanced, one after the other on the same model
            where = f"{self.DISPLAY_NAME} (params entry {i})"
            (model,) = _advanced(where, model, ipadapter, e.image, e.weight, e.weight_type, combine_embeds,
                                 e.start_at, e.end_at, embeds_scaling, image_negative, e.attn_mask, clip_vision)
        return (model,)


# ---------------------------------------------------------------------------------------------- embeds files

@old_node("IPAdapterSaveEmbeds")
class OldSaveEmbeds:
    def run(self, embeds: Any, filename_prefix: str):
        if not isinstance(embeds, ImageTokens):
            raise InputError(f"input 'embeds': expected EMBEDS from 'IPAdapter Encoder' (image tokens), got "
                             f"{type(embeds).__name__}.")
        # this pack's safe format, in output/ipadapter_embeds (the old pack pickled a .ipadpt into output/)
        return IPASaveEmbeds().save(embeds, filename_prefix)


def embeds_files() -> list[str]:
    """The old list (every .ipadpt under the input folder, relative, sorted), then this pack's saved embeds as
    'ipadapter_embeds/<name> [output]'."""
    root = folder_paths.get_input_directory()
    old = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
                 for f in files if f.endswith(OLD_EXTENSION))
    embeds_folder()
    ours = [f"{EMBEDS_FOLDER}/{name}{OUTPUT_TAG}" for name in folder_paths.get_filename_list(EMBEDS_FOLDER)]
    return old + ours


def _ours(name: str) -> str | None:
    """The name relative to output/ipadapter_embeds of one of this pack's files in the list, else None."""
    head = EMBEDS_FOLDER + "/"
    if name.endswith(OUTPUT_TAG) and name.startswith(head):
        return name[len(head):-len(OUTPUT_TAG)]
    return None


@old_node("IPAdapterLoadEmbeds")
class OldLoadEmbeds:
    @classmethod
    def IS_CHANGED(cls, embeds: str):
        ours = _ours(embeds)
        if ours is not None:
            return IPALoadEmbeds.IS_CHANGED(ours)
        path = folder_paths.get_annotated_filepath(embeds)
        return os.path.getmtime(path) if os.path.isfile(path) else float("nan")

    def run(self, embeds: str):
        ours = _ours(embeds)
        if ours is not None:
            return IPALoadEmbeds().load(ours)
        path = folder_paths.get_annotated_filepath(embeds)
        if not embeds.endswith(OLD_EXTENSION) or not os.path.isfile(path):
            raise InputError(f"input 'embeds': '{embeds}' is not a .ipadpt file of the input folder nor one saved "
                             f"by 'IPAdapter Save Embeds' (output/{EMBEDS_FOLDER}); choose a listed file.")
        redo = ("Encode the image again with 'IPAdapter Encoder' (or IPA Encode Image), save it with 'IPAdapter "
                f"Save Embeds' (this pack writes output/{EMBEDS_FOLDER}/*.safetensors) and load that file.")
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unsafe or unreadable pickle
            raise CorruptFileError(f"input 'embeds': '{embeds}' cannot be read as plain tensors (loaded with "
                                   f"weights_only=True, never as an arbitrary pickle): {type(e).__name__}: "
                                   f"{str(e)[:200]}. {redo}") from None
        found = f"a tensor of shape {tuple(content.shape)}" if isinstance(content, torch.Tensor) else \
            type(content).__name__
        raise InputError(f"input 'embeds': '{embeds}' is an old ComfyUI_IPAdapter_plus .ipadpt file holding {found}: "
                         f"raw CLIP vision embeddings, not the adapter's tokens this pack's EMBEDS carry, and this "
                         f"node has no adapter to project them with. {redo}")


OldLoadEmbeds.INPUT_TYPES = classmethod(lambda cls: schema.input_types("IPAdapterLoadEmbeds",
                                                                       {EMBEDS_FILES: embeds_files}))


# ---------------------------------------------------------------------------------------------- loaders

@old_node("IPAdapterUnifiedLoaderFaceID")
class OldUnifiedLoaderFaceID:
    @classmethod
    def IS_CHANGED(cls, **inputs):
        return IPAUnifiedLoader.IS_CHANGED(**inputs)

    def run(self, model, preset: str, lora_strength: float, provider: str, ipadapter: OldAdapter | None = None):
        if preset not in FACEID_PRESETS:
            raise InputError(f"input 'preset': '{preset}' is not one of {list(FACEID_PRESETS)}.")
        out = IPAUnifiedLoader().load(model, FACEID_PRESETS[preset])
        model, adapter, clip_vision = out["result"]
        if clip_vision is None and ipadapter is not None:
            clip_vision = ipadapter.clip_vision
        faces = IPAFaceModelLoader().load(FACE_MODEL, provider)["result"][0]
        text = list(out["ui"]["text"])
        if lora_strength > 0 and adapter.lora:  # the adapter file's own LoRA, as IPA Apply FaceID applies it
            model = model.clone()
            text += add_adapter_lora(model, adapter, lora_strength, where=self.DISPLAY_NAME)
        elif lora_strength > 0 and preset in OLD_LORA_PRESETS:
            text.append(f"'{adapter.name}' carries no LoRA: load the FaceID LoRA with a LoRA loader "
                        f"(this pack reads the LoRA from the adapter file only).")
        return {"ui": {"text": text}, "result": (model, OldAdapter(adapter, clip_vision, faces))}


@old_node("IPAdapterUnifiedLoaderCommunity")
class OldUnifiedLoaderCommunity:
    @classmethod
    def IS_CHANGED(cls, **inputs):
        return IPAUnifiedLoader.IS_CHANGED(**inputs)

    def run(self, model, preset: str, ipadapter: OldAdapter | None = None):
        if preset == "Kolors":
            raise InputError("input 'preset': 'Kolors' is not supported by this pack (no Kolors adapters, nor "
                             "their 336 px CLIP vision); choose 'Composition'.")
        if preset != "Composition":
            raise InputError(f"input 'preset': '{preset}' is not one of ['Composition', 'Kolors'].")
        return OldUnifiedLoader().run(model, preset, ipadapter)  # the composition preset of IPA Unified Loader
