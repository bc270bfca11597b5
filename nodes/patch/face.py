"""The face encoder stage (FaceID): IMAGE -> faces (ip_adapter_core.face, onnxruntime) -> FaceFeatures -> ImageTokens.

``FaceModels`` is the payload of an IPA_FACE_MODELS socket: a face detector + recogniser pair found in the
``insightface`` model folders (the old pack's ``models/insightface/models/buffalo_l/`` included), routed by ONNX
signature, loaded once per file and shared. ``FaceStage`` is the encoder stage of the "face" kind, with the methods
of ClipVisionStage (encoder.py) and one more, :meth:`FaceStage.analyze`, which finds the face of every image and
returns the aligned crops the nodes show. :func:`encode_faces` is the FaceID encode: faces, embeddings, the CLIP
branch of the Plus adapters on the aligned crops, the projection, the reference uncond.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...ip_adapter_core import families
from ...ip_adapter_core.compat import check_encoder, prepare_images
from ...ip_adapter_core.embeds import ImageTokens
from ...ip_adapter_core.errors import IncompatibleError, InputError, check_choice
from ...ip_adapter_core.face import DET_SIZES, NO_FACE, FacePipeline, find_face_models, select_face, to_uint8_rgb
from ...ip_adapter_core.families.faceid import FaceFeatures, concat_faces, face_features, zero_features
from .host import LoadedAdapter, clip_vision_dims, encode_images, encode_zero_pixels, projection_device

PROVIDERS = {"CPU": ("CPUExecutionProvider",),
             "CUDA": ("CUDAExecutionProvider", "CPUExecutionProvider"),
             "ROCM": ("ROCMExecutionProvider", "CPUExecutionProvider"),
             "DirectML": ("DmlExecutionProvider", "CPUExecutionProvider"),
             "CoreML": ("CoreMLExecutionProvider", "CPUExecutionProvider"),
             "OpenVINO": ("OpenVINOExecutionProvider", "CPUExecutionProvider")}
FACE_SELECT = ("best", "largest", "index")
# the colour order of the aligned face crop the Plus adapters' CLIP branch sees
CLIP_CROP_COLORS = ("reference (BGR)", "ComfyUI_IPAdapter_plus (RGB)")
DET_SIZE_CHOICES = ("640 down to 320",) + tuple(str(s) for s in DET_SIZES)


@dataclass(eq=False)
class FaceModels:
    """A loaded face detector + recogniser (payload of IPA_FACE_MODELS), shared by every node using them."""

    name: str
    provider: str
    pipeline: FacePipeline
    files: Any
    description: str

    def __deepcopy__(self, memo: dict) -> "FaceModels":
        return self


_models: "weakref.WeakValueDictionary[tuple, FaceModels]" = weakref.WeakValueDictionary()
_lock = threading.Lock()


def load_face_models(folders: list[str], name: str, provider: str, *, where: str) -> FaceModels:
    """The face models ``name`` (buffalo_l, antelopev2, ...) from ``folders`` with ``provider``; one per file pair."""
    check_choice(provider, tuple(PROVIDERS), input_name="provider", what="provider", where=where)
    files = find_face_models(folders, where=where, name=name)
    key = (files.detector, files.recognizer, provider)
    with _lock:
        hit = _models.get(key)
        if hit is None:
            pipeline = FacePipeline(files, providers=PROVIDERS[provider])
            hit = FaceModels(name=name, provider=provider, pipeline=pipeline, files=files,
                             description=files.describe())
            _models[key] = hit
        return hit


@dataclass(frozen=True, eq=False)
class FaceEncoder:
    """What the face stage encodes with: the face models, the CLIP vision of the Plus adapters, and the options."""

    faces: FaceModels | None
    clip_vision: Any = None
    face_select: str = "best"
    face_index: int = 0
    no_face: str = "error"
    det_sizes: tuple[int, ...] = DET_SIZES
    v2_scale: float = 1.0
    crop_colors: str = CLIP_CROP_COLORS[0]


def det_sizes_of(choice: str) -> tuple[int, ...]:
    check_choice(choice, DET_SIZE_CHOICES, input_name="det_size", what="detection size")
    return DET_SIZES if choice == DET_SIZE_CHOICES[0] else (int(choice),)


@dataclass
class Analysis:
    """The faces of a batch: per kept image its embeddings (raw, normed) and aligned crop; what was dropped."""

    raw: list[np.ndarray] = field(default_factory=list)
    normed: list[np.ndarray] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def crop_size(adapter: LoadedAdapter) -> int:
    """The aligned crop the Plus adapters' CLIP branch reads: 224 on SD1.5, 256 on SDXL (the old pack's sizes)."""
    return 256 if adapter.spec.cross_attention_dim == 2048 else 224


class FaceStage:
    kind = "face"
    socket = "face_models"

    def check(self, adapter: LoadedAdapter, encoder: Any, *, where: str) -> None:
        if not isinstance(encoder, FaceEncoder):
            raise IncompatibleError(
                f"{where}: '{adapter.name}' is a FaceID adapter ({adapter.spec.describe()}): it reads a face "
                f"embedding, not a CLIP vision image; use 'IPA Apply FaceID' or 'IPA Encode Face' with "
                f"'IPA Load Face Models'.")
        if encoder.faces is None:
            raise InputError(f"{where}: input 'face_models' is missing; FaceID adapters need 'IPA Load Face Models'.")
        check_choice(encoder.face_select, FACE_SELECT, input_name="face_select", what="mode", where=where)
        check_choice(encoder.no_face, NO_FACE, input_name="no_face", what="policy", where=where)
        check_choice(encoder.crop_colors, CLIP_CROP_COLORS, input_name="clip_crop_colors", what="order", where=where)
        clip = families.encoder_need(adapter.spec).clip
        if clip is not None:
            if encoder.clip_vision is None:
                raise InputError(f"{where}: input 'clip_vision' is missing; '{adapter.name}' is a FaceID Plus "
                                 f"adapter, which also reads {clip.label} hidden states of the aligned face.")
            dims = clip_vision_dims(encoder.clip_vision)
            check_encoder(adapter.spec, hidden=dims.hidden, projection=dims.projection, adapter_name=adapter.name,
                          where=f"{where}, input 'clip_vision'")

    def analyze(self, adapter: LoadedAdapter, encoder: FaceEncoder, images: torch.Tensor, *, where: str) -> Analysis:
        """Detect, select, embed and align the face of every image of ``images`` (B, H, W, C)."""
        pipeline = encoder.faces.pipeline
        size = crop_size(adapter)
        out = Analysis()
        total = images.shape[0]
        mode: str | int = encoder.face_index if encoder.face_select == "index" else encoder.face_select
        for i in range(total):
            label = f"image {i + 1} of {total}"
            pixels = to_uint8_rgb(images[i])
            faces, _ = pipeline.detect(pixels, det_sizes=encoder.det_sizes)
            if not faces:
                looked = ", ".join(str(s) for s in encoder.det_sizes)
                if encoder.no_face == "error":
                    raise InputError(f"{where}: no face found in {label} (detection sizes {looked}); use a "
                                     f"picture with a visible face, or set no_face to 'skip' or 'zero embedding'.")
                out.notes.append(f"no face in {label}: {'left out' if encoder.no_face == 'skip' else 'zero embedding'}")
                if encoder.no_face == "skip":
                    continue
                out.raw.append(np.zeros(512, np.float32))
                out.normed.append(np.zeros(512, np.float32))
                out.crops.append(np.zeros((size, size, 3), np.uint8))
                out.kept.append(i)
                continue
            face = select_face(faces, mode, where=where, image_label=label)
            raw, normed = pipeline.embedding(pixels, face)
            out.raw.append(raw)
            out.normed.append(normed)
            out.crops.append(pipeline.crop(pixels, face, size))
            out.kept.append(i)
        return out

    def features(self, adapter: LoadedAdapter, encoder: FaceEncoder, analysis: Analysis) -> FaceFeatures:
        need = families.encoder_need(adapter.spec)
        embeds = torch.from_numpy(np.stack(analysis.raw if need.output == "raw" else analysis.normed)).float()
        clip = None
        if need.clip is not None:
            crops = np.stack(analysis.crops)
            if encoder.crop_colors == CLIP_CROP_COLORS[0]:
                crops = crops[..., ::-1]  # the reference feeds CLIP the BGR crop of cv2
            crops = torch.from_numpy(np.ascontiguousarray(crops)).float() / 255.0
            clip = encode_images(encoder.clip_vision, crops, "penultimate")
        return face_features(adapter.spec, embeds, clip, shortcut_scale=float(encoder.v2_scale))

    def zero_features(self, adapter: LoadedAdapter, encoder: FaceEncoder, faces: int = 1) -> FaceFeatures:
        """The reference uncond: the projection of zero face embeddings (and, for Plus, the CLIP penultimate
        states of an all-zero normalised image), with the same shortcut."""
        clip = None
        if families.encoder_need(adapter.spec).clip is not None:
            clip = _zero_pixels(encoder.clip_vision)
        return zero_features(adapter.spec, clip, faces=faces, shortcut_scale=float(encoder.v2_scale))

    def black_image(self, adapter: LoadedAdapter, encoder: Any) -> None:
        return None


STAGE = FaceStage()
_zero_cache: "weakref.WeakKeyDictionary[Any, torch.Tensor]" = weakref.WeakKeyDictionary()


def _zero_pixels(clip_vision: Any) -> torch.Tensor:
    hit = _zero_cache.get(clip_vision)
    if hit is None:
        hit = _zero_cache[clip_vision] = encode_zero_pixels(clip_vision)
    return hit


def encode_faces(adapter: LoadedAdapter, encoder: FaceEncoder, image: torch.Tensor, *,
                 where: str) -> tuple[ImageTokens | None, torch.Tensor, list[str]]:
    """The FaceID encode of ``image`` (B, H, W, C): (tokens, or None when no_face 'skip' left no image; the aligned
    face crops as an IMAGE (B', S, S, 3); notes for the node's text)."""
    STAGE.check(adapter, encoder, where=where)
    images = prepare_images(image, where=f"{where}, input 'image'")
    analysis = STAGE.analyze(adapter, encoder, images, where=where)
    size = crop_size(adapter)
    crops = (torch.from_numpy(np.stack(analysis.crops)).float() / 255.0 if analysis.crops
             else torch.zeros(1, size, size, 3))
    if not analysis.kept:
        return None, crops, analysis.notes
    device = projection_device(adapter)
    cond = adapter.model.project(STAGE.features(adapter, encoder, analysis).to(device)).float().cpu()
    portrait = adapter.spec.kind.startswith("portrait")  # the faces of a portrait are one identity: one image
    faces = cond.shape[0] if portrait else 1
    uncond = adapter.model.project(STAGE.zero_features(adapter, encoder, faces).to(device)).float().cpu()
    if portrait:
        cond, uncond = concat_faces(cond), concat_faces(uncond)
    tokens = ImageTokens(cond=cond, uncond=uncond, spec=adapter.spec, adapter_id=adapter.adapter_id,
                         adapter_name=adapter.name)
    return tokens, crops, analysis.notes
