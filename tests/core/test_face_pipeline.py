"""The public face API (ip_adapter_core.face.pipeline): image conversion, face selection, no-face messages, and
FacePipeline's detect / crop / embedding on the planted detector."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ip_adapter_core.errors import InputError
from ip_adapter_core.face import DET_SIZES, NO_FACE, Face, FacePipeline, find_face_models, select_face, to_uint8_rgb
from ip_adapter_core.face.align import template

pytest.importorskip("onnxruntime", reason="the pipeline runs the ONNX files with onnxruntime")
of = pytest.importorskip("testkit.onnx_faces", reason="the test kit builds ONNX files with the onnx package")


def test_constants():
    assert DET_SIZES == (640, 576, 512, 448, 384, 320)
    assert NO_FACE == ("error", "skip", "zero embedding")


# ------------------------------------------------------------------------------------------------- to_uint8_rgb

def test_to_uint8_rgb_truncates_like_the_incumbent():
    x = torch.tensor([[0.0, 0.5, 1.0, 1.5], [-0.2, 0.999, 0.0039, 0.00393]])
    out = to_uint8_rgb(x)
    # (x * 255).clamp(0, 255) then truncation: 0.5 -> 127.5 -> 127; 0.999 -> 254.7 -> 254; 0.0039 -> 0.99 -> 0
    assert out.shape == (2, 4, 3) and out.dtype == np.uint8
    assert out[..., 0].tolist() == [[0, 127, 255, 255], [0, 254, 0, 1]]
    assert np.array_equal(to_uint8_rgb(x.numpy()), out)  # numpy in, the same


def test_to_uint8_rgb_channels():
    rgb = torch.rand(5, 7, 3)
    ref = to_uint8_rgb(rgb)
    rgba = torch.cat([rgb, torch.zeros(5, 7, 1)], dim=-1)
    assert np.array_equal(to_uint8_rgb(rgba), ref)  # alpha dropped
    gray = torch.rand(5, 7)
    g = to_uint8_rgb(gray)
    assert np.array_equal(g[..., 0], g[..., 2]) and np.array_equal(to_uint8_rgb(gray[..., None]), g)
    u8 = (np.arange(105, dtype=np.uint8).reshape(5, 7, 3))
    assert to_uint8_rgb(u8) is not None and np.array_equal(to_uint8_rgb(u8), u8)


@pytest.mark.parametrize("bad, match", [(np.zeros((2, 3, 4, 3)), r"shape \(2, 3, 4, 3\)"),
                                        (np.zeros((4, 4, 2)), r"shape \(4, 4, 2\)"),
                                        (np.zeros((0, 4, 3)), "empty"),
                                        (np.array([["a"]]), "dtype")])
def test_to_uint8_rgb_bad_input(bad, match):
    with pytest.raises(InputError, match=f"IPA Encode Face: image 2 of 3: .*{match}"):
        to_uint8_rgb(bad, where="IPA Encode Face", image_label="image 2 of 3")


# -------------------------------------------------------------------------------------------------- select_face

def _face(x1, y1, x2, y2, score):
    return Face(np.array([x1, y1, x2, y2], np.float32), np.zeros((5, 2), np.float32), score, 640)


def test_select_face_modes():
    faces = [_face(0, 0, 10, 10, 0.9), _face(0, 0, 50, 40, 0.8), _face(0, 0, 40, 50, 0.7)]
    assert faces[1].area == 2000.0
    kw = dict(where="IPA Encode Face", image_label="image 1 of 1")
    assert select_face(faces, "best", **kw) is faces[0]
    assert select_face(faces, "largest", **kw) is faces[1]  # equal areas: the higher score
    assert select_face(faces, 2, **kw) is faces[2]
    with pytest.raises(InputError, match=r"IPA Encode Face: face index 3 is out of range for image 1 of 1: 3 faces "
                                         r"found \(indices 0..2, by score\)"):
        select_face(faces, 3, **kw)
    with pytest.raises(InputError, match="out of range"):
        select_face(faces, -1, **kw)
    with pytest.raises(InputError, match="unknown face selection 'biggest'; expected one of 'best', 'largest'"):
        select_face(faces, "biggest", **kw)


def test_no_face_message():
    with pytest.raises(InputError) as e:
        select_face([], "best", where="IPA Encode Face", image_label="image 3 of 4", det_sizes=DET_SIZES)
    assert str(e.value).startswith("IPA Encode Face: no face found in image 3 of 4 (looked at 640...320).")


# ------------------------------------------------------------------------------------------------ FacePipeline

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted_pipe")
    of.buffalo_folder(str(root), detector="planted")
    return FacePipeline(find_face_models(str(root), where="test", check_hash=False), where="IPA Encode Face")


def _scene():
    # two faces on a 1280x640 photo (det_scale 0.5): canvas (352, 96) bright, canvas (160, 240) dimmer
    img = of.blob_image(640, 1280, [(704.5, 192.5), (320.5, 480.5)], 14, values=[255, 210])
    return img


def test_detect_crop_embedding(planted):
    img = _scene()
    faces, size = planted.detect(img, det_sizes=DET_SIZES)
    assert size == 640 and [f.bbox.tolist() for f in faces] == [[640, 128, 768, 256], [256, 416, 384, 544]]
    assert faces[0].score > faces[1].score
    f = faces[0]
    assert f.bbox.dtype == np.float32 and f.kps.shape == (5, 2) and isinstance(f.score, float)
    # the planted keypoints are the template scaled to the 128 px box: the 112 crop is that box, resized
    assert np.allclose(f.kps, template(112) * (128 / 112) + [640, 128], atol=1e-3)
    crop = planted.crop(img, f, 224)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert crop[112, 112].tolist() == [255, 255, 255] and crop[2, 2].tolist() == [0, 0, 0]
    raw, normed = planted.embedding(img, f)
    assert raw.shape == normed.shape == (512,) and raw.dtype == normed.dtype == np.float32
    assert np.linalg.norm(normed) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(normed, raw / np.linalg.norm(raw), atol=1e-7)
    raw2, _ = planted.embedding(img, faces[1])
    assert not np.allclose(raw, raw2)  # a different face, a different crop


def test_torch_float_gray_and_rgba_inputs(planted):
    img = _scene()
    ref, _ = planted.detect(img)
    as_float = torch.from_numpy(img).float() / 255
    gray = as_float[..., 0]
    rgba = torch.cat([as_float, torch.ones_like(as_float[..., :1])], dim=-1)
    for x in (as_float, gray, rgba, gray[..., None]):
        faces, size = planted.detect(x, det_sizes=(640,))
        assert size == 640 and [f.bbox.tolist() for f in faces] == [f.bbox.tolist() for f in ref]
    raw, _ = planted.embedding(rgba, ref[0])
    assert np.allclose(raw, planted.embedding(img, ref[0])[0], atol=1e-5)


def test_bad_image_names_where(planted):
    with pytest.raises(InputError, match=r"IPA Encode Face: image 2 of 2: image of shape \(1, 2, 3, 4\)"):
        planted.detect(np.zeros((1, 2, 3, 4), np.float32), image_label="image 2 of 2")
    with pytest.raises(InputError, match="IPA Encode Face: input 'det_size'"):
        planted.detect(_scene(), det_sizes=(600,))
    with pytest.raises(InputError, match="IPA Encode Face: face crop size 200"):
        planted.crop(_scene(), planted.detect(_scene())[0][0], 200)


def test_no_face(planted):
    img = np.zeros((300, 400, 3), np.uint8)
    faces, size = planted.detect(img, det_sizes=DET_SIZES)
    assert (faces, size) == ([], None)
    with pytest.raises(InputError, match=r"no face found in image 1 of 1 \(looked at 640...320\)"):
        select_face(faces, "best", where="IPA Encode Face", image_label="image 1 of 1", det_sizes=DET_SIZES)


def test_incomplete_files_refused(tmp_path):
    from ip_adapter_core.face import FaceModelFiles

    with pytest.raises(InputError, match="x: the face models in /nowhere are incomplete"):
        FacePipeline(FaceModelFiles("/nowhere", None, "/nowhere/r.onnx"), where="x")
