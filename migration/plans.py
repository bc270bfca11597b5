"""One conversion plan per ComfyUI_IPAdapter_plus node (or the reason there is none), from the tables in
schemas.py; regional_plans folds the old pack's regional-conditioning chains into IPA Regional Apply. Pure
functions; migrate_workflow.py applies the plans to the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .schemas import (COMPAT, FACEID_PRESETS, INTERPOLATIONS, OLD_CLIP_CROP, SIMPLE_WEIGHT_TYPES, UNIFIED_PRESETS,
                      UNSUPPORTED)

# ---------------------------------------------------------------------------------------------- conversion plans

@dataclass(frozen=True)
class Src:
    """Whatever feeds the old graph's output ``slot`` of node ``node`` (mapped when that node is converted)."""
    node: Any
    slot: int


@dataclass(frozen=True)
class New:
    """Output ``slot`` of the node ``key`` of the same plan ("main" = the replacement of the old node)."""
    key: str
    slot: int


@dataclass(frozen=True)
class ClipOf:
    """The CLIP vision that an old unified loader bundled in the IPADAPTER output ``src`` (None if not one)."""
    src: Src


@dataclass
class Plan:
    nodes: dict[str, tuple[str, dict[str, Any]]]  # key -> (new type, inputs); "main" keeps the old id
    outputs: dict[int, tuple[str, int] | str]  # old output slot -> (key, new slot) or why it has none
    companions: dict[int, tuple[str, int]] = field(default_factory=dict)  # old IPADAPTER slot -> its CLIP_VISION
    notes: list[str] = field(default_factory=list)  # what changes the result; empty = the old node's result
    info: list[str] = field(default_factory=list)  # what changes without changing the result


@dataclass
class Old:
    id: Any
    type: str
    values: dict[str, Any]
    links: dict[str, Src]


@dataclass
class Entry:
    node: Any
    old_type: str
    status: str  # "converted" | "approximate" | "unmapped"
    new_type: str | None
    notes: list[str]

    def line(self) -> str:
        head = f"node {self.node} {self.old_type}"
        head += f" -> {self.new_type}" if self.new_type else ""
        return f"[{self.status}] {head}" + "".join(f"\n    - {n}" for n in self.notes)


def _clip(links: dict[str, Src]) -> Src | ClipOf | None:
    """The old node's clip_vision link, else the CLIP vision bundled with its unified-loader IPADAPTER."""
    if "clip_vision" in links:
        return links["clip_vision"]
    return ClipOf(links["ipadapter"]) if "ipadapter" in links else None


def _apply_plan(old: Old, *, weight_type: str, unfold: bool = False, notes: list[str] | None = None,
                layer_weights: str = "", precise_boost: float = 1.0) -> Plan:
    """An old apply node -> IPA_ApplyAdvanced in compatibility mode, with an IPA_Encode (and IPA_CombineEmbeds) in
    front when the old node's encode-side options need one."""
    v, ln = old.values, old.links
    notes = list(notes or [])
    clip = _clip(ln)
    combine = v.get("combine_embeds", "concat")
    batch_size = v.get("encode_batch_size", 0) or 0
    nodes: dict[str, tuple[str, dict[str, Any]]] = {}
    main = {"model": ln.get("model"), "ipadapter": ln.get("ipadapter"), "weight": ln.get("weight", v.get("weight")),
            "weight_type": weight_type, "start_at": ln.get("start_at", v.get("start_at")),
            "end_at": ln.get("end_at", v.get("end_at")), "embeds_scaling": v.get("embeds_scaling", "V only"),
            "attn_mask": ln.get("attn_mask"), "layer_weights": layer_weights, "unfold_batch": unfold,
            "compatibility": COMPAT, "precise_boost": precise_boost}
    if "pos_embed" in ln:
        main["embeds"] = ln["pos_embed"]
    elif "image_negative" in ln or (combine != "concat" and not unfold) or batch_size:
        nodes["encode"] = ("IPA_Encode", {"ipadapter": ln.get("ipadapter"), "clip_vision": clip,
                                          "image": ln.get("image"), "encode_batch_size": batch_size,
                                          "uncond": "black image", "negative_image": ln.get("image_negative")})
        main["embeds"] = New("encode", 0)
        if combine != "concat" and not unfold:
            nodes["combine"] = ("IPA_CombineEmbeds", {"embeds": New("encode", 0), "method": combine})
            main["embeds"] = New("combine", 0)
            notes.append(f"combine_embeds '{combine}' now acts on the projected image tokens (IPA Combine Embeds); "
                         "the old pack combined the CLIP embeddings before the projection: close, not equal")
    else:
        main["image"], main["clip_vision"] = ln.get("image"), clip
    if "weight" in ln and isinstance(ln["weight"], Src):
        notes.append("'weight' comes from a link: a per-frame weight list must become frame_weights (text)")
    nodes["main"] = ("IPA_ApplyAdvanced", main)
    return Plan(nodes, {0: ("main", 0)}, notes=notes)


