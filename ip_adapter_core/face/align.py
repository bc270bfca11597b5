"""Face alignment as insightface's ``face_align.norm_crop`` (shared/reference/faceid.md §1.3), without skimage.

``umeyama`` is the least-squares similarity transform (rotation, uniform scale, translation, no reflection) of
Umeyama (PAMI 1991), the estimate skimage's ``SimilarityTransform.estimate`` makes; it runs in float64 and equals
skimage exactly on float64 points (insightface hands skimage float32 points, which moves M by up to ~1e-4).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .resample import warp_affine

# insightface's arcface_dst: the 5-point ArcFace template for a 112 px crop, (x, y), float32 as insightface keeps it
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def umeyama(src, dst, estimate_scale: bool = True) -> np.ndarray:
    """(3, 3) float64 homogeneous similarity T with T @ [src, 1] ~ dst in the least-squares sense (all NaN when the
    points are degenerate, e.g. all equal)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    num, dim = src.shape
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_demean = src - src_mean
    dst_demean = dst - dst_mean
    a = dst_demean.T @ src_demean / num            # covariance, Umeyama eq. (38)
    d = np.ones((dim,), dtype=np.float64)          # eq. (39): no reflection
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1, dtype=np.float64)
    u, s, v = np.linalg.svd(a)
    tol = s.max() * max(a.shape) * np.finfo(float).eps
    rank = int(np.count_nonzero(s > tol))
    if rank == 0:
        return np.nan * t
    if rank == dim - 1:                            # eq. (40), (43)
        if np.linalg.det(u) * np.linalg.det(v) > 0:
            t[:dim, :dim] = u @ v
        else:
            keep = d[dim - 1]
            d[dim - 1] = -1
            t[:dim, :dim] = u @ np.diag(d) @ v
            d[dim - 1] = keep
    else:
        t[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d) if estimate_scale else 1.0   # eq. (41), (42)
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean.T)
    t[:dim, :dim] *= scale
    return t


def template(size: int, *, where: str | None = None) -> np.ndarray:
    """The ArcFace template for an S px crop, (5, 2) float32: S % 112 == 0 -> arcface_dst * S/112; else
    S % 128 == 0 -> arcface_dst * S/128 with 8*S/128 added to x; other sizes are an InputError."""
    size = int(size)
    if size <= 0 or (size % 112 and size % 128):
        raise InputError(f"{where + ': ' if where else ''}face crop size {size}: expected a multiple of 112 or of 128 "
                         "(112, 224, 336, 448 or 128, 256, 384, 512); the ArcFace template is defined for those only.")
    if size % 112 == 0:
        ratio, diff_x = float(size) / 112.0, 0.0
    else:
        ratio = float(size) / 128.0
        diff_x = 8.0 * ratio
    dst = ARCFACE_DST * ratio
    dst[:, 0] += diff_x
    return dst


def estimate_norm(kps, size: int = 112, *, where: str | None = None) -> np.ndarray:
    """(2, 3) float64: the similarity mapping the 5 face keypoints onto the template of an S px crop."""
    kps = np.asarray(kps)
    if kps.shape != (5, 2):
        raise InputError(f"{where + ': ' if where else ''}face keypoints have shape {tuple(kps.shape)}; expected "
                         "(5, 2): left eye, right eye, nose, left and right mouth corners.")
    m = umeyama(kps, template(size, where=where))[:2]
    if not np.all(np.isfinite(m)):
        raise InputError(f"{where + ': ' if where else ''}the face keypoints {kps.tolist()} are degenerate (all "
                         "at one point); the face cannot be aligned.")
    return m


def norm_crop(image: np.ndarray, kps, size: int = 112, *, backend: str | None = "auto",
              where: str | None = None) -> np.ndarray:
    """The aligned (S, S, 3) uint8 face: a bilinear warp of the image with a constant black border."""
    return warp_affine(image, estimate_norm(kps, size, where=where), size, backend=backend)
