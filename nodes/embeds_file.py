"""IPA_SaveEmbeds / IPA_LoadEmbeds: image tokens as .safetensors files in ONE folder, <output>/ipadapter_embeds."""
from __future__ import annotations

import os

import folder_paths
from safetensors import safe_open
from safetensors.torch import save_file

from ..ip_adapter_core.checkpoint import validate_safetensors_header
from ..ip_adapter_core.embeds import ImageTokens
from ..ip_adapter_core.embeds_io import check_prefix, from_safetensors_dict, next_file_name, to_safetensors_dict
from ..ip_adapter_core.errors import CorruptFileError, IPAdapterError
from .common import CATEGORY, EMBEDS, EMBEDS_IN, reports
from .folders import EMBEDS_FOLDER, embeds_folder

class IPASaveEmbeds:
    DISPLAY_NAME = "IPA Save Embeds"
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    DESCRIPTION = ("Saves image tokens to output/ipadapter_embeds/<prefix>_NNNNN.safetensors (tensors and adapter "
                   "metadata, no pickle); 'IPA Load Embeds' lists that folder.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "embeds": EMBEDS_IN,
            "filename_prefix": ("STRING", {
                "default": "ipa_embeds",
                "tooltip": "File name start; a number and .safetensors are added. 'faces/anna' saves in a "
                           "sub-folder. Stays inside output/ipadapter_embeds: absolute paths and '..' are refused."})}}

    @reports(DISPLAY_NAME)
    def save(self, embeds: ImageTokens, filename_prefix: str):
        parts = check_prefix(filename_prefix, where="input 'filename_prefix'")
        root = embeds_folder()
        folder = os.path.join(root, *parts[:-1])
        os.makedirs(folder, exist_ok=True)
        name = next_file_name(parts[-1], os.listdir(folder))
        tensors, metadata = to_safetensors_dict(embeds)
        save_file(tensors, os.path.join(folder, name), metadata=metadata)
        relative = "/".join([*parts[:-1], name])
        return {"ui": {"text": [f"{EMBEDS_FOLDER}/{relative}"]}}


class IPALoadEmbeds:
    DISPLAY_NAME = "IPA Load Embeds"
    CATEGORY = CATEGORY
    RETURN_TYPES = (EMBEDS,)
    RETURN_NAMES = ("embeds",)
    OUTPUT_TOOLTIPS = ("The saved image tokens; 'IPA Apply' still checks they fit its adapter.",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads image tokens saved by 'IPA Save Embeds' from output/ipadapter_embeds (safetensors only, "
                   "header checked before reading).")

    @classmethod
    def INPUT_TYPES(cls):
        embeds_folder()
        return {"required": {"embeds_file": (folder_paths.get_filename_list(EMBEDS_FOLDER), {
            "tooltip": "A .safetensors file in output/ipadapter_embeds, written by 'IPA Save Embeds'."})}}

    @classmethod
    def IS_CHANGED(cls, embeds_file: str):
        embeds_folder()
        path = folder_paths.get_full_path(EMBEDS_FOLDER, embeds_file)
        return os.path.getmtime(path) if path else float("nan")

    @reports(DISPLAY_NAME)
    def load(self, embeds_file: str):
        embeds_folder()
        path = folder_paths.get_full_path(EMBEDS_FOLDER, embeds_file)
        if path is None:
            raise CorruptFileError(f"input 'embeds_file': '{embeds_file}' is not in {embeds_folder()}; save embeds "
                                   f"there with 'IPA Save Embeds'.")
        try:
            validate_safetensors_header(path)
            with safe_open(path, framework="pt", device="cpu") as f:
                metadata = f.metadata()
                tensors = {key: f.get_tensor(key) for key in f.keys() if key in ("cond", "uncond")}
            return (from_safetensors_dict(tensors, metadata, name=embeds_file),)
        except IPAdapterError as e:
            raise type(e)(f"input 'embeds_file': {e}") from None
