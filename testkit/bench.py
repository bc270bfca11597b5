"""load_bench: a bench/ module for the host tests (to be replaced by importing bench as a package)."""
from __future__ import annotations

import os
import sys


def load_bench(name: str):
    """bench/<name>.py as a module (its measurement tools import no ComfyUI module), loaded once under
    ``ipa_bench_<name>`` so host tests count the way the benchmark counts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"ipa_bench_{name}", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", f"{name}.py"))
    if spec.name not in sys.modules:
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]
