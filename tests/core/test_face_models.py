"""Finding and routing face model files, the shared sessions, and running without onnxruntime / cv2
(ip_adapter_core.face.models, .runtime)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from ip_adapter_core.face import models as M
from ip_adapter_core.face import runtime as R

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytest.importorskip("onnxruntime", reason="routing reads ONNX signatures with onnxruntime")
of = pytest.importorskip("testkit.onnx_faces", reason="the test kit builds ONNX files with the onnx package")


def _names(files):
    return {os.path.basename(m.path): m.role for m in files.models}


def test_route_buffalo_folder(tmp_path):
    folder = of.buffalo_folder(str(tmp_path))
    files = M.route([os.path.join(folder, f) for f in os.listdir(folder)])
    assert files.complete and files.folder == folder
    assert os.path.basename(files.detector) == "det_10g.onnx"
    assert os.path.basename(files.recognizer) == "w600k_r50.onnx"
    assert files.recognizer_size == 112
    assert _names(files) == {"2d106det.onnx": "landmark", "det_10g.onnx": "detector",
                             "genderage.onnx": "genderage", "w600k_r50.onnx": "recognizer"}
    text = files.describe()
    assert "2d106det.onnx: landmark model, not used" in text and "w600k_r50.onnx: recogniser (112x112 -> 512)" in text
    assert "genderage.onnx: gender/age model, not used" in text and "not a known file" in text


def test_route_first_file_per_role_wins(tmp_path):
    of.planted_detector(str(tmp_path / "a_det.onnx"))
    of.random_detector(str(tmp_path / "b_det.onnx"))
    of.random_recognizer(str(tmp_path / "c_rec.onnx"))
    of.random_recognizer(str(tmp_path / "d_rec.onnx"), size=224)
    files = M.route([str(tmp_path / n) for n in ("d_rec.onnx", "b_det.onnx", "c_rec.onnx", "a_det.onnx")])
    assert os.path.basename(files.detector) == "a_det.onnx"
    assert os.path.basename(files.recognizer) == "c_rec.onnx"
    text = files.describe()
    assert "b_det.onnx: detector (SCRFD, 9 outputs, with keypoints), not used (a_det.onnx came first)" in text
    assert "recogniser (224x224 -> 512), not used" in text


def test_route_layouts(tmp_path):
    cases = {
        "det6.onnx": (lambda p: of.random_detector(p, keypoints=False), "detector-no-kps"),
        "det15.onnx": (lambda p: of.random_detector(p, levels=5), "detector"),
        "det10.onnx": (lambda p: of.random_detector(p, levels=5, keypoints=False), "detector-no-kps"),
        "det9b.onnx": (lambda p: of.random_detector(p, batch_dim=True), "detector"),
        "lmk.onnx": (of.landmark_model, "landmark"),
        "ga.onnx": (of.genderage_model, "genderage"),
    }
    for name, (build, role) in cases.items():
        build(str(tmp_path / name))
        m = M.classify(str(tmp_path / name))
        assert m.role == role, (name, m)
    assert "detector without keypoints (6 outputs): unusable for FaceID" in M.classify(str(tmp_path / "det6.onnx")).what


def _missing(tmp_path, **kw):
    with pytest.raises(M.FaceModelsMissingError) as e:
        M.find_face_models([str(tmp_path)], where="IPA Face Model Loader", **kw)
    return str(e.value)


def test_landmark_model_in_place_of_recogniser(tmp_path):
    folder = tmp_path / "models" / "buffalo_l"
    of.planted_detector(str(folder / "det_10g.onnx"))
    of.landmark_model(str(folder / "w600k_r50.onnx"))  # a landmark model under the recogniser's name
    msg = _missing(tmp_path)
    assert msg.startswith("IPA Face Model Loader: no FaceID face models found")
    assert f"{folder}: det_10g.onnx: detector (SCRFD, 9 outputs, with keypoints)" in msg
    assert "w600k_r50.onnx: landmark model, not used (no recogniser)" in msg
    # every folder looked in is listed, with what it holds
    assert f"{tmp_path / 'buffalo_l'}: does not exist" in msg
    assert f"{tmp_path}: no .onnx files" in msg


def test_corrupt_onnx_is_reported_not_raised(tmp_path):
    folder = tmp_path / "buffalo_l"  # the <folder>/<name>/ layout
    of.planted_detector(str(folder / "det_10g.onnx"))
    (folder / "w600k_r50.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    (folder / "empty.onnx").write_bytes(b"")
    msg = _missing(tmp_path)
    assert "w600k_r50.onnx: unreadable: onnxruntime cannot load it as an ONNX model (Protobuf parsing failed)" in msg
    assert "empty.onnx: unreadable: onnxruntime cannot load it as an ONNX model (No graph was found" in msg
    assert "Traceback" not in msg and "(no recogniser)" in msg


def test_six_output_detector_is_not_enough(tmp_path):
    of.random_detector(str(tmp_path / "scrfd_nokps.onnx"), keypoints=False)
    of.random_recognizer(str(tmp_path / "w600k_r50.onnx"))
    msg = _missing(tmp_path)
    assert "scrfd_nokps.onnx: detector without keypoints (6 outputs): unusable for FaceID" in msg
    assert "(no detector with keypoints)" in msg
    from ip_adapter_core.errors import InputError
    from ip_adapter_core.face import FaceModelFiles, FacePipeline

    files = FaceModelFiles(str(tmp_path), str(tmp_path / "scrfd_nokps.onnx"), str(tmp_path / "w600k_r50.onnx"))
    with pytest.raises(InputError, match="needs an SCRFD detector with keypoints"):
        FacePipeline(files, where="x")


def test_find_order_and_folder_itself(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    of.planted_detector(str(b / "det.onnx"))
    of.random_recognizer(str(b / "rec.onnx"))
    files = M.find_face_models([str(a), str(b)], where="x", check_hash=False)  # the folder itself counts
    assert files.folder == str(b)
    of.buffalo_folder(str(b))  # <b>/models/buffalo_l comes before <b>
    assert M.find_face_models([str(a), str(b)], where="x", check_hash=False).folder == os.path.join(str(b), "models",
                                                                                                    "buffalo_l")
    assert M.find_face_models(str(b), where="x", name="antelopev2", check_hash=False).folder == str(b)
    with pytest.raises(M.FaceModelsMissingError, match="no insightface model folder is configured"):
        M.find_face_models([], where="x")


def test_sha256_labels_and_cache(tmp_path, monkeypatch, caplog):
    path = of.random_recognizer(str(tmp_path / "w600k_r50.onnx"))
    digest = M.sha256_of(path)
    monkeypatch.setitem(M.KNOWN_SHA256, digest, "buffalo_l w600k_r50.onnx")
    calls = []
    real = M.hashlib.sha256
    monkeypatch.setattr(M.hashlib, "sha256", lambda: calls.append(1) or real())
    m = M._label(M.classify(path), True)
    assert m.known == "buffalo_l w600k_r50.onnx" and "genuine buffalo_l w600k_r50.onnx" in m.what
    assert calls == []  # computed once per file_key: the first sha256_of above
    os.utime(path, ns=(1, 1))  # a new version of the file: hashed again
    M.sha256_of(path)
    assert calls == [1]


def test_unknown_file_warns_once(tmp_path, caplog):
    folder = of.buffalo_folder(str(tmp_path), seed=3)
    with caplog.at_level(logging.WARNING, logger="ip_adapter_core.face.models"):
        M.find_face_models(str(tmp_path), where="x")
        M.find_face_models(str(tmp_path), where="x")
    warned = [r.getMessage() for r in caplog.records if "w600k_r50.onnx" in r.getMessage()]
    assert len(warned) == 1 and os.path.join(folder, "w600k_r50.onnx") in warned[0]
    assert "works, but FaceID adapters were trained on buffalo_l's w600k_r50 embeddings" in warned[0]


def test_sessions_shared_per_file_and_providers(tmp_path):
    from ip_adapter_core.face import FacePipeline

    of.buffalo_folder(str(tmp_path), detector="planted")
    files = M.find_face_models(str(tmp_path), where="x", check_hash=False)
    a, b = FacePipeline(files), FacePipeline(files)
    assert a._det is b._det and a._rec is b._rec
    s = R.sessions(files)
    assert s.detector is a._det and s.recognizer is a._rec
    before = R.loaded_sessions()
    os.utime(files.detector, ns=(2, 2))  # the file changed: a fresh session, the stale one dropped
    c = FacePipeline(files)
    assert c._det is not a._det and c._rec is a._rec
    assert R.loaded_sessions() == before
    assert "CPUExecutionProvider" in R.available_providers()


def test_unavailable_providers(tmp_path):
    from ip_adapter_core.errors import InputError

    of.buffalo_folder(str(tmp_path), detector="planted")
    files = M.find_face_models(str(tmp_path), where="x", check_hash=False)
    with pytest.raises(InputError, match="x: none of the onnxruntime providers 'NoSuchExecutionProvider'"):
        R.sessions(files, ("NoSuchExecutionProvider",), where="x")
    # an unavailable first choice falls back to the next one
    s = R.sessions(files, ("NoSuchExecutionProvider", "CPUExecutionProvider"))
    assert s.detector.get_providers() == ["CPUExecutionProvider"]


def _fresh(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_is_pure_and_lazy():
    out = _fresh("import json, sys; import ip_adapter_core.face as f; "
                 "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
                 "('onnxruntime', 'onnx', 'cv2', 'insightface', 'skimage', 'scipy'))))")
    assert out == []


def test_onnxruntime_missing(tmp_path):
    of.buffalo_folder(str(tmp_path), detector="planted")
    code = f"""
