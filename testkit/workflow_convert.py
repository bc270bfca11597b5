"""Turn a UI-format ComfyUI workflow (what the editor saves and the template browser opens) into the API format
that POST /prompt takes, and swap real model files for the random stand-ins.

UI format: {"nodes": [{"id", "type", "mode", "inputs": [{"name", "link", "widget"?}], "widgets_values": [...]}],
            "links": [[link_id, src_id, src_slot, dst_id, dst_slot, type], ...]}
API format: {"<id>": {"class_type": ..., "inputs": {name: value | [src_id, src_slot]}}}

Widget values are matched to the node's widget inputs, in the order /object_info gives (input_order), skipping the
extra values the front end stores after some widgets (``control_after_generate`` after seeds, the upload button
after LoadImage's file). Front-end-only nodes (notes) are dropped; Reroute and PrimitiveNode are resolved; bypassed
nodes pass their inputs through by type; muted nodes are dropped.

CLI: python3 scripts/workflow_convert.py WORKFLOW.json --object-info info.json | --server http://127.0.0.1:8188
                                          [--standins] [--body] [-o api.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any, Iterable

from . import faceid_standins, flux_standins, standins

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
SEED_NAMES = {"seed", "noise_seed"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "PrimitiveString", "Label"}
MODE_MUTED, MODE_BYPASSED = 2, 4

# Loader class -> (input(s) holding the file(s), model folder). Used to list and swap model files; the file inputs are
# the node's first widgets, in this order.
LOADERS = {
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "CLIPVisionLoader": ("clip_name", "clip_vision"),
    "IPATest_CLIPVisionLoaderJSON": ("clip_name", "clip_vision"),
    "IPA_ModelLoader": ("ipadapter_file", "ipadapter"),
    "UNETLoader": ("unet_name", "diffusion_models"),
    "IPATest_UNETLoaderJSON": ("unet_name", "diffusion_models"),
    "DualCLIPLoader": (("clip_name1", "clip_name2"), "text_encoders"),
    "IPATest_DualCLIPLoaderJSON": (("clip_name1", "clip_name2"), "text_encoders"),
    "VAELoader": ("vae_name", "vae"),
}
ADAPTER_CLASSES = ("IPA_Apply", "IPA_ApplySimple", "IPA_ApplyAdvanced", "IPA_ApplyTiled", "IPA_RegionalApply",
                   "IPA_StyleComposition", "IPA_ApplyFaceID")
# The weight inputs of the apply nodes that have no single 'weight'.
WEIGHT_INPUTS = {"IPA_RegionalApply": ("weight_1", "weight_2", "weight_3", "weight_4"),
                 "IPA_StyleComposition": ("weight_style", "weight_composition")}


class ConversionError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------- UI -> API

def is_ui_format(workflow: dict) -> bool:
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def widget_specs(info: dict) -> list[tuple[str, bool]]:
    """(input name, has an extra stored value after it) for every widget input of a node, in widget order."""
    specs = []
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"].get(section, {}).get(name)
            if spec is None:
                continue
            kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            is_combo = isinstance(kind, list) or kind == "COMBO"
            if not (is_combo or kind in WIDGET_TYPES) or opts.get("forceInput"):
                continue
            control = opts.get("control_after_generate") or (kind == "INT" and name in SEED_NAMES)
            upload = any(k.endswith("_upload") and v for k, v in opts.items())
            specs.append((name, bool(control or upload)))
    return specs


def map_widgets(node: dict, info: dict) -> dict[str, Any]:
    """widgets_values -> {input name: value}."""
    values = node.get("widgets_values")
    if values is None:
        return {}
    specs = widget_specs(info)
    if isinstance(values, dict):
        return {name: values[name] for name, _ in specs if name in values}
    out: dict[str, Any] = {}
    i = 0
    for name, has_extra in specs:
        if i >= len(values):  # saved before the node had this widget: the editor gives it its default
            default = widget_default(info, name)
            if default is not None:
                out[name] = default
            continue
        out[name] = values[i]
        i += 1
        if has_extra and i < len(values) and _is_extra_value(values[i]):
            i += 1
    return out


def widget_default(info: dict, name: str) -> Any:
    """The value the editor gives a new widget: its "default", else a combo's first option (None if neither)."""
    for section in ("required", "optional"):
        spec = info["input"].get(section, {}).get(name)
        if spec is None:
            continue
        kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
        if "default" in opts:
            return opts["default"]
        options = kind if isinstance(kind, list) else opts.get("options") if kind == "COMBO" else None
        return options[0] if options else None
    return None