def _boost_factor(old: Old, name: str, default: float) -> tuple[float, list[str]]:
    """The old precise node's absolute boost B as this pack's precise_boost = B / weight, and notes where that is not
    exact (the weight comes from a link, or is 0 with B != 0: the boost then falls back to the weight)."""
    boost, weight = old.values.get(name, default), old.values.get("weight")
    if isinstance(old.links.get("weight"), Src) or not isinstance(weight, (int, float)) or \
            not isinstance(boost, (int, float)):
        return 1.0, [f"{name} {boost} with a linked weight: precise_boost left at 1 (= weight); set it to "
                     f"{name} / weight by hand"]
    if weight == 0:
        return 1.0, ([] if boost == 0 else [f"{name} {boost} at weight 0: precise_boost is a factor on weight, so the "
                                            "boosted layers get 0 here"])
    return boost / weight, []


def _faceid_plan(old: Old, loaders: dict[Any, dict[str, Any]]) -> Plan:
    """IPAdapterFaceID (+ its Batch) -> IPA_ApplyFaceID. The face models: the old node's insightface link, else an
    IPA Load Face Models (with the provider of the FaceID unified loader its ipadapter comes from). The LoRA: the old
    unified FaceID loader put the separate _lora file on its MODEL at lora_strength; here the LoRA inside the
    adapter file goes on at that strength. Without that loader the old graph loads the LoRA itself (a LoRA loader),
    so lora_strength is 0 (not applied twice)."""
    v, ln = old.values, old.links
    notes, info = [], []
    nodes: dict[str, tuple[str, dict[str, Any]]] = {}
    src = ln.get("ipadapter")
    loader = loaders.get(src.node) if isinstance(src, Src) else None
    if "insightface" in ln:
        faces = ln["insightface"]
    else:
        nodes["faces"] = ("IPA_FaceModelLoader", {"model_name": "buffalo_l",
                                                  "provider": (loader or {}).get("provider", "CPU")})
        faces = New("faces", 0)
        info.append("face models from an added IPA Load Face Models (buffalo_l)")
    if loader is not None:
        lora = loader.get("lora_strength", 0.6)
        info.append(f"lora_strength {lora} from the unified FaceID loader: the LoRA inside the adapter file")
    else:
        lora = 0.0
        info.append("lora_strength 0: without the unified FaceID loader the old graph loads the FaceID LoRA itself")
    if v.get("combine_embeds", "concat") != "concat":
        notes.append(f"combine_embeds {v.get('combine_embeds')!r} dropped (IPA Apply FaceID concatenates the faces; "
                     "use IPA Encode Face + IPA Combine Embeds)")
    if "image_negative" in ln:
        notes.append("'image_negative' dropped (FaceID's uncond is the zero face embedding)")
    notes.append("no compatibility setting on IPA Apply FaceID: this pack's middle-block term (the old pack's "
                 "never ran)")
    main = {"model": ln.get("model"), "ipadapter": src, "face_models": faces, "image": ln.get("image"),
            "clip_vision": _clip(ln), "attn_mask": ln.get("attn_mask"), "lora_strength": lora,
            "unfold_batch": old.type == "IPAAdapterFaceIDBatch", "clip_crop_colors": OLD_CLIP_CROP}
    for name in ("weight", "weight_faceidv2", "weight_type", "start_at", "end_at", "embeds_scaling"):
        main[name] = ln.get(name, v.get(name))
    nodes["main"] = ("IPA_ApplyFaceID", main)
    return Plan(nodes, {0: ("main", 0), 1: ("main", 1)}, notes=notes, info=info)


