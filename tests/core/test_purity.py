"""ip_adapter_core never imports the host (ARCHITECTURE.md: "pure torch (+ safetensors, einops)").

Checked in a fresh interpreter, so modules imported by other tests in this process cannot mask or fake a result.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution")
HEAVY_OPTIONAL = ("diffusers", "transformers", "accelerate", "comfyui_ipa")

# run with python3 -c in the repo root: the interpreter puts the working folder first on sys.path
SCRIPT = r"""
import importlib, json, pkgutil, sys
import ip_adapter_core
subs = sorted(m.name for m in pkgutil.walk_packages(ip_adapter_core.__path__, "ip_adapter_core."))
for name in subs:
    importlib.import_module(name)
print(json.dumps({"submodules": subs, "modules": sorted(sys.modules),
                  "core_file": ip_adapter_core.__file__}))
"""


@functools.lru_cache(maxsize=1)
def _import_everything():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _loaded(modules, roots):
    return sorted(m for m in modules if m.split(".")[0] in roots)


def test_core_imports_no_comfyui_module():
    result = _import_everything()
    # the run really imported this checkout's core and all of its submodules
    assert os.path.dirname(result["core_file"]) == os.path.join(ROOT, "ip_adapter_core")
    expected = {f"ip_adapter_core.{m}" for m in
                ("attention", "checkpoint", "compat", "embeds", "errors", "projection", "sites", "spec")}
    assert expected <= set(result["submodules"])
    assert expected <= set(result["modules"])
    assert _loaded(result["modules"], HOST_MODULES) == []


def test_core_imports_no_heavy_optional_dependency():
    # diffusers / transformers are test-only oracles; the core must not need them at run time.
    assert _loaded(_import_everything()["modules"], HEAVY_OPTIONAL) == []


def test_detector_control():
    # Control for the check above: a module named like a host module is caught, a look-alike is not.
    assert _loaded(["comfy.model_management", "nodes", "comfy_extras.nodes_x", "comfyui_other", "nodesx"],
                   HOST_MODULES) == ["comfy.model_management", "comfy_extras.nodes_x", "nodes"]


NODE_SHARED = {"common", "folders", "patch"}  # what node modules may import from inside nodes/


def _node_imports(path: str) -> set[str]:
    import ast

    tree = ast.parse(open(path, encoding="utf-8").read())
    return {(node.module or "").split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1}


def test_node_modules_import_no_other_node_module():
    """The node classes read inputs, plan, encode and install (nodes/patch); shared definitions live in common.py and
    folders.py. A node module importing another node module's functions is the coupling ARCHITECTURE.md rules out."""
    folder = os.path.join(ROOT, "nodes")
    modules = {f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"}
    assert {"apply", "regional", "tiled", "common"} <= modules
    found = {m: _node_imports(os.path.join(folder, m + ".py")) & (modules - NODE_SHARED) for m in sorted(modules)}
    assert not any(found.values()), {m: sorted(v) for m, v in found.items() if v}
