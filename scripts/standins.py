"""python3 scripts/standins.py [--models-dir DIR] [--comfyui PATH] [--force]: the random-weight stand-in models
(testkit/standins.py)."""
import _bootstrap
from testkit.standins import main

if __name__ == "__main__":
    _bootstrap.run(main)