def _is_extra_value(value: Any) -> bool:
    """A control_after_generate word, or the upload button's stored value ("image", "video", ...)."""
    return isinstance(value, str) and (value in CONTROL_VALUES or value in {"image", "video", "audio", "upload"})


def to_api(workflow: dict, object_info: dict) -> dict[str, dict]:
    """Convert a UI-format workflow; an API-format one is returned unchanged (copied)."""
    if not is_ui_format(workflow):
        return copy.deepcopy(workflow)
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise ConversionError("workflows with subgraphs are not supported by this converter; export it with "
                              "'Export (API)' from the editor instead.")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {lk[0]: (lk[1], lk[2], lk[5] if len(lk) > 5 else None) for lk in workflow["links"]}

    def source(link_id: int) -> Any:
        """Follow a link through reroutes, primitives and bypassed nodes: [src_id, slot], a value, or None."""
        seen = set()
        while link_id is not None and link_id not in seen:
            seen.add(link_id)
            src_id, slot, ltype = links[link_id]
            src = nodes.get(src_id)
            if src is None or src.get("mode") == MODE_MUTED:
                return None
            if src["type"] == "Reroute":
                link_id = (src.get("inputs") or [{}])[0].get("link")
            elif src["type"].startswith("Primitive") and src["type"] not in object_info:
                return (src.get("widgets_values") or [None])[0]
            elif src.get("mode") == MODE_BYPASSED:
                out_type = ltype or src["outputs"][slot]["type"]
                link_id = next((i.get("link") for i in src.get("inputs", []) if i.get("type") == out_type), None)
            else:
                return [str(src_id), slot]
        return None

    api: dict[str, dict] = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if node.get("mode") in (MODE_MUTED, MODE_BYPASSED) or (ntype in FRONTEND_ONLY and ntype not in object_info):
            continue
        info = object_info.get(ntype)
        if info is None:
            raise ConversionError(f"node {node['id']} is a '{ntype}', which this server does not know "
                                  f"(a custom node pack is missing or failed to import).")
        inputs = map_widgets(node, info)
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            value = source(inp["link"])
            if value is not None:
                inputs[inp.get("widget", {}).get("name", inp["name"])] = value
        api[str(node["id"])] = {"class_type": ntype, "inputs": inputs, "_meta": {"title": node.get("title", ntype)}}
    return api


# ---------------------------------------------------------------------------------------------- editing API graphs

class Graph:
    """An API graph built in code, as clients do (Krita's ComfyWorkflow): ``add(class_type, **inputs)`` returns the
    new node's first output, ``[id, 0]``; ``[id, 1]`` etc. are its other outputs; ``root`` is the graph."""

    def __init__(self):
        self.root: dict[str, dict] = {}

    def add(self, class_type: str, **inputs):
        key = str(len(self.root) + 1)
        self.root[key] = {"class_type": class_type, "inputs": inputs}
        return [key, 0]


def nodes_of(api: dict, *class_types: str) -> list[dict]:
    return [n for n in api.values() if n["class_type"] in class_types]


def set_inputs(api: dict, class_types: Iterable[str] | str, **values: Any) -> dict:
    """Return a copy with ``values`` set on every node of the given class(es)."""
    class_types = (class_types,) if isinstance(class_types, str) else tuple(class_types)
    out = copy.deepcopy(api)
    hit = nodes_of(out, *class_types)
    if not hit:
        raise ConversionError(f"no {'/'.join(class_types)} node in the graph")
    for node in hit:
        node["inputs"].update(values)
    return out


