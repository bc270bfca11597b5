"""The model and output folders the nodes read and write, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os

import folder_paths

CLIP_FOLDER = "clip_vision"
FOLDER = "ipadapter"
FACE_FOLDER = "insightface"  # face models (FaceID): the old pack keeps them in models/insightface/models/<name>/
XLABS_FOLDER = os.path.join("xlabs", "ipadapters")  # x-flux-comfyui's folder for the XLabs Flux adapters


def register_folder() -> None:
    """Register models/ipadapter, keeping every path extra_model_paths.yaml already added, plus models/xlabs/ipadapters
    (where x-flux-comfyui users keep the XLabs Flux adapters), and the embeds folder output/ipadapter_embeds."""
    embeds_folder()
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, _ = folder_paths.folder_names_and_paths[FOLDER]
    else:
        paths = [folder_paths.os.path.join(folder_paths.models_dir, FOLDER)]
    xlabs = os.path.join(folder_paths.models_dir, XLABS_FOLDER)
    paths = list(paths) + ([xlabs] if xlabs not in paths else [])
    folder_paths.folder_names_and_paths[FOLDER] = (paths, folder_paths.supported_pt_extensions)
    face_paths, face_ext = folder_paths.folder_names_and_paths.get(FACE_FOLDER, ([], set()))
    default = os.path.join(folder_paths.models_dir, FACE_FOLDER)
    folder_paths.folder_names_and_paths[FACE_FOLDER] = (
        list(face_paths) + ([default] if default not in face_paths else []), set(face_ext) | {".onnx"})


def face_model_names() -> list[str]:
    """The face model sets (buffalo_l first, antelopev2, then any other folder of .onnx files) in the insightface
    folders: <folder>/models/<name>/ (the old pack's layout) or <folder>/<name>/."""
    names = {"buffalo_l", "antelopev2"}
    for folder in face_folders():
        for base in (os.path.join(folder, "models"), folder):
            if os.path.isdir(base):
                for name in os.listdir(base):
                    sub = os.path.join(base, name)
                    if os.path.isdir(sub) and any(f.endswith(".onnx") for f in os.listdir(sub)):
                        names.add(name)
    return ["buffalo_l", "antelopev2"] + sorted(names - {"buffalo_l", "antelopev2"})


def face_folders() -> list[str]:
    """Every insightface folder: models/insightface and those another pack or extra_model_paths.yaml added."""
    return list(folder_paths.get_folder_paths(FACE_FOLDER)) if FACE_FOLDER in folder_paths.folder_names_and_paths else []


EMBEDS_FOLDER = "ipadapter_embeds"


def embeds_folder() -> str:
    """<output>/ipadapter_embeds, registered with folder_paths as "ipadapter_embeds" (re-pointed if the output
    directory changed since the last call), so saving and loading use the same folder."""
    path = os.path.join(folder_paths.get_output_directory(), EMBEDS_FOLDER)
    if folder_paths.folder_names_and_paths.get(EMBEDS_FOLDER, ([],))[0] != [path]:
        folder_paths.folder_names_and_paths[EMBEDS_FOLDER] = ([path], {".safetensors"})
        folder_paths.filename_list_cache.pop(EMBEDS_FOLDER, None)
    return path
