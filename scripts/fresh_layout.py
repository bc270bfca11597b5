"""python3 scripts/fresh_layout.py [--comfyui PATH] [--name NAME] [--keep]: the README's two commands from a
hyphenated clone in a throwaway ComfyUI copy (testkit/fresh_layout.py)."""
import _bootstrap
from testkit.fresh_layout import main

if __name__ == "__main__":
    _bootstrap.run(main)
