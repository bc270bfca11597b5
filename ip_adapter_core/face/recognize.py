"""ArcFace embedding as insightface's ``ArcFaceONNX.get`` (shared/reference/faceid.md §1.4).

aligned crop (the model's input size, 112 for w600k_r50) -> (x - 127.5) / 127.5 as a float32 multiply by 1/127.5
(bit-equal to ``cv2.dnn.blobFromImages``), RGB, NCHW -> run -> the raw embedding (512,) and raw / ||raw||.

Mean and std are 127.5 / 127.5 for every file, known or not. insightface picks mean 0 / std 1 instead for MXNet-era
exports whose first 8 graph nodes include a ``Sub``/``_minus`` and a ``Mul``/``_mul`` node (normalisation baked in);
reading node names needs the ``onnx`` package, which this package does not import, so that heuristic is not applied.
buffalo_l's w600k_r50 and antelopev2's glintr100 both use 127.5 / 127.5.
"""
from __future__ import annotations

import numpy as np

from .align import norm_crop

INPUT_MEAN = 127.5
INPUT_STD = 127.5


def arcface_blob(crop: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 RGB -> (1, 3, S, S) float32 (x - 127.5) * (1 / 127.5)."""
    x = crop.astype(np.float32)
    x -= np.float32(INPUT_MEAN)
    x *= np.float32(1.0 / INPUT_STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def normed(raw: np.ndarray) -> np.ndarray:
    """raw / ||raw||_2 (zeros for an all-zero embedding)."""
    n = float(np.linalg.norm(raw))
    return (raw / n).astype(np.float32) if n > 0 else np.zeros_like(raw, dtype=np.float32)


def embed(run, image: np.ndarray, kps, size: int = 112, *, backend: str | None = "auto",
          where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``run(blob) -> (1, D) array``. Returns (raw (D,) float32, normed (D,) float32)."""
    crop = norm_crop(image, kps, size, backend=backend, where=where)
    raw = np.asarray(run(arcface_blob(crop)), dtype=np.float32).reshape(-1).copy()
    return raw, normed(raw)
