"""SCRFD face detection exactly as insightface runs it (shared/reference/faceid.md §1.2).

letterbox (int() truncation, top-left paste, det_scale = new_h / h) -> blob (x - 127.5) / 128, RGB, NCHW -> run ->
decode per stride (anchor centres (j*s, i*s), no +0.5; 2 anchors per cell for 6/9 outputs, 1 for 10/15) ->
threshold -> divide by det_scale -> stable sort by score, descending -> greedy NMS, IoU > 0.4 dropped, "+1" areas.
The arithmetic is insightface's, in float32, so boxes, keypoints and scores come out equal to it on the same graph.
"""
from __future__ import annotations

import numpy as np

from ..errors import IncompatibleError, InputError
from .resample import resize_bilinear

NMS_THRESHOLD = 0.4
LAYOUTS = {  # outputs -> (strides, anchors per cell, keypoints)
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}

_centres: dict = {}


def input_size(size) -> tuple[int, int]:
    """A det size as (W_in, H_in): an int n is (n, n)."""
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def letterbox(image: np.ndarray, size, *, backend: str | None = "auto") -> tuple[np.ndarray, float]:
    """(H_in, W_in, 3) uint8 canvas with the resized image at the top left, and det_scale = new_h / h.

    det_scale is 0.0 when the image is so thin that one side would round to 0 pixels (nothing to detect)."""
    w_in, h_in = input_size(size)
    h, w = image.shape[:2]
    im_ratio = float(h) / w
    if im_ratio > float(h_in) / w_in:
        new_h = h_in
        new_w = int(new_h / im_ratio)
    else:
        new_w = w_in
        new_h = int(new_w * im_ratio)
    canvas = np.zeros((h_in, w_in, 3), dtype=np.uint8)
    if new_w <= 0 or new_h <= 0:
        return canvas, 0.0
    canvas[:new_h, :new_w, :] = resize_bilinear(image, (new_w, new_h), backend=backend)
    return canvas, float(new_h) / h


def blob(canvas: np.ndarray) -> np.ndarray:
    """cv2.dnn.blobFromImage(canvas, 1/128, size, 127.5, swapRB=True) for an RGB canvas: (1, 3, H, W) float32."""
    x = canvas.astype(np.float32)
    x -= np.float32(127.5)
    x *= np.float32(1.0 / 128.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """(height*width*anchors, 2) float32: (j*s, i*s) row-major over the grid, each repeated ``anchors`` times."""
    key = (height, width, stride, anchors)
    c = _centres.get(key)
    if c is None:
        c = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
        c = (c * stride).reshape(-1, 2)
        if anchors > 1:
            c = np.stack([c] * anchors, axis=1).reshape(-1, 2)
        if len(_centres) < 100:
            _centres[key] = c
    return c


def decode(outputs, width: int, height: int, threshold: float = 0.5, *, where: str | None = None):
    """Raw SCRFD outputs for one (height, width) input -> (scores (N,), boxes (N, 4), kps (N, 5, 2) or None), in
    canvas pixels, unsorted, kept where score >= threshold. Outputs may carry a leading batch dim of 1."""
    n = len(outputs)
    if n not in LAYOUTS:
        raise IncompatibleError(f"{where + ': ' if where else ''}the face detector gave {n} outputs; expected an "
                                "SCRFD detector's 6, 9, 10 or 15.")
    strides, anchors, use_kps = LAYOUTS[n]
    fmc = len(strides)
    outs = [np.asarray(o) for o in outputs]
    outs = [o[0] if o.ndim == 3 else o for o in outs]
    scores_l, boxes_l, kps_l = [], [], []
    for idx, stride in enumerate(strides):
        scores = outs[idx]
        gh, gw = height // stride, width // stride
        centres = anchor_centres(gh, gw, stride, anchors)
        if scores.shape[0] != centres.shape[0]:
            raise IncompatibleError(
                f"{where + ': ' if where else ''}the face detector's stride-{stride} output has {scores.shape[0]} "
                f"rows for a {width}x{height} input; expected {centres.shape[0]} ({gh}x{gw} cells x {anchors}). "
                f"Use a detection size that is a multiple of {strides[-1]}.")
        pos = np.where(scores >= threshold)[0]
        c = centres[pos]
        d = outs[idx + fmc][pos] * stride
        boxes_l.append(np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], -1))
        scores_l.append(scores[pos])
        if use_kps:
            k = outs[idx + 2 * fmc][pos] * stride
            pts = [c[:, i % 2] + k[:, i] for i in range(k.shape[1])]
            kps_l.append(np.stack(pts, axis=-1).reshape(len(pos), k.shape[1] // 2, 2))
    scores = np.vstack(scores_l).ravel()
    boxes = np.vstack(boxes_l)
    kps = np.vstack(kps_l) if use_kps else None
    return scores, boxes, kps


def nms(dets: np.ndarray, threshold: float = NMS_THRESHOLD) -> list[int]:
    """Greedy NMS over (N, 5) [x1, y1, x2, y2, score]: indices kept, best first; a box whose IoU with a kept one is
    above ``threshold`` is dropped. Areas and intersections count pixels inclusively: (x2 - x1 + 1)(y2 - y1 + 1)."""
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[np.where(ovr <= threshold)[0]]
    return keep


def detect_at(run, image: np.ndarray, size, threshold: float = 0.5, *, backend: str | None = "auto",
              where: str | None = None):
    """One detection pass at one det size. ``run(blob) -> list of outputs``. Returns (dets (K, 5) float32
    [x1, y1, x2, y2, score] in image pixels, kps (K, 5, 2) float32 or None), sorted by score, after NMS."""
    w_in, h_in = input_size(size)
    canvas, det_scale = letterbox(image, (w_in, h_in), backend=backend)
    if det_scale == 0.0:
        return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
    scores, boxes, kps = decode(run(blob(canvas)), w_in, h_in, threshold, where=where)
    order = np.argsort(-scores, kind="stable")
    boxes = boxes / det_scale
    pre = np.hstack((boxes, scores[:, None])).astype(np.float32, copy=False)[order]
    if kps is not None:
        kps = (kps / det_scale)[order]
    keep = nms(pre)
    return pre[keep], (kps[keep] if kps is not None else None)


def check_det_sizes(det_sizes, *, multiple: int = 32, where: str | None = None) -> tuple[int, ...]:
    """Det sizes as positive ints, multiples of the detector's largest stride; InputError otherwise."""
    if isinstance(det_sizes, (int, np.integer)):
        det_sizes = (det_sizes,)
    sizes = tuple(det_sizes)
    if not sizes or any(not isinstance(s, (int, np.integer)) or s < multiple or s % multiple for s in sizes):
        raise InputError(f"{where + ': ' if where else ''}input 'det_size': detection sizes {list(sizes)} must be "
                         f"whole multiples of {multiple} (e.g. 640, 576, 512, 448, 384, 320).")
    return tuple(int(s) for s in sizes)


def detect_ladder(run, image: np.ndarray, det_sizes, threshold: float = 0.5, *, backend: str | None = "auto",
                  where: str | None = None):
    """The incumbent's retry: detect at each size in turn and stop at the first that finds a face.
    Returns (dets, kps, size that found them, or None when none did)."""
    dets = np.zeros((0, 5), np.float32)
    kps = None
    for size in det_sizes:
        dets, kps = detect_at(run, image, size, threshold, backend=backend, where=where)
        if len(dets):
            return dets, kps, size
    return dets, kps, None
