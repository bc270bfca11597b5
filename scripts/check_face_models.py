"""python3 scripts/check_face_models.py --root DIR [photos]: the face pipeline vs insightface on real files
(testkit/face_check.py)."""
import _bootstrap
from testkit.face_check import main

if __name__ == "__main__":
    _bootstrap.run(main)
