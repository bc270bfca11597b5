"""The model and output folders the nodes read and write, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os

import folder_paths

CLIP_FOLDER = "clip_vision"
FOLDER = "ipadapter"


def register_folder() -> None:
    """Register models/ipadapter, keeping every path extra_model_paths.yaml already added, and the embeds folder
    output/ipadapter_embeds."""
    embeds_folder()
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, _ = folder_paths.folder_names_and_paths[FOLDER]
    else:
        paths = [folder_paths.os.path.join(folder_paths.models_dir, FOLDER)]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, folder_paths.supported_pt_extensions)


EMBEDS_FOLDER = "ipadapter_embeds"


def embeds_folder() -> str:
    """<output>/ipadapter_embeds, registered with folder_paths as "ipadapter_embeds" (re-pointed if the output
    directory changed since the last call), so saving and loading use the same folder."""
    path = os.path.join(folder_paths.get_output_directory(), EMBEDS_FOLDER)
    if folder_paths.folder_names_and_paths.get(EMBEDS_FOLDER, ([],))[0] != [path]:
        folder_paths.folder_names_and_paths[EMBEDS_FOLDER] = ([path], {".safetensors"})
        folder_paths.filename_list_cache.pop(EMBEDS_FOLDER, None)
    return path
