"""For maintainers with the real files: this pack's face pipeline next to insightface on the same buffalo_l ONNX
files, on a few photos. Nothing here can be checked in CI (no registry ships buffalo_l); run it where the files and
insightface are installed:

    python3 scripts/check_face_models.py --root ~/ComfyUI/models/insightface [photo.jpg ...]

For each photo (default: scikit-image's astronaut, chelsea and coffee) and detection size it compares the faces
(boxes, keypoints, scores; the largest difference in pixels) and the best face's embedding (cosine of the normed
embeddings). Exit status 1 when a box or keypoint differs by more than ``--max-px`` or a cosine is below
``--min-cosine`` (0.9999), so it can gate a release.
"""
from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np


def _photos(names: list[str]) -> list[tuple[str, np.ndarray]]:
    out = []
    for name in names:
        if "." in name:
            from PIL import Image

            out.append((name, np.asarray(Image.open(name).convert("RGB"))))
        else:
            import skimage.data as data

            out.append((name, np.ascontiguousarray(getattr(data, name)()[..., :3])))
    return out


def compare(root: str, photos: list[str], sizes=(640, 320), name: str = "buffalo_l") -> list[dict]:
    """One row per (photo, size): faces found by each, the largest box / keypoint difference, the cosine."""
    from insightface.app import FaceAnalysis

    from ip_adapter_core.face import FacePipeline, find_face_models

    logging.getLogger("insightface").setLevel(logging.ERROR)
    app = FaceAnalysis(name=name, root=root, allowed_modules=["detection", "recognition"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    pipe = FacePipeline(find_face_models([root], where="check_face_models", name=name), backend="cv2")
    rows = []
    for label, rgb in _photos(photos):
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        for size in sizes:
            det, kps = app.det_model.detect(bgr, input_size=(size, size))
            faces, _ = pipe.detect(rgb, det_sizes=(size,))
            row = {"photo": label, "size": size, "ours": len(faces), "insightface": len(det), "px": 0.0,
                   "cosine": None}
            if len(faces) == len(det) and len(det):
                ours = np.array([np.concatenate([f.bbox, f.kps.ravel()]) for f in faces])
                theirs = np.hstack([det[:, :4], kps.reshape(len(kps), -1)])
                row["px"] = float(np.abs(ours[np.lexsort(ours.T[::-1])] - theirs[np.lexsort(theirs.T[::-1])]).max())
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    from insightface.app.common import Face

                    face = Face(bbox=det[0, :4], kps=kps[0], det_score=det[0, 4])
                    app.models["recognition"].get(bgr, face)
                _, normed = pipe.embedding(rgb, faces[0])
                row["cosine"] = float(np.dot(normed, face.normed_embedding))
            elif len(faces) != len(det):
                row["px"] = float("inf")
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="*", default=["astronaut", "chelsea", "coffee"],
                    help="image files, or scikit-image sample names (default: astronaut chelsea coffee)")
    ap.add_argument("--root", required=True, help="the insightface root: <root>/models/<name>/*.onnx")
    ap.add_argument("--name", default="buffalo_l")
    ap.add_argument("--max-px", type=float, default=0.5)
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    args = ap.parse_args(argv)
    rows = compare(args.root, args.photos, name=args.name)
    bad = 0
    print(f"{'photo':24s} {'det':>4s} {'ours':>5s} {'insightface':>11s} {'max px':>8s} {'cosine':>10s}")
    for r in rows:
        ok = r["px"] <= args.max_px and (r["cosine"] is None or r["cosine"] >= args.min_cosine)
        bad += not ok
        cos = "-" if r["cosine"] is None else f"{r['cosine']:.6f}"
        print(f"{r['photo'][:24]:24s} {r['size']:4d} {r['ours']:5d} {r['insightface']:11d} {r['px']:8.3f} {cos:>10s}"
              f"{'' if ok else '  <-- differs'}")
    print("same faces and embeddings as insightface" if not bad else f"{bad} case(s) differ")
    return 1 if bad else 0
