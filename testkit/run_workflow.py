"""Run a workflow through a real, headless ComfyUI server with this pack loaded, and fetch its images.

The server itself: ``testkit.comfy_server.ComfyServer`` (start, queue, wait, images, stop).

CLI (the demo uses this):
    python3 scripts/run_workflow.py example_workflows/ipadapter_simple.json --out out/demo.png \\
        [--weight0-out out/demo_weight0.png] [--models auto|real|standins] [--set CLASS.input=VALUE ...]
        [--comfyui PATH] [--device cpu|auto] [--timeout S] [--keep-workdir]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

import numpy as np

from . import standins
from . import workflow_convert as wc
from .comfy_server import REFERENCE_IMAGE, ComfyServer
from .comfyui_env import REPO, find_comfyui


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, on the 0-255 scale."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def real_models_missing(comfyui: str, workflow: dict) -> list[str]:
    """The workflow's model files that are not in ComfyUI's own models/<folder>/ directories."""
    return [f"models/{folder}/{name}" for folder, name in wc.model_files(workflow)
            if not os.path.isfile(os.path.join(comfyui, "models", folder, name))]


def _parse_set(items: list[str]) -> list[tuple[str, str, Any]]:
    out = []
    for item in items:
        key, eq, raw = item.partition("=")
        cls, dot, name = key.partition(".")
        if not (eq and dot and cls and name):
            raise SystemExit(f"--set expects CLASS.input=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.append((cls, name, value))
    return out


def _save_png(image: np.ndarray, path: str) -> str:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)
    return os.path.abspath(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a workflow (UI or API format) through a headless ComfyUI server.")
    ap.add_argument("workflow", help="workflow .json (UI format as saved by the editor, or API format)")
    ap.add_argument("--out", default=os.path.join(REPO, "out", "result.png"), help="first image goes here")
    ap.add_argument("--weight0-out", help="also run with every IPA apply weight at 0, save that image here and "
                                          "print the mean abs pixel difference")
    ap.add_argument("--models", choices=("auto", "real", "standins"), default="auto",
                    help="auto: the real files if ComfyUI's models folders hold them all, else random stand-ins")
    ap.add_argument("--models-dir", default=standins.DEFAULT_MODELS_DIR, help="where the stand-ins live")
    ap.add_argument("--image", default=REFERENCE_IMAGE, help="copied into the input folder for LoadImage")
    ap.add_argument("--set", action="append", default=[], metavar="CLASS.input=VALUE",
                    help="set an input on every node of that class (JSON value), e.g. IPA_ApplySimple.weight=0.5")
    ap.add_argument("--comfyui", help="ComfyUI folder (default: COMFYUI_PATH, the enclosing ComfyUI, ~/ComfyUI)")
    ap.add_argument("--device", choices=("cpu", "auto"), default=None,
                    help="cpu: pass --cpu (default with stand-ins); auto: let ComfyUI pick (default with real models)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per prompt")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the scratch folder (log, outputs)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind the with-block, which stops the server

    comfyui, why = (args.comfyui, "--comfyui") if args.comfyui else find_comfyui()
    if comfyui is None:
        print(f"ERROR: {why}. Install ComfyUI at ~/ComfyUI or set COMFYUI_PATH.", file=sys.stderr)
        return 1
    with open(args.workflow) as f:
        workflow = json.load(f)
    missing = real_models_missing(comfyui, workflow)
    use_standins = args.models == "standins" or (args.models == "auto" and missing)
    if args.models == "real" and missing:
        print(f"ERROR: real models missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    if use_standins:
        print("=" * 100)
        print("Real models not found" + (f" (missing: {', '.join(missing)})" if missing else "") + ".")
        print(f"Using RANDOM-WEIGHT STAND-INS from {args.models_dir}: this checks the pipeline, the image is noise.")
        print("=" * 100, flush=True)
        standins.ensure(args.models_dir, comfyui=comfyui)
    else:
        print(f"Using the real models from {comfyui}/models: {', '.join(n for _, n in wc.model_files(workflow))}")
    device = args.device or ("cpu" if use_standins else "auto")

    server = ComfyServer(comfyui, models_dir=args.models_dir if use_standins else None, helper_nodes=bool(use_standins),
                         cpu=device == "cpu", require_checkout=False)
    server.keep_workdir = args.keep_workdir
    with server:
        print(f"the IPA nodes come from {server.pack_dir}"
              + ("" if os.path.realpath(server.pack_dir) == os.path.realpath(REPO) else
                 f" (the copy installed in ComfyUI, not {REPO})"))
        if args.image and os.path.isfile(args.image):
            server.copy_input(args.image)
        graph = server.convert(workflow)
        if use_standins:
            graph = wc.use_standins(graph)
        for cls, name, value in _parse_set(args.set):
            graph = wc.set_inputs(graph, cls, **{name: value})
        runs = [("result", graph, args.out)]
        if args.weight0_out:
            runs.append(("weight 0", wc.set_adapter_weight(graph, 0.0), args.weight0_out))
        images = []
        for label, g, out in runs:
            run = server.queue(g, timeout=args.timeout)
            if run.status != "success" or not run.images:
                print(f"ERROR: {label}: status {run.status}, {len(run.images)} images\n{run.error}", file=sys.stderr)
                print(f"--- server log tail ---\n{server.log_tail()}", file=sys.stderr)
                return 1
            print(f"{label}: {run.status} in {run.seconds:.1f} s -> {_save_png(run.images[0], out)}")
            images.append(run.images[0])
        if len(images) == 2:
            weights = sorted({n["inputs"].get("weight") for n in wc.nodes_of(graph, *wc.ADAPTER_CLASSES)}, key=str)
            print(f"mean abs pixel difference, IPA weight {'/'.join(map(str, weights))} vs weight 0: "
                  f"{mean_abs_diff(images[0], images[1]):.2f} (0-255 scale)")
        if args.keep_workdir:
            print(f"scratch folder kept: {server.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