def set_adapter_weight(api: dict, weight: float) -> dict:
    """Copy with every weight of every IPA apply node set (0 = the adapter has no effect); a regional node's
    weight_2..4 only where the graph sets them."""
    out = copy.deepcopy(api)
    hit = nodes_of(out, *ADAPTER_CLASSES)
    if not hit:
        raise ConversionError(f"no {'/'.join(ADAPTER_CLASSES)} node in the graph")
    for node in hit:
        names = WEIGHT_INPUTS.get(node["class_type"], ("weight",))
        node["inputs"].update({n: weight for n in names if n == names[0] or n in node["inputs"]})
    return out


def _file_inputs(class_type: str) -> tuple[tuple[str, ...], str]:
    keys, folder = LOADERS[class_type]
    return ((keys,) if isinstance(keys, str) else keys), folder


def model_files(workflow: dict) -> list[tuple[str, str]]:
    """(folder, file name) of every model file the workflow's loaders use (UI or API format)."""
    found = []
    if is_ui_format(workflow):
        for node in workflow["nodes"]:
            if node["type"] in LOADERS and node.get("mode") not in (MODE_MUTED, MODE_BYPASSED):
                keys, folder = _file_inputs(node["type"])
                values = node.get("widgets_values") or []
                found += [(folder, v) for v in values[: len(keys)]]
    else:
        for node in workflow.values():
            if node["class_type"] in LOADERS:
                keys, folder = _file_inputs(node["class_type"])
                found += [(folder, node["inputs"].get(k)) for k in keys]
    return found


def is_flux(api: dict) -> bool:
    """An API graph that loads a Flux model: a diffusion-model loader (UNETLoader) or a DualCLIPLoader of type flux."""
    return any(n["class_type"] in ("UNETLoader", "IPATest_UNETLoaderJSON")
               or (n["class_type"] in ("DualCLIPLoader", "IPATest_DualCLIPLoaderJSON")
                   and n["inputs"].get("type") == "flux") for n in api.values())


def standin_adapter(name: str, *, flux: bool = False) -> str:
    """The stand-in for an adapter file name of a workflow. A Flux adapter (any adapter of a Flux graph, or a name
    with "flux" or "xlabs"): InstantX when the name says "instantx" or is a ``.bin`` (InstantX publishes its Flux
    adapter as ip-adapter.bin; XLabs publishes .safetensors only), else XLabs. Otherwise FaceID by the published
    names, plus, else the base one."""
    low = name.lower()
    if flux or "flux" in low or "xlabs" in low:
        if "instantx" in low or low.endswith(".bin"):
            return standins.ADAPTER_INSTANTX
        return standins.ADAPTER_XLABS
    if "faceid" in low:
        return faceid_standins.adapter_for(name)
    return standins.ADAPTER_PLUS if "plus" in low else standins.ADAPTER


def standin_clip_vision(name: str) -> str:
    """The stand-in for a CLIP vision file name of a workflow: the tiny SigLIP (with its pooling head) for a name
    with "siglip", else the tiny CLIP vision."""
    return standins.SIGLIP if "siglip" in name.lower() else standins.CLIP_VISION