def plan_node(old: Old, available: set[str], encoders: dict[Any, bool],
              faceid_loaders: dict[Any, dict[str, Any]] | None = None) -> Plan | str:
    """The conversion of one old node, or the reason it cannot be converted. ``encoders``: old node id -> True for
    the IPAdapterEncoder nodes that are converted; ``faceid_loaders``: old IPAdapterUnifiedLoaderFaceID id -> its
    values (lora_strength, provider)."""
    t, v, ln = old.type, old.values, old.links
    if t in UNSUPPORTED:
        return (UNSUPPORTED[t])
    if t in ("IPAdapterFaceID", "IPAAdapterFaceIDBatch"):
        if "IPA_ApplyFaceID" not in available:
            return "IPA_ApplyFaceID is not available in this version of the pack"
        return _faceid_plan(old, faceid_loaders or {})
    if t == "IPAdapterInsightFaceLoader":
        if "IPA_FaceModelLoader" not in available:
            return "IPA_FaceModelLoader is not available in this version of the pack"
        notes = [] if v.get("model_name", "buffalo_l") == "buffalo_l" else [
            f"model_name {v.get('model_name')!r}: FaceID adapters were trained with buffalo_l"]
        return Plan({"main": ("IPA_FaceModelLoader", {"model_name": v.get("model_name", "buffalo_l"),
                                                      "provider": v.get("provider", "CPU")})}, {0: ("main", 0)},
                    notes=notes, info=["the same buffalo_l files, run with onnxruntime (no insightface package)"])
    if t == "IPAdapterUnifiedLoaderFaceID":
        preset = FACEID_PRESETS.get(v.get("preset"))
        if preset is None or "IPA_UnifiedLoader" not in available:
            return f"preset {v.get('preset')!r} has no counterpart"
        info = ["the LoRA moves to the FaceID apply node (the one inside the adapter file, at this lora_strength); "
                "MODEL is passed through"]
        return Plan({"main": ("IPA_UnifiedLoader", {"model": ln.get("model"), "preset": preset})},
                    {0: ("main", 0), 1: ("main", 1)}, companions={1: ("main", 2)}, info=info)
    if t in ("IPAdapterUnifiedLoader", "IPAdapterUnifiedLoaderCommunity"):
        preset = UNIFIED_PRESETS.get(v.get("preset"))
        if preset is None:
            return (f"preset {v.get('preset')!r} has no counterpart (Kolors is not supported)")
        info = ["input 'ipadapter' (chaining loaders) dropped: IPA Unified Loader caches files across prompts"] \
            if "ipadapter" in ln else []
        return Plan({"main": ("IPA_UnifiedLoader", {"model": ln.get("model"), "preset": preset})},
                    {0: ("main", 0), 1: ("main", 1)}, companions={1: ("main", 2)}, info=info)
    if t == "IPAdapterModelLoader":
        return Plan({"main": ("IPA_ModelLoader", {"ipadapter_file": v.get("ipadapter_file")})}, {0: ("main", 0)})
    if t == "IPAdapter":
        wt = v.get("weight_type", "standard")
        return _apply_plan(old, weight_type="style transfer" if wt.startswith("style")
                           else SIMPLE_WEIGHT_TYPES.get(wt, "linear"))
    if t in ("IPAdapterAdvanced", "IPAdapterBatch", "IPAdapterEmbeds", "IPAdapterEmbedsBatch"):
        plan = _apply_plan(old, weight_type=v.get("weight_type", "linear"), unfold=t.endswith("Batch"))
        neg = ln.get("neg_embed")
        if neg is not None:
            pos = ln.get("pos_embed")
            same = pos is not None and neg == Src(pos.node, 1) and pos.slot == 0 and encoders.get(pos.node, False)
            (plan.info if same else plan.notes).append(
                "'neg_embed' dropped: the uncond travels inside the embeds (IPA Encode Image's uncond / "
                "negative_image)" + ("" if same else "; this neg_embed did not come from the same encoder"))
        return plan
    if t == "IPAdapterMS":
        plan = _apply_plan(old, weight_type=v.get("weight_type", "linear"), layer_weights=v.get("layer_weights") or "")
        if "insightface" in ln:
            plan.info.append("'insightface' dropped (FaceID only)")
        return plan
    if t.startswith("IPAdapterPreciseStyleTransfer"):
        factor, notes = _boost_factor(old, "style_boost", 1.0)
        return _apply_plan(old, weight_type="style transfer precise", unfold=t.endswith("Batch"), notes=notes,
                           precise_boost=factor)
    if t.startswith("IPAdapterPreciseComposition"):
        if v.get("composition_boost", 0.0) == 0:  # the old map with boost 0 is exactly the composition layers
            return _apply_plan(old, weight_type="composition", unfold=t.endswith("Batch"))
        factor, notes = _boost_factor(old, "composition_boost", 0.0)
        return _apply_plan(old, weight_type="composition precise", unfold=t.endswith("Batch"), notes=notes,
                           precise_boost=factor)
    if t == "IPAdapterEncoder":
        notes = []
        if v.get("weight", 1.0) != 1.0:
            notes.append(f"weight {v.get('weight')} dropped (the old pack scaled the CLIP embedding; set the weight "
                         "on the apply node)")
        if "mask" in ln:
            notes.append("'mask' dropped (no masked encoding; use attn_mask on the apply node)")
        clip = _clip(ln)
        return Plan({"main": ("IPA_Encode", {"ipadapter": ln.get("ipadapter"), "clip_vision": clip,
                                             "image": ln.get("image"), "uncond": "black image"})},
                    {0: ("main", 0), 1: "neg_embed: the uncond is inside IPA Encode Image's IPA_EMBEDS"}, notes=notes)
    if t == "IPAdapterCombineEmbeds":
        extra = [n for n in ("embed2", "embed3", "embed4", "embed5") if n in ln]
        if extra:
            return (f"{', '.join(extra)} connected: IPA Combine Embeds combines the images of one embeds "
                             "batch; batch the images before IPA Encode Image instead")
        return Plan({"main": ("IPA_CombineEmbeds", {"embeds": ln.get("embed1"), "method": v.get("method", "concat")})},
                    {0: ("main", 0)})
    if t == "IPAdapterNoise":
        notes = ["a different noise pattern (seeded by 'seed'), same type and strength"]
        if v.get("blur"):
            notes.append(f"blur {v.get('blur')} dropped")
        return Plan({"main": ("IPA_NoiseImage", {"type": v.get("type"), "strength": v.get("strength"),
                                                 "image": ln.get("image_optional")})}, {0: ("main", 0)}, notes=notes)
    if t == "PrepImageForClipVision":
        notes = ["resize and sharpening are this pack's own (pad uses CLIP mean grey, not black): pixels differ "
                 "slightly"]
        return Plan({"main": ("IPA_PrepImage", {
            "image": ln.get("image"), "crop": v.get("crop_position", "center"),
            "interpolation": INTERPOLATIONS.get(v.get("interpolation"), "bicubic"),
            "sharpening": v.get("sharpening", 0.0)})}, {0: ("main", 0)}, notes=notes)
    if t == "IPAdapterSaveEmbeds":
        return Plan({"main": ("IPA_SaveEmbeds", {"embeds": ln.get("embeds"),
                                                 "filename_prefix": v.get("filename_prefix")})}, {},
                    info=["saves .safetensors under output/ipadapter_embeds/ (not .ipadpt)"])
    if t == "IPAdapterStyleComposition":
        if "IPA_StyleComposition" not in available:
            return ("IPA_StyleComposition is not available in this version of the pack")
        notes = ["no compatibility setting on IPA Style & Composition: this pack's uncond and middle-block term"]
        if v.get("combine_embeds", "concat") != "concat":
            notes.append(f"combine_embeds '{v.get('combine_embeds')}' dropped (several images per input are "
                         "concatenated; no effect with one image each)")
        clip = _clip(ln)
        inputs = {k: ln.get(k, v.get(k)) for k in ("model", "ipadapter", "image_style", "image_composition",
                                                  "weight_style", "weight_composition", "expand_style", "start_at",
                                                  "end_at", "embeds_scaling", "attn_mask")}
        inputs.update(clip_vision=clip, negative_image=ln.get("image_negative"))
        return Plan({"main": ("IPA_StyleComposition", inputs)}, {0: ("main", 0)}, notes=notes)
    if t == "IPAdapterTiled":
        if "IPA_ApplyTiled" not in available:
            return ("IPA_ApplyTiled is not available in this version of the pack")
        notes = ["tiles cover the whole image (no crop), so tiles and masks differ from the old pack's; this pack's "
                 "uncond and middle-block term (no compatibility setting on IPA Apply (tiled))"]
        for name, default in (("weight_type", "linear"), ("embeds_scaling", "V only"), ("combine_embeds", "concat")):
            if v.get(name, default) != default:
                notes.append(f"{name} {v.get(name)!r} dropped (IPA Apply (tiled) has none)")
        if "image_negative" in ln:
            notes.append("'image_negative' dropped")
        clip = _clip(ln)
        inputs = {k: ln.get(k, v.get(k)) for k in ("model", "ipadapter", "image", "weight", "start_at", "end_at",
                                                  "attn_mask", "sharpening")}
        inputs.update(clip_vision=clip, interpolation="lanczos")  # the old pack resized tiles with PIL's Lanczos
        return Plan({"main": ("IPA_ApplyTiled", inputs)}, {0: ("main", 0), 1: ("main", 1), 2: ("main", 2)},
                    notes=notes)
    raise AssertionError(t)


