"""The FaceID face pipeline without the insightface package: numpy + onnxruntime (imported only when a model is
read or run), cv2 where importable (torch otherwise), reproducing insightface's buffalo_l detection, alignment and
ArcFace embedding step for step (shared/reference/faceid.md).

    files = find_face_models(folders, where="IPA FaceID Loader")      # FaceModelsMissingError lists every folder
    pipe = FacePipeline(files, providers=("CPUExecutionProvider",))    # sessions shared per file and providers
    faces, size = pipe.detect(to_uint8_rgb(image), det_sizes=DET_SIZES)
    face = select_face(faces, "best", where=..., image_label="image 1 of 2", det_sizes=DET_SIZES)
    raw, normed = pipe.embedding(image, face); crop = pipe.crop(image, face, 224)

Modules: models (find and route files), runtime (onnxruntime and the shared sessions), detect (letterbox, SCRFD
decode, NMS, ladder), align (Umeyama, ArcFace template, norm_crop), recognize (ArcFace input and embedding),
resample (cv2 / torch resize and warp), pipeline (the API above).
"""
from .align import ARCFACE_DST, estimate_norm, norm_crop, template, umeyama
from .detect import decode, detect_at, detect_ladder, letterbox, nms
from .models import (
    KNOWN_SHA256,
    FaceModelFiles,
    FaceModelsMissingError,
    ModelInfo,
    candidate_folders,
    classify,
    find_face_models,
    route,
    sha256_of,
)
from .pipeline import DET_SIZES, NO_FACE, SELECT_MODES, Face, FacePipeline, no_face_error, select_face, to_uint8_rgb
from .recognize import arcface_blob
from .runtime import (
    ORT_MISSING,
    OnnxRuntimeMissingError,
    available_providers,
    clear_sessions,
    loaded_sessions,
    sessions,
    signature,
)

__all__ = [
    "ARCFACE_DST", "DET_SIZES", "KNOWN_SHA256", "NO_FACE", "ORT_MISSING", "SELECT_MODES",
    "Face", "FaceModelFiles", "FaceModelsMissingError", "FacePipeline", "ModelInfo", "OnnxRuntimeMissingError",
    "arcface_blob", "available_providers", "candidate_folders", "classify", "clear_sessions", "decode", "detect_at",
    "detect_ladder", "estimate_norm", "find_face_models", "letterbox", "loaded_sessions", "nms", "no_face_error",
    "norm_crop", "route", "select_face", "sessions", "sha256_of", "signature", "template", "to_uint8_rgb", "umeyama",
]
