"""insightface 2.1 as a test-only oracle (shared/reference/faceid.md §3.2): the same random-weight ONNX files in a fake
``root/models/buffalo_l/``, run by insightface and by ip_adapter_core.face, on scikit-image's bundled photos
(astronaut, chelsea, coffee; loaded at test time, never copied into the repo) at det sizes 640 / 448 / 320.

- Detection: boxes, keypoints and scores equal (max diff 0.0), compared as sets of rows; the score sequences equal.
- Embedding: raw within 5e-4 relative (L2) and normed cosine >= 0.9999. The residual is skimage's float32 Umeyama
  inside insightface: given insightface's own matrix, our warp + blob + run reproduce its embedding exactly.
- insightface is fed BGR (and swaps it); we feed RGB.

Skipped, with the reason, where insightface, skimage or cv2 is not importable; the pack never imports insightface.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the oracle runs the ONNX files with onnxruntime")
of = pytest.importorskip("testkit.onnx_faces", reason="the test kit builds ONNX files with the onnx package")
skdata = pytest.importorskip("skimage.data", reason="the test photos come with scikit-image")
pytest.importorskip("cv2", reason="insightface needs cv2")
insightface_app = pytest.importorskip("insightface.app", reason="insightface (test-only oracle) is not importable")
from insightface.app.common import Face as IFace  # noqa: E402
from insightface.utils import face_align  # noqa: E402

from ip_adapter_core.face import FacePipeline, find_face_models  # noqa: E402
from ip_adapter_core.face.recognize import arcface_blob  # noqa: E402
from ip_adapter_core.face.resample import warp_affine  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee")
SIZES = (640, 448, 320)
EMBED_PER_CASE = None  # embeddings compared per (photo, size): all faces (1379 in all)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("insightface_root"))
    of.buffalo_folder(root, detector="random", seed=0)
    logging.getLogger("insightface").setLevel(logging.ERROR)
    app = insightface_app.FaceAnalysis(name="buffalo_l", root=root, allowed_modules=["detection", "recognition"],
                                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    pipe = FacePipeline(find_face_models([root], where="oracle", check_hash=False), backend="cv2")
    return app, pipe


def _photo(name):
    img = getattr(skdata, name)()
    return np.ascontiguousarray(img[..., :3]), np.ascontiguousarray(img[..., :3][..., ::-1])


def _rows(bboxes, kps, scores):
    rows = np.hstack([bboxes.reshape(-1, 4), kps.reshape(-1, 10), np.asarray(scores).reshape(-1, 1)])
    return rows[np.lexsort(rows.T[::-1])]


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # skimage 0.26: SimilarityTransform.estimate is deprecated
        return fn(*a, **k)


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("size", SIZES)
def test_detection_equals_insightface(both, photo, size):
    app, pipe = both
    rgb, bgr = _photo(photo)
    det, kps = app.det_model.detect(bgr, input_size=(size, size))
    faces, found = pipe.detect(rgb, det_sizes=(size,))
    assert len(det) > 10, "the random detector should find many 'faces' to compare"
    assert found == size and len(faces) == len(det)
    ours = _rows(np.array([f.bbox for f in faces]), np.array([f.kps for f in faces]), [f.score for f in faces])
    theirs = _rows(det[:, :4], kps, det[:, 4])
    assert np.array_equal(ours, theirs)  # max diff 0.0 for bbox, kps and score
    assert np.array_equal(np.array([f.score for f in faces], np.float32), det[:, 4])  # both sorted by score


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("size", SIZES)
def test_embedding_equals_insightface(both, photo, size):
    app, pipe = both
    rec = app.models["recognition"]
    rgb, bgr = _photo(photo)
    det, kps = app.det_model.detect(bgr, input_size=(size, size))
    faces, _ = pipe.detect(rgb, det_sizes=(size,))
    for i, face in enumerate(faces[:EMBED_PER_CASE]):
        assert np.array_equal(face.kps, kps[i])
        theirs = IFace(bbox=det[i, :4], kps=kps[i], det_score=det[i, 4])
        _quiet(rec.get, bgr, theirs)
        raw, normed = pipe.embedding(rgb, face)
        e = theirs.embedding
        assert np.linalg.norm(raw - e) <= 5e-4 * np.linalg.norm(e)
        assert float(normed @ theirs.normed_embedding) >= 0.9999
        # with insightface's own (float32 skimage) matrix, the rest of our path is bit-exact
        m = _quiet(face_align.estimate_norm, kps[i], 112)
        crop = warp_affine(rgb, m, 112, backend="cv2")
        exact = pipe._run_rec(arcface_blob(crop)).reshape(-1)
        assert np.array_equal(exact, e)


def test_face_analysis_get_end_to_end(both):
    app, pipe = both
    rgb, bgr = _photo("astronaut")
    theirs = _quiet(app.get, bgr)
    faces, _ = pipe.detect(rgb, det_sizes=(640,))
    assert len(theirs) == len(faces) > 10
    for t, f in list(zip(theirs, faces))[:EMBED_PER_CASE]:
        assert np.array_equal(t.bbox, f.bbox) and np.array_equal(t.kps, f.kps) and t.det_score == np.float32(f.score)
        assert float(pipe.embedding(rgb, f)[1] @ t.normed_embedding) >= 0.9999


@pytest.mark.parametrize("crop_size", [224, 256])
def test_aligned_crops_match_norm_crop(both, crop_size):
    app, pipe = both
    rgb, bgr = _photo("astronaut")
    faces, _ = pipe.detect(rgb, det_sizes=(640,))
    diffs = []
    for f in faces[:EMBED_PER_CASE]:
        theirs = _quiet(face_align.norm_crop, bgr, f.kps, crop_size)[..., ::-1]
        diffs.append(np.abs(pipe.crop(rgb, f, crop_size).astype(int) - theirs.astype(int)))
    d = np.stack(diffs)
    # insightface's M carries skimage's float32 error (<= ~1e-4): the odd pixel moves by a grey level or two
    assert d.max() <= 3 and (d > 1).mean() < 1e-3 and (d > 0).mean() < 0.02
