"""SCRFD decode, NMS, letterbox and the det-size ladder (ip_adapter_core.face.detect), against hand-built outputs and
the planted detector of testkit.onnx_faces, whose answer is known (shared/reference/faceid.md §1.2, §3.3).

Expected values are computed by hand here, never with the code under test.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from ip_adapter_core.errors import IncompatibleError, InputError
from ip_adapter_core.face import detect as D

pytest.importorskip("onnxruntime", reason="the planted-detector tests run the ONNX files with onnxruntime")
of = pytest.importorskip("testkit.onnx_faces", reason="the test kit builds ONNX files with the onnx package")


# ------------------------------------------------------------------------------------------ decode, hand-built

def _outputs(h, w, strides, anchors, kps=True, hits=()):
    """Zero outputs (scores 0.1) for an h x w input; ``hits`` = [(level, row, score, (l, t, r, b), kps10)]."""
    scores, boxes, points = [], [], []
    for s in strides:
        n = (h // s) * (w // s) * anchors
        scores.append(np.full((n, 1), 0.1, np.float32))
        boxes.append(np.ones((n, 4), np.float32))
        points.append(np.zeros((n, 10), np.float32))
    for level, row, score, ltrb, k in hits:
        scores[level][row, 0] = score
        boxes[level][row] = ltrb
        points[level][row] = k
    return scores + boxes + (points if kps else [])


def test_decode_nine_outputs_by_hand():
    # 64x64 input: stride 8 -> 8x8 cells x 2 anchors = 128 rows. Row 59 = cell 29 (anchor 1) = row i=3, col j=5,
    # so its centre is (j*8, i*8) = (40, 24) (no +0.5). Distances (1, 2, 3, 4) strides -> (32, 8, 64, 56).
    k = [0.5, -1, 1, 1, 0, 2, -1, 3, 2, 2.5]
    outs = _outputs(64, 64, (8, 16, 32), 2, hits=[(0, 59, 0.9, (1, 2, 3, 4), k)])
    scores, boxes, kps = D.decode(outs, 64, 64, 0.5)
    assert scores.tolist() == pytest.approx([0.9])
    assert boxes.tolist() == [[32.0, 8.0, 64.0, 56.0]]
    assert kps.tolist() == [[[44.0, 16.0], [48.0, 32.0], [40.0, 40.0], [32.0, 48.0], [56.0, 44.0]]]


def test_decode_stride_32_and_anchor_pairs():
    # stride 32 on 64x64: 2x2 cells x 2 anchors; rows 6 and 7 both belong to cell 3 = (i=1, j=1) -> centre (32, 32)
    outs = _outputs(64, 64, (8, 16, 32), 2, hits=[(2, 6, 0.8, (0.5, 0.5, 0.5, 0.5), [0] * 10),
                                                  (2, 7, 0.7, (1, 1, 1, 1), [0] * 10)])
    scores, boxes, _ = D.decode(outs, 64, 64, 0.5)
    assert boxes.tolist() == [[16.0, 16.0, 48.0, 48.0], [0.0, 0.0, 64.0, 64.0]]
    assert scores.tolist() == pytest.approx([0.8, 0.7])


def test_decode_fifteen_outputs_one_anchor_and_batch_dim():
    # 15 outputs: strides 8..128, one anchor per cell. 128x128 input: stride 64 -> 2x2 rows;
    # row 2 = (i=1, j=0) -> centre (0, 64)
    outs = _outputs(128, 128, (8, 16, 32, 64, 128), 1, hits=[(3, 2, 0.95, (0.25, 0.5, 1, 0.5), [1] * 10)])
    assert len(outs) == 15
    scores, boxes, kps = D.decode(outs, 128, 128, 0.5)
    assert boxes.tolist() == [[-16.0, 32.0, 64.0, 96.0]]
    assert kps[0, 0].tolist() == [64.0, 128.0]
    batched = [o[None] for o in outs]  # [1, N, k] as some exports give
    s2, b2, k2 = D.decode(batched, 128, 128, 0.5)
    assert np.array_equal(b2, boxes) and np.array_equal(k2, kps) and np.array_equal(s2, scores)


def test_decode_without_keypoints_and_threshold():
    outs = _outputs(64, 64, (8, 16, 32), 2, kps=False,
                    hits=[(0, 0, 0.5, (1, 1, 1, 1), None), (1, 3, 0.4999, (1, 1, 1, 1), None)])
    assert len(outs) == 6
    scores, boxes, kps = D.decode(outs, 64, 64, 0.5)
    assert kps is None
    assert scores.tolist() == [0.5]  # score >= threshold is kept; 0.4999 is not
    assert D.decode(outs, 64, 64, 0.3)[0].size == 2


def test_decode_rejects_bad_layouts():
    with pytest.raises(IncompatibleError, match="7 outputs"):
        D.decode([np.zeros((4, 1))] * 7, 64, 64)
    outs = _outputs(64, 64, (8, 16, 32), 2)
    outs[0] = outs[0][:100]
    with pytest.raises(IncompatibleError, match="stride-8 output has 100 rows .* expected 128"):
        D.decode(outs, 64, 64)


# ------------------------------------------------------------------------------------------------------- NMS

def test_nms_plus_one_areas():
    # A = (0,0,9,9): 10x10 px = 100 inclusive. B = (4,0,13,9): overlap x 4..9 = 6 px, y 10 px -> 60;
    # IoU = 60 / (100 + 100 - 60) = 0.4286 > 0.4 -> dropped. (Without +1: 45 / 117 = 0.385, it would be kept.)
    dets = np.array([[0, 0, 9, 9, 0.9], [4, 0, 13, 9, 0.8]], np.float32)
    assert D.nms(dets) == [0]
    # C = (5,0,14,9): overlap 5 x 10 = 50, IoU = 50 / 150 = 0.333 -> kept
    dets = np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]], np.float32)
    assert D.nms(dets) == [0, 1]


def test_nms_threshold_is_inclusive_and_order_is_by_score():
    # B inside A: (0,0,9,3) = 10x4 = 40 px; IoU = 40/100 = 0.4 exactly: kept (IoU <= 0.4 survives)
    dets = np.array([[0, 0, 9, 3, 0.5], [0, 0, 9, 9, 0.9], [100, 100, 120, 120, 0.7]], np.float32)
    assert D.nms(dets) == [1, 2, 0]
    # ties keep the input order (stable)
    tied = np.array([[0, 0, 9, 9, 0.8], [50, 50, 59, 59, 0.8]], np.float32)
    assert D.nms(tied) == [0, 1]


# -------------------------------------------------------------------------------------------------- letterbox

@pytest.mark.parametrize("h, w, new_h, new_w", [
    (480, 1000, 307, 640),    # wide: new_w = 640, new_h = int(640 * 0.48) = int(307.2)
    (1000, 480, 640, 307),    # tall: new_h = 640, new_w = int(640 / (1000/480)) = int(307.2)
    (640, 640, 640, 640),
    (4000, 6000, 426, 640),   # int(426.67): truncation, not rounding
])
def test_letterbox_sizes_and_det_scale(h, w, new_h, new_w):
    img = np.full((h, w, 3), 200, np.uint8)
    canvas, det_scale = D.letterbox(img, 640)
    assert canvas.shape == (640, 640, 3)
    assert det_scale == new_h / h  # new_h / h, even where new_w / w differs
    assert (canvas[:new_h, :new_w] == 200).all()  # pasted at the top left
    assert (canvas[new_h:] == 0).all() and (canvas[:, new_w:] == 0).all()


def test_letterbox_too_thin_gives_nothing():
    canvas, det_scale = D.letterbox(np.zeros((1, 1000, 3), np.uint8), 640)  # int(0.64) = 0 rows
    assert det_scale == 0.0 and not canvas.any()


def test_resize_backends_within_one_grey_level():
    from PIL import Image

    from ip_adapter_core.face import resample

    if resample._cv2() is None:
        pytest.skip("cv2 is not importable here: nothing to compare the torch resize with")
    photo = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "example_workflows", "ipadapter_face_reference.jpg")
    img = np.asarray(Image.open(photo).convert("RGB"))
    for size in [(640, 640), (437, 291), (320, 213), (1000, 1000)]:
        a = resample.resize_bilinear(img, size, backend="cv2").astype(int)
        b = resample.resize_bilinear(img, size, backend="torch").astype(int)
        assert a.shape == b.shape == (size[1], size[0], 3)
        assert np.abs(a - b).max() <= 1


def test_blob_equals_cv2_dnn():
    cv2 = pytest.importorskip("cv2", reason="cv2.dnn.blobFromImage is the reference for the blob")
    canvas = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    canvas[..., 0] = 255 - canvas[..., 0]
    bgr = canvas[..., ::-1].copy()  # insightface is fed BGR and swaps it back
    ref = cv2.dnn.blobFromImage(bgr, 1.0 / 128, (16, 16), (127.5, 127.5, 127.5), swapRB=True)
    assert np.array_equal(D.blob(canvas), ref)


def test_det_sizes_checked():
    assert D.check_det_sizes((640, 320)) == (640, 320)
    with pytest.raises(InputError, match="multiples of 32"):
        D.check_det_sizes((640, 600))
    with pytest.raises(InputError, match="multiples of 128"):
        D.check_det_sizes((576,), multiple=128)


# ----------------------------------------------------------------------------------- planted detector end to end

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from ip_adapter_core.face import FacePipeline, find_face_models

    root = tmp_path_factory.mktemp("planted")
    of.buffalo_folder(str(root), detector="planted")
    return FacePipeline(find_face_models([str(root)], where="test", check_hash=False))


def _image_centre(canvas_xy, sx, sy):
    """The image point that the resize maps onto canvas pixel ``canvas_xy`` (pixel centres: c = (x + 0.5) s - 0.5)."""
    return ((canvas_xy[0] + 0.5) / sx - 0.5, (canvas_xy[1] + 0.5) / sy - 0.5)


@pytest.mark.parametrize("h, w, canvas_xy", [
    (640, 1280, (352, 96)),     # wide, det_scale 0.5
    (960, 480, (160, 480)),     # tall: new_w = int(640 / 2) = 320, det_scale 640/960
    (480, 1000, (448, 128)),    # 1000x480: new_h = 307, det_scale 307/480 (not 0.64)
])
def test_blob_centre_through_the_letterbox(planted, h, w, canvas_xy):
    new_w, new_h = (640, int(640 * h / w)) if h / w <= 1 else (int(640 / (h / w)), 640)
    sx, sy, det_scale = new_w / w, new_h / h, new_h / h
    cx, cy = _image_centre(canvas_xy, sx, sy)
    img = of.blob_image(h, w, [(cx, cy)], radius=7 / sx)
    faces, size = planted.detect(img, det_sizes=(640,))
    assert size == 640 and len(faces) == 1
    f = faces[0]
    centre = ((f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2)
    # the anchor is the canvas pixel itself (no +0.5); boxes divide by det_scale = new_h / h
    assert centre[0] == pytest.approx(canvas_xy[0] / det_scale, abs=1e-3)
    assert centre[1] == pytest.approx(canvas_xy[1] / det_scale, abs=1e-3)
    assert abs(centre[0] - cx) <= 1.0 and abs(centre[1] - cy) <= 1.0
    assert f.bbox[2] - f.bbox[0] == pytest.approx(64 / det_scale, rel=1e-5)  # the planted 64 px box
    assert f.det_size == 640


def test_score_and_threshold(planted):
    # native resolution (640x640 at det 640: no resampling); a value-200 disc of radius 7 covers the 9x9 patch:
    # mean normalised = (200 - 127.5) / 128, score = sigmoid(12 * mean - 6)
    img = of.blob_image(640, 640, [(320, 320)], 7, values=200)
    expected = 1 / (1 + np.exp(-(12 * (200 - 127.5) / 128 - 6)))
    faces, _ = planted.detect(img, det_sizes=(640,))
    assert len(faces) == 1 and faces[0].score == pytest.approx(expected, abs=1e-5)
    assert faces[0].bbox.tolist() == [288, 288, 352, 352]
    assert planted.detect(img, det_sizes=(640,), threshold=expected + 0.01) == ([], None)
    with pytest.raises(InputError, match="threshold"):
        planted.detect(img, threshold=1.5)


def test_ladder_stops_at_first_size_that_finds(planted):
    # radius 6 at 640 covers the 9x9 patch; at 320 it is a radius-3 disc and stays below the threshold
    img = of.blob_image(640, 640, [(320, 320)], 6)
    assert planted.detect(img, det_sizes=(320,)) == ([], None)
    faces, size = planted.detect(img, det_sizes=(320, 384, 640))
    assert size in (384, 640) and faces and all(f.det_size == size for f in faces)
    faces, size = planted.detect(img, det_sizes=(320, 640))
    assert size == 640 and len(faces) == 1
    from ip_adapter_core.face import DET_SIZES

    assert planted.detect(img, det_sizes=DET_SIZES)[1] == 640  # the incumbent's ladder starts at 640


def test_thirty_faces_found_in_score_order(planted):
    # 6 x 5 discs on a 1280 image (det_scale 0.5), 96 canvas px apart (boxes are 64): none suppressed;
    # values 255, 253, ... make the scores distinct, so the order is known
    centres, values = [], []
    for n in range(30):
        cxc, cyc = 48 + 96 * (n % 6), 48 + 96 * (n // 6)
        centres.append(_image_centre((cxc, cyc), 0.5, 0.5))
        values.append(255 - 2 * ((n * 7) % 30))  # shuffled brightness
    img = of.blob_image(1280, 1280, centres, 14, values=values)
    faces, _ = planted.detect(img, det_sizes=(640,))
    assert len(faces) == 30
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 30
    by_value = [centres[i] for i in np.argsort(-np.array(values), kind="stable")]
    got = [((f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2) for f in faces]
    assert np.abs(np.array(got) - np.array(by_value)).max() <= 1.0


def test_large_photo(planted):
    # 6000x4000: det_scale = int(640 * 4000 / 6000) / 4000 = 426 / 4000; memory is bounded by the letterbox
    sx, sy = 640 / 6000, 426 / 4000
    cx, cy = _image_centre((320, 200), sx, sy)
    img = of.blob_image(4000, 6000, [(cx, cy)], 7 / sy)
    faces, size = planted.detect(img)
    assert size == 640 and len(faces) == 1
    centre = ((faces[0].bbox[0] + faces[0].bbox[2]) / 2, (faces[0].bbox[1] + faces[0].bbox[3]) / 2)
    assert centre == pytest.approx((320 / sy, 200 / sy), abs=1e-2)
    assert abs(centre[0] - cx) < 0.01 * cx and abs(centre[1] - cy) <= 10  # x is off by new_w/w vs new_h/h
    crop = planted.crop(img, faces[0], 224)
    assert crop.shape == (224, 224, 3)


def test_tiny_and_thin_images_find_nothing(planted):
    from ip_adapter_core.face import DET_SIZES

    # tiny dark images are upscaled and searched like any other: no face, no error
    for shape in [(20, 20, 3), (1, 1, 3), (31, 7, 3)]:
        assert planted.detect(np.zeros(shape, np.uint8), det_sizes=DET_SIZES) == ([], None)
    # so thin that the letterbox rounds one side to 0 px: nothing to run the detector on (insightface would fail)
    for shape in [(1, 1000, 3), (2000, 1, 3)]:
        assert planted.detect(np.full(shape, 255, np.uint8), det_sizes=DET_SIZES) == ([], None)
    # a tiny bright image is all "face" to the planted detector: it is searched, not refused
    assert planted.detect(np.full((20, 20, 3), 255, np.uint8))[1] == 640


def test_torch_backend_finds_the_same_faces(tmp_path):
    from ip_adapter_core.face import FacePipeline, find_face_models

    of.buffalo_folder(str(tmp_path), detector="planted")
    files = find_face_models([str(tmp_path)], where="test", check_hash=False)
    img = of.blob_image(480, 1000, [_image_centre((448, 128), 0.64, 307 / 480), (100.3, 300.7)], 11)
    a, _ = FacePipeline(files, backend="torch").detect(img)
    try:
        b, _ = FacePipeline(files, backend="cv2").detect(img)
    except ImportError:
        pytest.skip("cv2 is not importable: only the torch half ran")
    assert len(a) == len(b) == 2
    for fa, fb in zip(a, b):
        assert np.array_equal(fa.bbox, fb.bbox) and abs(fa.score - fb.score) < 0.02
