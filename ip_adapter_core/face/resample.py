"""The two pixel operations of the face pipeline: the letterbox resize and the alignment warp.

Both use OpenCV when it is importable (``cv2.resize`` INTER_LINEAR and ``cv2.warpAffine`` INTER_LINEAR with a black
constant border: bit for bit what insightface runs) and otherwise torch (``F.interpolate`` bilinear,
align_corners=False, antialias=False; an affine ``grid_sample`` bilinear with zeros padding). The torch results are
within one grey level of OpenCV 5's (tests/core/test_face_align.py, test_face_detect.py). OpenCV 5 warps at the exact
sampling points, as the torch path does; OpenCV 4 rounds them to 1/32 pixel first, so against OpenCV 4 the fallback
can differ by a few grey levels at sharp edges (photos: one or two). ``backend`` is "auto" (cv2 if importable), "cv2" or
"torch". PIL's bilinear is not an option: it antialiases when it shrinks.
"""
from __future__ import annotations

import numpy as np

BACKENDS = ("auto", "cv2", "torch")


def _cv2():
    try:
        import cv2
    except Exception:  # absent, or a broken build (missing libGL): the torch path works everywhere
        return None
    return cv2


def resolve_backend(backend: str | None = "auto") -> str:
    """"cv2" or "torch": the backend "auto" / None stands for here, or the one asked for (cv2 must import)."""
    backend = backend or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"unknown resample backend {backend!r}; expected one of {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        return "cv2" if _cv2() is not None else "torch"
    if backend == "cv2" and _cv2() is None:
        raise ImportError("the cv2 resample backend was asked for, but OpenCV does not import here")
    return backend


def resize_bilinear(image: np.ndarray, size: tuple[int, int], *, backend: str | None = "auto") -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 for ``size = (w, h)``; bilinear, half-pixel centres, no antialiasing."""
    w, h = int(size[0]), int(size[1])
    if resolve_backend(backend) == "cv2":
        return _cv2().resize(np.ascontiguousarray(image), (w, h), interpolation=_cv2().INTER_LINEAR)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    try:  # uint8 in, uint8 out: no float copy of a large photo
        out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    except (RuntimeError, NotImplementedError):  # torch builds without the uint8 kernel
        out = F.interpolate(t.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=False)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int, *, backend: str | None = "auto") -> np.ndarray:
    """``cv2.warpAffine(image, matrix, (size, size), borderValue=0)``: output pixel (x, y) samples the input at
    ``inverse(matrix) @ (x, y, 1)`` bilinearly; taps outside the image read black. (H, W, 3) uint8 -> (S, S, 3)."""
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    if resolve_backend(backend) == "cv2":
        cv2 = _cv2()
        return cv2.warpAffine(np.ascontiguousarray(image), m, (int(size), int(size)), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    import torch
    import torch.nn.functional as F

    h, w = image.shape[:2]
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    # Only the source window the crop reads becomes float: a 6000x4000 photo is not copied whole.
    x0 = int(max(0, np.floor(sx.min()) - 1)); x1 = int(min(w, np.ceil(sx.max()) + 2))
    y0 = int(max(0, np.floor(sy.min()) - 1)); y1 = int(min(h, np.ceil(sy.max()) + 2))
    if x1 <= x0 or y1 <= y0:  # the crop lies wholly outside the image
        return np.zeros((size, size, image.shape[2]), dtype=np.uint8)
    window = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    ww, wh = x1 - x0, y1 - y0
    # grid_sample, align_corners=False: normalised -1 / +1 are the outer edges, pixel i's centre is (2i + 1)/n - 1
    gx = (2.0 * (sx - x0) + 1.0) / ww - 1.0
    gy = (2.0 * (sy - y0) + 1.0) / wh - 1.0
    grid = torch.from_numpy(np.stack([gx, gy], axis=-1)[None])
    # The window reaches one pixel past every tap; where it is cut by the image edge, zeros padding is the black
    # border cv2 reads there.
    out = F.grid_sample(window, grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())
