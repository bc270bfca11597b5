"""The maintainers' real-file check (scripts/check_face_models.py) runs, here on the random-weight buffalo_l
stand-ins, and passes: it is the same comparison as the oracle tests, for files CI cannot have."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("insightface.app", reason="insightface (test-only oracle) is not importable")
pytest.importorskip("skimage.data", reason="the default photos come with scikit-image")
of = pytest.importorskip("testkit.onnx_faces", reason="the test kit builds ONNX files with the onnx package")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_check_face_models_passes_on_the_same_files(tmp_path):
    of.buffalo_folder(str(tmp_path), detector="random", seed=2)
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check_face_models.py"), "--root",
                          str(tmp_path), "astronaut"], capture_output=True, text=True, timeout=300, cwd="/")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "same faces and embeddings as insightface" in run.stdout
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("astronaut")]
    assert len(lines) == 2 and all(float(ln.split()[5]) >= 0.9999 for ln in lines), run.stdout
