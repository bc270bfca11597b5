"""The newcomer's path, end to end: a throwaway copy of a ComfyUI, this pack cloned into its custom_nodes/ under a
hyphenated name (as ComfyUI-Manager names folders after the repository), and the README's two commands run from
there with a fresh HOME (so no ~/ComfyUI is found: the enclosing ComfyUI is used).

    python3 scripts/fresh_layout.py [--comfyui PATH] [--name comfyui-ipa] [--keep] [-- pytest args for test.sh]

The ComfyUI copy is a real copy (a symlinked main.py would make Python resolve the original tree and hide a double
import), without model files, outputs or its own custom nodes. The pack is `git clone`d from this checkout, so it
is the committed HEAD. Checks: demo.sh exits 0, says the nodes come from the clone and prints a pixel difference
above 0; test.sh exits 0 with host tests run. Prints each command's wall time and exit code. Exit status 0 when all
hold; with no ComfyUI found it says why and exits 0 (nothing to check).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from .comfyui_env import REPO, comfyui_version, find_comfyui

# Never copied from the source tree: weights, outputs, user data, environments, other custom nodes.
SKIP_DIRS = {"custom_nodes", "output", "input", "user", "temp", ".venv", "venv", "__pycache__", ".git"}
SKIP_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pth", ".pt", ".gguf", ".onnx", ".sft")
# The test subset run from the clone: all core tests, plus host tests that load the pack through ComfyUI's own
# loader from the clone's folder (the layout that broke: pytest importing the hyphenated folder's __init__.py).
TEST_ARGS = ("tests/core", "tests/host/test_docs.py", "tests/host/test_nodes.py", "-q")


def copy_comfyui(src: str, dst: str) -> str:
    """A real copy of the ComfyUI tree ``src`` at ``dst`` without weights, outputs, environments or custom nodes;
    empty custom_nodes/ input/ output/ folders. Returns ``dst``."""
    def ignore(folder: str, names: list[str]) -> list[str]:
        top = os.path.abspath(folder) == os.path.abspath(src)
        return [n for n in names if (top and n in SKIP_DIRS) or n == "__pycache__" or n.endswith(SKIP_SUFFIXES)]

    shutil.copytree(src, dst, ignore=ignore, symlinks=True)
    for d in ("custom_nodes", "input", "output"):
        os.makedirs(os.path.join(dst, d), exist_ok=True)
    return dst


def clone_pack(dst: str) -> str:
    """``git clone`` this checkout (its committed HEAD) to ``dst``."""
    subprocess.run(["git", "clone", "--quiet", REPO, dst], check=True)
    return dst


def _run(cmd: list[str], cwd: str, env: dict, log_path: str) -> tuple[int, float, str]:
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log.write(proc.stdout)
    return proc.returncode, time.time() - t0, proc.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the README's two commands from a hyphenated custom_nodes clone.")
    ap.add_argument("--comfyui", help="the ComfyUI tree to copy (default: COMFYUI_PATH, ~/ComfyUI)")
    ap.add_argument("--name", default="comfyui-ipa", help="the clone's folder name (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("pytest_args", nargs="*", help=f"test.sh arguments (default: {' '.join(TEST_ARGS)})")
    args = ap.parse_args(argv)
    src, how = (args.comfyui, "--comfyui") if args.comfyui else find_comfyui()
    if src is None:
        print(f"fresh_layout: nothing to check: {how}")
        return 0
    work = tempfile.mkdtemp(prefix="ipa_fresh_")
    try:
        comfy = copy_comfyui(src, os.path.join(work, "ComfyUI"))
        pack = clone_pack(os.path.join(comfy, "custom_nodes", args.name))
        home = os.path.join(work, "home")
        os.makedirs(home)
        env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "COMFYUI_PATHS")}
        env["HOME"] = home
        print(f"fresh_layout: ComfyUI {comfyui_version(src)} copied to {comfy}; pack cloned to {pack}; HOME={home}")
        failures = []
        rc, secs, out = _run(["bash", "scripts/demo.sh"], pack, env, os.path.join(work, "demo.log"))
        diff = re.search(r"mean abs pixel difference.*?: ([0-9.]+)", out)
        source = re.search(r"the IPA nodes come from (\S+)", out)
        print(f"  bash scripts/demo.sh: exit {rc}, {secs:.1f} s, pixel difference "
              f"{diff.group(1) if diff else 'none'}, nodes from {source.group(1) if source else '?'}")
        if rc != 0 or not diff or float(diff.group(1)) <= 0 or not source or source.group(1) != pack:
            failures.append("demo")
            print(out[-4000:])
        test_args = args.pytest_args or list(TEST_ARGS)
        rc, secs, out = _run(["bash", "scripts/test.sh", *test_args], pack, env, os.path.join(work, "test.log"))
        counts = re.findall(r"^(?:=+ )?(\d+ passed.*?)(?: in [0-9.]+s.*)?$", out, re.M)
        host = re.search(r"^host tests \(.*?\): .*$", out, re.M)
        print(f"  bash scripts/test.sh {' '.join(test_args)}: exit {rc}, {secs:.1f} s, "
              f"{counts[-1] if counts else 'no counts'}; {host.group(0) if host else 'no host summary'}")
        if rc != 0 or not host or " 0 ran" in host.group(0):
            failures.append("tests")
            print(out[-6000:])
        print(f"fresh_layout: {'FAILED: ' + ', '.join(failures) if failures else 'both README commands passed'}")
        return 1 if failures else 0
    finally:
        if args.keep:
            print(f"fresh_layout: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