import json, sys
sys.modules['onnxruntime'] = None  # import onnxruntime -> ImportError
import ip_adapter_core.face as f
msgs = []
for call in (lambda: f.find_face_models([{str(tmp_path)!r}], where='IPA Face Model Loader'),
             lambda: f.available_providers()):
    try:
        call()
    except f.OnnxRuntimeMissingError as e:
        msgs.append(str(e))
print(json.dumps(msgs))
"""
    msgs = _fresh(code)
    assert msgs == ["IPA Face Model Loader: FaceID needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu "
                    "for CUDA).", "FaceID needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu for CUDA)."]


def test_runs_without_cv2(tmp_path):
    of.buffalo_folder(str(tmp_path), detector="planted")
    code = f"""
import json, sys
sys.modules['cv2'] = None  # import cv2 -> ImportError: the torch resize and warp run
import numpy as np
import ip_adapter_core.face as f
from ip_adapter_core.face import resample
from testkit.onnx_faces import blob_image
pipe = f.FacePipeline(f.find_face_models([{str(tmp_path)!r}], where='x', check_hash=False))
img = blob_image(640, 1280, [(704.5, 192.5)], 14)
faces, size = pipe.detect(img)
raw, normed = pipe.embedding(img, faces[0])
print(json.dumps([resample.resolve_backend('auto'), size, faces[0].bbox.tolist(), raw.shape[0],
                  pipe.crop(img, faces[0], 256).shape[0], 'cv2' in sys.modules and sys.modules['cv2'] is not None]))
"""
    assert _fresh(code) == ["torch", 640, [640.0, 128.0, 768.0, 256.0], 512, 256, False]