def use_standins(api: dict, *, size: int = 64, max_steps: int = 3, helper_clip_vision: bool = True) -> dict:
    """Copy of ``api`` that runs on the random stand-ins (testkit/standins.py): model names swapped (plus adapters
    to the plus stand-in; the old pack's IPAdapterModelLoader and IPAdapterInsightFaceLoader too), CLIPVisionLoader
    replaced by the test helper node that reads the .json config, latents shrunk to ``size`` px and samplers cut to
    ``max_steps`` steps. A Flux graph (:func:`is_flux`) gets the Flux stand-ins (testkit/flux_standins.py):
    UNETLoader and DualCLIPLoader replaced by the test helper nodes that read their .json configs (same inputs),
    VAELoader's file and every adapter swapped (the InstantX stand-in for an InstantX-looking name, else the XLabs
    one: :func:`standin_adapter`). A CLIP vision file named like SigLIP ("siglip") becomes the tiny SigLIP
    stand-in, which holds its pooling head (:func:`standin_clip_vision`)."""
    out = copy.deepcopy(api)
    flux = is_flux(out)
    for node in out.values():
        ct, inp = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple":
            inp["ckpt_name"] = standins.CHECKPOINT
        elif ct == "CLIPVisionLoader":
            inp["clip_name"] = standin_clip_vision(str(inp.get("clip_name", "")))
            if helper_clip_vision:
                node["class_type"] = "IPATest_CLIPVisionLoaderJSON"
        elif ct in ("IPA_ModelLoader", "IPAdapterModelLoader"):  # this pack's loader, the old pack's ID
            inp["ipadapter_file"] = standin_adapter(str(inp.get("ipadapter_file", "")), flux=flux)
        elif ct in ("UNETLoader", "IPATest_UNETLoaderJSON") and flux:
            node["class_type"], inp["unet_name"] = "IPATest_UNETLoaderJSON", flux_standins.UNET
        elif ct in ("DualCLIPLoader", "IPATest_DualCLIPLoaderJSON") and flux:
            node["class_type"] = "IPATest_DualCLIPLoaderJSON"
            inp["clip_name1"], inp["clip_name2"] = flux_standins.CLIP_L, flux_standins.T5XXL
        elif ct == "VAELoader" and flux:
            inp["vae_name"] = flux_standins.VAE
        elif ct in ("IPA_FaceModelLoader", "IPAdapterInsightFaceLoader"):
            inp["model_name"] = faceid_standins.FACE_MODELS
        elif ct in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inp["width"] = inp["height"] = size
        if "steps" in inp and isinstance(inp["steps"], int):
            inp["steps"] = min(inp["steps"], max_steps)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Convert a UI-format workflow to the API format.")
    ap.add_argument("workflow")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--object-info", help="a saved GET /object_info response")
    src.add_argument("--server", help="a running server, e.g. http://127.0.0.1:8188")
    ap.add_argument("--standins", action="store_true", help="swap model files for the random stand-ins")
    ap.add_argument("--body", action="store_true",
                    help='write the whole POST /prompt request body, {"prompt": <graph>}, for curl -d @FILE')
    ap.add_argument("-o", "--output", help="write here (default: stdout)")
    args = ap.parse_args(argv)
    with open(args.workflow) as f:
        workflow = json.load(f)
    if args.object_info:
        with open(args.object_info) as f:
            info = json.load(f)
    else:
        import requests

        info = requests.get(args.server.rstrip("/") + "/object_info", timeout=60).json()
    api = to_api(workflow, info)
    if args.standins:
        api = use_standins(api)
        if any(n["class_type"] == "IPATest_CLIPVisionLoaderJSON" for n in api.values()):
            print("workflow_convert: the stand-in CLIP vision replaced CLIPVisionLoader with the TEST-ONLY node "
                  "IPATest_CLIPVisionLoaderJSON (core CLIPVisionLoader only knows full-size encoders): the server "
                  "needs tests/host/helper_nodes in its custom_nodes, or use a workflow with IPA Unified Loader "
                  "(example_workflows/ipadapter_unified_loader.json), which loads the stand-in without it.",
                  file=sys.stderr)
        if any(n["class_type"] in ("IPATest_UNETLoaderJSON", "IPATest_DualCLIPLoaderJSON") for n in api.values()):
            print("workflow_convert: the Flux stand-ins replaced UNETLoader / DualCLIPLoader with the TEST-ONLY nodes "
                  "IPATest_UNETLoaderJSON / IPATest_DualCLIPLoaderJSON (ComfyUI's detection only knows the "
                  "full-size Flux): the server needs tests/host/helper_nodes in its custom_nodes.", file=sys.stderr)
    text = json.dumps({"prompt": api} if args.body else api, indent=1)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
