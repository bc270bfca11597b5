"""IPA_ModelLoader: an adapter file from the ``ipadapter`` model folder(s)."""
from __future__ import annotations

import folder_paths

from ..ip_adapter_core.errors import CorruptFileError
from .common import ADAPTER, CATEGORY, reports
from .folders import FOLDER
from .patch.host import load_adapter

class IPAModelLoader:
    DISPLAY_NAME = "IPA Load Adapter"
    CATEGORY = CATEGORY
    RETURN_TYPES = (ADAPTER,)
    RETURN_NAMES = ("ipadapter",)
    OUTPUT_TOOLTIPS = ("The loaded adapter. Loaded once per file and shared by every node that uses it.",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads an IP-Adapter (.safetensors or .bin) from models/ipadapter. The variant is recognised from the "
                   "tensors, not the file name; the node shows what it found and which CLIP vision encoder it needs.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ipadapter_file": (folder_paths.get_filename_list(FOLDER), {
            "tooltip": "Adapter file in models/ipadapter (or a folder added for 'ipadapter' in extra_model_paths.yaml)."})}}

    @reports(DISPLAY_NAME)
    def load(self, ipadapter_file: str):
        path = folder_paths.get_full_path(FOLDER, ipadapter_file)
        if path is None:
            raise CorruptFileError(f"input 'ipadapter_file': '{ipadapter_file}' is not in the ipadapter folders "
                                   f"{folder_paths.get_folder_paths(FOLDER)}.")
        try:
            adapter = load_adapter(path)
        except ValueError as e:
            raise type(e)(f"input 'ipadapter_file': {e}") from None
        return {"ui": {"text": [adapter.spec.describe()]}, "result": (adapter,)}
