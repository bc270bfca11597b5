"""Which face model files FaceID uses: found in the model folders and routed by their ONNX signature.

Routing follows insightface's ``ModelRouter`` (files in sorted order, the first per role wins), restricted to what
FaceID needs: the SCRFD detector with keypoints (9 or 15 outputs) and the ArcFace recogniser (one square input of at
least 112 px divisible by 16, one output). Landmark (192x192), gender/age (96x96) and face-swap models are listed and
ignored; detectors without keypoints (6 or 10 outputs) are listed as unusable. The chosen files are labelled by
SHA-256 (the genuine buffalo_l ones, once per file version); another file works, with a logged warning.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import threading
from dataclasses import dataclass

from ..checkpoint import file_key
from ..errors import IPAdapterError, InputError
from .runtime import OnnxRuntimeMissingError, onnxruntime, signature

log = logging.getLogger(__name__)


class FaceModelsMissingError(InputError):
    """No folder holds a usable detector + recogniser pair; the message lists every folder looked in."""


KNOWN_SHA256 = {
    "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91": "buffalo_l det_10g.onnx",
    "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43": "buffalo_l w600k_r50.onnx",
}
DETECTOR_LAYOUTS = {6: False, 9: True, 10: False, 15: True}  # output count -> has keypoints

_hash_lock = threading.Lock()
_hashes: dict = {}
_warned: set = set()


def sha256_of(path: str) -> str:
    """SHA-256 of a file, computed once per ``file_key``."""
    key = file_key(path)
    with _hash_lock:
        if key in _hashes:
            return _hashes[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    with _hash_lock:
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


@dataclass(frozen=True)
class ModelInfo:
    """One .onnx file and what routing made of it. role: detector, recognizer, detector-no-kps, landmark,
    genderage, swapper, unknown, unreadable; ``what`` says it in words; ``known`` names a genuine file."""
    path: str
    role: str
    what: str
    used: bool = False
    known: str | None = None
    input_size: int | None = None      # recogniser: the square crop size
    outputs: int | None = None         # detector: the output count


def classify(path: str) -> ModelInfo:
    """Route one file by its signature."""
    try:
        sig = signature(path)
    except OnnxRuntimeMissingError:
        raise
    except IPAdapterError as exc:
        return ModelInfo(path, "unreadable", f"unreadable: {str(exc).split(': ', 1)[-1].rstrip('.')}")
    except OSError as exc:
        return ModelInfo(path, "unreadable", f"unreadable: {exc.strerror or exc}")
    ins, outs = sig.inputs, sig.outputs
    shape = ins[0].shape if ins else ()
    hw = tuple(shape[2:4]) if len(shape) == 4 else (None, None)
    n = len(outs)
    if n >= 5:
        if n in DETECTOR_LAYOUTS and not DETECTOR_LAYOUTS[n]:
            return ModelInfo(path, "detector-no-kps", f"detector without keypoints ({n} outputs): unusable for "
                             "FaceID, which aligns faces on the detector's 5 keypoints", outputs=n)
        if n not in DETECTOR_LAYOUTS:
            return ModelInfo(path, "unknown", f"{n}-output model, not a known SCRFD detector layout "
                             "(6, 9, 10 or 15 outputs)", outputs=n)
        widths = [o.shape[-1] if o.shape else None for o in outs]
        wants = [(1, 4, 10)[i // (n // 3)] for i in range(n)]  # scores, then boxes, then keypoints per stride
        if any(w is not None and w != want for w, want in zip(widths, wants)):
            return ModelInfo(path, "unknown", f"{n}-output model whose outputs are not SCRFD's scores / boxes / "
                             f"keypoints (last dims {widths})", outputs=n)
        return ModelInfo(path, "detector", f"detector (SCRFD, {n} outputs, with keypoints)", outputs=n)
    if hw == (192, 192):
        return ModelInfo(path, "landmark", "landmark model, not used")
    if hw == (96, 96):
        return ModelInfo(path, "genderage", "gender/age model, not used")
    if len(ins) == 2 and hw == (128, 128):
        return ModelInfo(path, "swapper", "face swapper, not used")
    if len(ins) == 1 and n == 1 and hw[0] is not None and hw[0] == hw[1] and hw[0] >= 112 and hw[0] % 16 == 0:
        dim = outs[0].shape[-1] if outs[0].shape else None
        return ModelInfo(path, "recognizer", f"recogniser ({hw[0]}x{hw[0]} -> {dim or '?'})", input_size=hw[0])
    return ModelInfo(path, "unknown", f"not a face model FaceID uses ({sig.describe()})")


@dataclass(frozen=True)
class FaceModelFiles:
    """The routed files of one folder: the detector and recogniser FaceID runs (None when missing) and every file
    looked at."""
    folder: str
    detector: str | None
    recognizer: str | None
    models: tuple[ModelInfo, ...] = ()

    @property
    def complete(self) -> bool:
        return self.detector is not None and self.recognizer is not None

    @property
    def recognizer_size(self) -> int | None:
        return next((m.input_size for m in self.models if m.path == self.recognizer), None)

    def info(self, path: str) -> ModelInfo | None:
        return next((m for m in self.models if m.path == path), None)

    def describe(self) -> str:
        """"det_10g.onnx: detector (...); w600k_r50.onnx: recogniser (...); 2d106det.onnx: landmark model, not used"."""
        parts = [f"{os.path.basename(m.path)}: {m.what}" for m in self.models]
        if not self.models:
            return "no .onnx files"
        missing = [r for r, p in (("detector with keypoints", self.detector), ("recogniser", self.recognizer))
                   if p is None]
        return "; ".join(parts) + (f" (no {' and no '.join(missing)})" if missing else "")


def _label(m: ModelInfo, check_hash: bool) -> ModelInfo:
    if not check_hash:
        return m
    known = KNOWN_SHA256.get(sha256_of(m.path))
    tail = f", genuine {known}" if known else ", not a known file"
    if known is None:
        key = file_key(m.path)
        if key not in _warned:
            _warned.add(key)
            log.warning("IPAdapter FaceID: %s is not a known buffalo_l %s (sha256 %s...): works, but FaceID "
                        "adapters were trained on buffalo_l's w600k_r50 embeddings (and det_10g's keypoints)",
                        m.path, "recogniser" if m.role == "recognizer" else "detector", sha256_of(m.path)[:12])
    return ModelInfo(m.path, m.role, m.what + tail, True, known, m.input_size, m.outputs)


def route(paths, *, folder: str | None = None, check_hash: bool = True) -> FaceModelFiles:
    """Route ``*.onnx`` files (sorted; the first detector and the first recogniser win)."""
    files = sorted(p for p in paths if p.lower().endswith(".onnx") and os.path.isfile(p))
    chosen: dict[str, str] = {}
    models = []
    for path in files:
        m = classify(path)
        if m.role in ("detector", "recognizer"):
            if m.role in chosen:
                m = ModelInfo(m.path, m.role, f"{m.what}, not used ({os.path.basename(chosen[m.role])} came "
                              "first)", False, None, m.input_size, m.outputs)
            else:
                chosen[m.role] = path
                m = _label(m, check_hash)
        models.append(m)
    folder = folder if folder is not None else (os.path.dirname(files[0]) if files else "")
    return FaceModelFiles(folder, chosen.get("detector"), chosen.get("recognizer"), tuple(models))


def candidate_folders(folders, name: str = "buffalo_l") -> list[str]:
    """Where models are looked for, in order: ``<f>/models/<name>/``, ``<f>/<name>/``, ``<f>`` for each folder."""
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    out, seen = [], set()
    for f in folders:
        for c in (os.path.join(f, "models", name), os.path.join(f, name), os.fspath(f)):
            real = os.path.realpath(c)
            if real not in seen:
                seen.add(real)
                out.append(os.path.normpath(c))
    return out


def find_face_models(folders, *, where: str, name: str = "buffalo_l", check_hash: bool = True) -> FaceModelFiles:
    """The first candidate folder with a detector and a recogniser; FaceModelsMissingError listing every folder
    looked in and what each holds otherwise (OnnxRuntimeMissingError first when onnxruntime does not import)."""
    onnxruntime(where)
    looked = []
    for c in candidate_folders(folders, name):
        if not os.path.isdir(c):
            looked.append(f"  {c}: does not exist")
            continue
        files = route(glob.glob(os.path.join(glob.escape(c), "*.onnx")), folder=c, check_hash=check_hash)
        if files.complete:
            return files
        looked.append(f"  {c}: {files.describe()}")
    if not looked:
        raise FaceModelsMissingError(f"{where}: no insightface model folder is configured, so the FaceID face models "
                                     f"({name}) cannot be looked for.")
    raise FaceModelsMissingError(
        f"{where}: no FaceID face models found: expected a face detector with keypoints and a recogniser "
        f"(insightface's {name}: det_10g.onnx and w600k_r50.onnx). Looked in:\n" + "\n".join(looked) +
        f"\nPut the {name} files in {candidate_folders(folders, name)[0]}{os.sep} (the layout insightface uses).")
