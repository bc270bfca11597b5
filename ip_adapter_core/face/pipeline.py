"""The face pipeline the host layer calls: detect (with the det-size ladder), select a face, embed, crop.

Images are (H, W, 3) uint8 RGB numpy arrays; ``to_uint8_rgb`` turns a ComfyUI image (torch or numpy float in [0, 1],
gray, RGB or RGBA) into one the way the incumbent does ((x * 255).clamp(0, 255), truncated). The network sees RGB,
as in insightface (which is fed BGR and swaps it). Faces come sorted by score, so ``faces[0]`` is the face every
host uses ("best").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError, check_choice
from . import runtime
from .align import norm_crop
from .detect import LAYOUTS, check_det_sizes, detect_ladder
from .models import FaceModelFiles
from .recognize import embed

DET_SIZES = (640, 576, 512, 448, 384, 320)   # the incumbent's ladder, largest first
NO_FACE = ("error", "skip", "zero embedding")
SELECT_MODES = ("best", "largest")


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face in image pixels: bbox (4,) float32 x1, y1, x2, y2; kps (5, 2) float32 (left eye, right eye,
    nose, left and right mouth corners); the detector's score; the det size that found it."""
    bbox: np.ndarray
    kps: np.ndarray
    score: float
    det_size: int

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))


def _prefix(where, image_label) -> str:
    return "".join([f"{where}: " if where else "", f"{image_label}: " if image_label else ""])


