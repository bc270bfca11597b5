"""The FaceID stand-ins of the example workflows (random weights; see testkit/standins.py, which writes them):

    models/ipadapter/ipa_standin_faceid_sd15.safetensors           FaceID (4 tokens, with a rank-4 LoRA)
    models/ipadapter/ipa_standin_faceid-plusv2_sd15.safetensors    FaceID Plus v2 (perceiver over the stand-in CLIP
                                                                    vision's 64-wide hidden states, LoRA)
    models/ipadapter/ipa_standin_faceid-portrait_sd15.safetensors  FaceID portrait (16 tokens per face, no LoRA)
    models/insightface/models/ipa_standin_buffalo_l/               a planted-face detector (its score map follows a
        det_10g.onnx, w600k_r50.onnx                               bright blob: the example's reference image gets
                                                                    a face) and a random recogniser

The face model set has its own name, so a user's real buffalo_l is never touched. Building the ONNX files needs the
``onnx`` package (a test dependency): without it these are skipped and the FaceID examples cannot run.
"""
from __future__ import annotations

import importlib.util
import os

FACE_MODELS = "ipa_standin_buffalo_l"
ADAPTERS = {  # the workflow's adapter kind -> the stand-in file
    "faceid": "ipa_standin_faceid_sd15.safetensors",
    "faceid_plus": "ipa_standin_faceid-plusv2_sd15.safetensors",
    "portrait": "ipa_standin_faceid-portrait_sd15.safetensors",
}
FILES = {
    "adapter_faceid": os.path.join("ipadapter", ADAPTERS["faceid"]),
    "adapter_faceid_plus": os.path.join("ipadapter", ADAPTERS["faceid_plus"]),
    "adapter_faceid_portrait": os.path.join("ipadapter", ADAPTERS["portrait"]),
    "face_detector": os.path.join("insightface", "models", FACE_MODELS, "det_10g.onnx"),
    "face_recognizer": os.path.join("insightface", "models", FACE_MODELS, "w600k_r50.onnx"),
}
PRODUCES = {"adapters_faceid": ("adapter_faceid", "adapter_faceid_plus", "adapter_faceid_portrait"),
            "face_models": ("face_detector", "face_recognizer")}


def available() -> bool:
    """Whether the FaceID stand-ins can be built here (the onnx package is importable)."""
    return importlib.util.find_spec("onnx") is not None


def adapter_for(name: str) -> str:
    """The stand-in for an adapter file name of a workflow (FaceID Plus / portrait by the published names)."""
    low = name.lower()
    kind = "faceid_plus" if "plus" in low else "portrait" if "portrait" in low else "faceid"
    return ADAPTERS[kind]


def buffalo_models(standins_dir: str, base: str) -> str:
    """A model folder in ``base`` (links into ``standins_dir``) whose face model set is named buffalo_l, as on a
    user's disk: the old pack's FaceID unified loader always loads buffalo_l, and no stand-in may take that name in
    the stand-ins' own folder."""
    for sub in os.listdir(standins_dir):
        if os.path.isdir(os.path.join(standins_dir, sub)) and sub != "insightface":
            os.symlink(os.path.join(standins_dir, sub), os.path.join(base, sub))
    os.makedirs(os.path.join(base, "insightface", "models"))
    os.symlink(os.path.join(standins_dir, "insightface", "models", FACE_MODELS),
               os.path.join(base, "insightface", "models", "buffalo_l"))
    return base


def make_adapters(base: str, *, site_dims, clip_hidden: int, seed: int, save) -> None:
    import torch

    from .faceid_adapters import faceid_parts

    shapes = {"adapter_faceid": dict(kind="faceid", lora_rank=4),
              "adapter_faceid_plus": dict(kind="faceid_plus", clip_dim=clip_hidden, depth=1, lora_rank=4),
              "adapter_faceid_portrait": dict(kind="portrait")}
    for key, shape in shapes.items():
        image_proj, ip_adapter = faceid_parts(ctx=768, site_dims=site_dims, seed=seed, **shape)
        flat = {f"image_proj.{k}": v.to(torch.float16) for k, v in image_proj.items()}
        flat.update({f"ip_adapter.{k}": v.to(torch.float16) for k, v in ip_adapter.items()})
        save(os.path.join(base, FILES[key]), flat)


def make_face_models(base: str, *, seed: int) -> None:
    from . import onnx_faces

    folder = os.path.dirname(os.path.join(base, FILES["face_detector"]))
    os.makedirs(folder, exist_ok=True)
    for key, build in (("face_detector", lambda p: onnx_faces.planted_detector(p)),
                       ("face_recognizer", lambda p: onnx_faces.random_recognizer(p, seed=seed))):
        path = os.path.join(base, FILES[key])
        tmp = f"{path}.tmp{os.getpid()}.onnx"
        build(tmp)
        os.replace(tmp, path)


SOURCES = ("faceid_standins.py", "faceid_adapters.py", "onnx_faces.py")  # the code that writes them