class _NotRegional(Exception):
    pass


def regional_plans(olds: dict[Any, Old], consumers: dict[tuple[Any, int], list[Any]],
                    available: set[str]) -> dict[Any, Plan | str]:
    """IPAdapter from Params fed by Regional Conditioning nodes (through Combine Params) -> one IPA_RegionalApply;
    each Regional Conditioning's masked prompts -> core ConditioningSetMask nodes (what it did to them)."""
    out: dict[Any, Plan | str] = {}
    for fid, f in olds.items():
        if f.type != "IPAdapterFromParams":
            continue
        regions: list[Old] = []
        members: list[Any] = []

        def walk(src: Src | None) -> None:
            o = olds.get(src.node) if src is not None else None
            if o is None or o.type not in ("IPAdapterRegionalConditioning", "IPAdapterCombineParams"):
                raise _NotRegional("'ipadapter_params' does not come from IPAdapter Regional Conditioning / Combine "
                                   "Params nodes")
            members.append(o.id)
            if o.type == "IPAdapterRegionalConditioning":
                regions.append(o)
            for k in ("params_1", "params_2", "params_3", "params_4", "params_5"):
                if k in o.links:
                    walk(o.links[k])

        try:
            if "IPA_RegionalApply" not in available:
                raise _NotRegional("IPA_RegionalApply is not available in this version of the pack")
            walk(f.links.get("ipadapter_params"))
            if not 1 <= len(regions) <= 4 or len(set(members)) != len(members):
                raise _NotRegional(f"{len(regions)} regions (IPA Regional Apply takes 1 to 4, each once)")
            for m in members:
                if any(c not in members and c != fid for c in consumers.get((m, 0), [])):
                    raise _NotRegional(f"the params of node {m} are also used elsewhere")
            if any("mask" not in r.links for r in regions):
                raise _NotRegional("a region has no mask (IPA Regional Apply needs one per region)")
            ranges = {(r.values.get("start_at", 0.0), r.values.get("end_at", 1.0)) for r in regions}
            if len(ranges) != 1 or any(k in r.links for r in regions for k in ("start_at", "end_at")):
                raise _NotRegional("the regions have different start_at / end_at (IPA Regional Apply has one range)")
        except _NotRegional as e:
            out[fid] = str(e)
            continue
        (start, end), = ranges
        inputs: dict[str, Any] = {"model": f.links.get("model"), "ipadapter": f.links.get("ipadapter"),
                                  "clip_vision": _clip(f.links), "start_at": start, "end_at": end}
        notes = ["no compatibility setting on IPA Regional Apply: this pack's uncond and middle-block term"]
        for i, r in enumerate(regions, 1):
            inputs.update({f"image_{i}": r.links.get("image"), f"mask_{i}": r.links.get("mask"),
                           f"weight_{i}": r.links.get("image_weight", r.values.get("image_weight", 1.0))})
            if r.values.get("weight_type", "linear") != "linear":
                notes.append(f"region {i} (node {r.id}): weight_type {r.values.get('weight_type')!r} dropped")
        for name, default in (("combine_embeds", "concat"), ("embeds_scaling", "V only")):
            if f.values.get(name, default) != default:
                notes.append(f"{name} {f.values.get(name)!r} dropped")
        if "image_negative" in f.links:
            notes.append("'image_negative' dropped")
        out[fid] = Plan({"main": ("IPA_RegionalApply", inputs)}, {0: ("main", 0)}, notes=notes)
        for m in members:
            o = olds[m]
            if o.type == "IPAdapterCombineParams":
                out[m] = Plan({}, {}, info=[f"merged into IPA Regional Apply (node {fid})"])
                continue
            nodes, outputs = {}, {0: f"merged into IPA Regional Apply (node {fid})"}
            for slot, name in enumerate(("positive", "negative"), 1):
                if name in o.links:
                    key = "main" if "main" not in nodes else "neg"
                    nodes[key] = ("ConditioningSetMask", {
                        "conditioning": o.links[name], "mask": o.links.get("mask"),
                        "strength": o.links.get("prompt_weight", o.values.get("prompt_weight", 1.0)),
                        "set_cond_area": "default"})
                    outputs[slot] = (key, 0)
                else:
                    outputs[slot] = f"no '{name}' was connected"
            out[m] = Plan(nodes, outputs, info=[f"image part merged into IPA Regional Apply (node {fid}); its "
                                                "prompts masked by core Conditioning (Set Mask)"])
    return out
