"""The one set-up line of every command in scripts/: ``import _bootstrap``.

A Python file run as a script has only its own folder (here scripts/) on sys.path. Importing this module puts the
checkout's root on sys.path too: the folder that holds testkit/, bench/ and migration/, found from this file's
location, whatever that folder is called (a clone in ComfyUI/custom_nodes/comfyui-ipa is not importable by name,
its packages are). The commands then import their code from those packages and call ``run(main)``.

Nothing else in the repository edits sys.path, except testkit.comfyui_env.import_comfyui (ComfyUI's own folder).
"""
from __future__ import annotations

import os
import sys
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)  # after scripts/ itself, before site-packages


def run(main: Callable[[], int | None]) -> None:
    """Run a command's ``main()`` and exit with its status."""
    sys.exit(main())