def to_uint8_rgb(image, *, where: str | None = None, image_label: str | None = None) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) float in [0, 1] (torch or numpy; uint8 passes) -> (H, W, 3) uint8
    RGB: (x * 255).clamp(0, 255) truncated to uint8, as the incumbent; alpha dropped, gray replicated."""
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # a torch tensor, without importing torch here
        t = image.detach()
        if t.dtype.is_floating_point:
            t = (t.float() * 255).clamp(0, 255).byte()  # .byte() truncates, as the incumbent's
        arr = t.cpu().numpy()
    else:
        arr = np.asarray(image)
        if arr.dtype.kind == "f":
            arr = np.clip(arr.astype(np.float32) * 255, 0, 255)
    if arr.dtype.kind not in "fui" and arr.dtype != np.bool_:
        raise InputError(f"{_prefix(where, image_label)}image of dtype {arr.dtype}; expected float in [0, 1] or uint8.")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"{_prefix(where, image_label)}image of shape {tuple(arr.shape)}; expected (H, W), (H, W, 1), "
                         "(H, W, 3) or (H, W, 4).")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{_prefix(where, image_label)}the image is empty ({arr.shape[1]}x{arr.shape[0]} pixels).")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)  # truncation, after the clamp above
    return np.ascontiguousarray(arr)


def _as_rgb(image, where=None, image_label=None) -> np.ndarray:
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 \
            and image.shape[0] > 0 and image.shape[1] > 0:
        return image
    return to_uint8_rgb(image, where=where, image_label=image_label)


def _sizes_text(det_sizes) -> str:
    sizes = list(det_sizes or ())
    if not sizes:
        return ""
    return f" (looked at {sizes[0]})" if len(sizes) == 1 else f" (looked at {sizes[0]}...{sizes[-1]})"


def no_face_error(*, where: str | None, image_label: str | None, det_sizes=None) -> InputError:
    """"<where>: no face found in <image> (looked at 640...320)": the InputError for the "error" no-face mode."""
    return InputError(f"{where + ': ' if where else ''}no face found in {image_label or 'the image'}"
                      f"{_sizes_text(det_sizes)}. Use a photo with a clearly visible face, or set the no-face "
                      "behaviour to 'skip' or 'zero embedding'.")


def select_face(faces, mode="best", *, where: str | None, image_label: str | None, det_sizes=None) -> Face:
    """"best" (highest score: the face every host uses), "largest" (bbox area; the higher score wins a tie) or an int
    index into the score order. No face or an index out of range is an InputError naming the image."""
    faces = list(faces)
    if not faces:
        raise no_face_error(where=where, image_label=image_label, det_sizes=det_sizes)
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool):
        if not 0 <= int(mode) < len(faces):
            raise InputError(f"{where + ': ' if where else ''}face index {int(mode)} is out of range for "
                             f"{image_label or 'the image'}: {len(faces)} face{'s' if len(faces) != 1 else ''} found "
                             f"(indices 0..{len(faces) - 1}, by score).")
        return faces[int(mode)]
    check_choice(mode, SELECT_MODES, input_name="face", what="face selection", where=where)
    if mode == "best":
        return faces[0]
    return max(enumerate(faces), key=lambda t: (t[1].area, -t[0]))[1]


class FacePipeline:
    """Detector + aligner + recogniser over the shared onnxruntime sessions of one ``FaceModelFiles``.

    Pipelines built from the same files and providers share their sessions (``runtime.sessions``). ``backend``
    picks the resize / warp implementation ("auto": cv2 where importable, else torch)."""

    def __init__(self, files: FaceModelFiles, providers=("CPUExecutionProvider",), *, backend: str = "auto",
                 where: str | None = None):
        if not files.complete:
            raise InputError(f"{where + ': ' if where else ''}the face models in {files.folder} are incomplete: "
                             f"{files.describe()}.")
        self.files = files
        self.where = where
        self.backend = backend
        s = runtime.sessions(files, providers, where=where)
        self.providers = tuple(s.detector.get_providers())
        self._det, self._rec = s.detector, s.recognizer
        self._det_input = self._det.get_inputs()[0].name
        n = len(self._det.get_outputs())
        if n not in LAYOUTS or not LAYOUTS[n][2]:
            raise InputError(f"{where + ': ' if where else ''}{files.detector} has {n} outputs; FaceID needs an SCRFD "
                             "detector with keypoints (9 or 15 outputs).")
        self.max_stride = LAYOUTS[n][0][-1]
        rin = self._rec.get_inputs()[0]
        self._rec_input = rin.name
        self.rec_size = int(rin.shape[2])

    def _run_det(self, blob):
        return self._det.run(None, {self._det_input: blob})

    def _run_rec(self, blob):
        return self._rec.run(None, {self._rec_input: blob})[0]

    def detect(self, image, *, det_sizes=(640,), threshold: float = 0.5,
               image_label: str | None = None) -> tuple[list[Face], int | None]:
        """Faces sorted by score, and the det size that found them (None when no size did). The sizes are tried in
        order and the first that finds a face wins (the incumbent's 640...320 ladder when given DET_SIZES)."""
        img = _as_rgb(image, self.where, image_label)
        sizes = check_det_sizes(det_sizes, multiple=max(32, self.max_stride), where=self.where)
        try:
            thr = float(threshold)
        except (TypeError, ValueError):
            thr = float("nan")
        if not 0.0 < thr <= 1.0:
            raise InputError(f"{self.where + ': ' if self.where else ''}input 'threshold': detection threshold "
                             f"{threshold!r}; expected a number in (0, 1].")
        dets, kps, size = detect_ladder(self._run_det, img, sizes, thr, backend=self.backend,
                                        where=self.where)
        if size is None:
            return [], None
        return [Face(dets[i, :4].copy(), kps[i].copy(), float(dets[i, 4]), size) for i in range(len(dets))], size

    def crop(self, image, face: Face, size: int) -> np.ndarray:
        """The aligned (S, S, 3) uint8 RGB face (S a multiple of 112 or 128: 224 SD1.5, 256 SDXL, 336 Kolors)."""
        return norm_crop(_as_rgb(image, self.where), face.kps, size, backend=self.backend, where=self.where)

    def embedding(self, image, face: Face) -> tuple[np.ndarray, np.ndarray]:
        """(raw (512,) float32, normed (512,) float32): the ArcFace embedding of the face's aligned crop."""
        return embed(self._run_rec, _as_rgb(image, self.where), face.kps, self.rec_size, backend=self.backend,
                     where=self.where)
