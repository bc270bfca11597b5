"""Migration from ComfyUI_IPAdapter_plus workflows, no ComfyUI needed: the value tables (unified presets, weight
types, precise boosts), the target node set (optional targets, the frozen public API, the pack's registration, every
old node ID known and documented) and the command (python3 scripts/migrate_workflow.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from migration import migrate_workflow as mw
from testkit.old_workflows import ALL, by_id, simple_workflow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------- value mapping

@pytest.mark.parametrize("old,new", [
    ("LIGHT - SD1.5 only (low strength)", "light"), ("STANDARD (medium strength)", "standard"),
    ("VIT-G (medium strength)", "vit-G"), ("PLUS (high strength)", "plus"), ("PLUS FACE (portraits)", "plus face"),
    ("FULL FACE - SD1.5 only (portraits stronger)", "full face")])
def test_unified_presets(old, new):
    api = {"1": {"class_type": "IPAdapterUnifiedLoader", "inputs": {"model": ["0", 0], "preset": old}}}
    assert mw.migrate(api, available=ALL)[0]["1"]["inputs"]["preset"] == new


@pytest.mark.parametrize("node,extra,weight_type,status", [
    ("IPAdapter", {"weight_type": "standard"}, "linear", "converted"),
    ("IPAdapter", {"weight_type": "style transfer"}, "style transfer", "converted"),
    ("IPAdapterPreciseStyleTransfer", {"style_boost": 1.0}, "style transfer precise", "converted"),
    ("IPAdapterPreciseStyleTransfer", {"style_boost": 2.0}, "style transfer precise", "converted"),
    ("IPAdapterPreciseComposition", {"composition_boost": 1.0}, "composition precise", "converted"),
    ("IPAdapterPreciseComposition", {"composition_boost": 0.5}, "composition precise", "converted"),
    ("IPAdapterPreciseStyleTransfer", {"style_boost": 2.0, "weight": 0.0}, "style transfer precise", "approximate"),
    ("IPAdapterMS", {"weight_type": "linear", "layer_weights": "3:0.8, 6:0.35"}, "linear", "converted"),
])
def test_weight_type_mapping(node, extra, weight_type, status):
    inputs = {"model": ["0", 0], "ipadapter": ["9", 0], "image": ["8", 0], "clip_vision": ["7", 0], "weight": 1.0,
              "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only", **extra}
    new, entries = mw.migrate({"1": {"class_type": node, "inputs": inputs}}, available=ALL)
    assert new["1"]["inputs"]["weight_type"] == weight_type
    assert new["1"]["inputs"]["layer_weights"] == extra.get("layer_weights", "")
    assert entries[0].status == status


def test_optional_targets_only_when_available():
    api = {"1": {"class_type": "IPAdapterStyleComposition", "inputs": {
        "model": ["0", 0], "ipadapter": ["9", 0], "image_style": ["8", 0], "image_composition": ["7", 0],
        "weight_style": 1.0, "weight_composition": 0.5, "expand_style": True, "combine_embeds": "concat",
        "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only", "clip_vision": ["6", 0]}}}
    new, entries = mw.migrate(api, available=ALL - {"IPA_StyleComposition"})
    assert new == api and entries[0].status == "unmapped"
    new, entries = mw.migrate(api, available=ALL)
    assert new["1"]["class_type"] == "IPA_StyleComposition"
    assert new["1"]["inputs"] == {"model": ["0", 0], "ipadapter": ["9", 0], "clip_vision": ["6", 0],
                                  "image_style": ["8", 0], "image_composition": ["7", 0], "weight_style": 1.0,
                                  "weight_composition": 0.5, "expand_style": True, "start_at": 0.0, "end_at": 1.0,
                                  "embeds_scaling": "V only"}


def test_every_old_node_id_is_known():
    """Each node ID the old pack registers (incumbent-and-users.md §1) is either converted or explained."""
    old_ids = {
        "IPAdapter", "IPAdapterAdvanced", "IPAdapterBatch", "IPAdapterFaceID", "IPAdapterFaceIDKolors",
        "IPAAdapterFaceIDBatch", "IPAdapterTiled", "IPAdapterTiledBatch", "IPAdapterEmbeds", "IPAdapterEmbedsBatch",
        "IPAdapterStyleComposition", "IPAdapterStyleCompositionBatch", "IPAdapterMS", "IPAdapterClipVisionEnhancer",
        "IPAdapterClipVisionEnhancerBatch", "IPAdapterFromParams", "IPAdapterPreciseStyleTransfer",
        "IPAdapterPreciseStyleTransferBatch", "IPAdapterPreciseComposition", "IPAdapterPreciseCompositionBatch",
        "IPAdapterUnifiedLoader", "IPAdapterUnifiedLoaderFaceID", "IPAdapterModelLoader", "IPAdapterInsightFaceLoader",
        "IPAdapterUnifiedLoaderCommunity", "IPAdapterEncoder", "IPAdapterCombineEmbeds", "IPAdapterNoise",
        "PrepImageForClipVision", "IPAdapterSaveEmbeds", "IPAdapterLoadEmbeds", "IPAdapterWeights",
        "IPAdapterCombineWeights", "IPAdapterWeightsFromStrategy", "IPAdapterPromptScheduleFromWeightsStrategy",
        "IPAdapterRegionalConditioning", "IPAdapterCombineParams"}
    assert mw.OLD_TYPES == old_ids
    doc = open(os.path.join(ROOT, "docs", "MIGRATION.md")).read()
    missing = [t for t in sorted(old_ids) if f"`{t}`" not in doc]
    assert not missing, f"docs/MIGRATION.md does not mention {missing}"


def test_targets_agree_with_the_frozen_public_api():
    """The converter's view of this pack's nodes starts with exactly the frozen inputs of each node."""
    with open(os.path.join(ROOT, "tests", "host", "public_api.json")) as f:
        api = json.load(f)
    for node_id, target in mw.TARGETS.items():
        if node_id not in api:
            continue
        frozen = [n for n, _ in api[node_id]["required"] + api[node_id]["optional"]]
        ours = [n for n, _ in target.inputs]
        assert ours[:len(frozen)] == frozen, f"{node_id}: converter inputs {ours} vs public API {frozen}"
        kinds = {n: t for n, t in api[node_id]["required"] + api[node_id]["optional"]}
        for name, kind in target.inputs:
            if name in kinds:
                widget = kinds[name] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                assert (kind == mw.W) == widget, f"{node_id}.{name}: {kind} vs {kinds[name]}"
        assert [t for _, t in target.outputs] == api[node_id]["returns"], node_id


def test_available_nodes_reads_the_registration():
    assert {"IPA_ApplyAdvanced", "IPA_Encode", "IPA_ModelLoader"} <= mw.available_nodes()


# ---------------------------------------------------------------------------------------------- the command

def test_command_line(tmp_path):
    old = simple_workflow()
    faceid = {"id": 9, "type": "IPAdapterFaceIDKolors", "pos": [0, 0], "size": [1, 1], "mode": 0, "inputs": [],
              "outputs": [{"name": "MODEL", "type": "MODEL", "links": [], "slot_index": 0}],
              "widgets_values": [1.0]}
    old["nodes"].append(faceid)
    src, dst = tmp_path / "old.json", tmp_path / "new.json"
    src.write_text(json.dumps(old))
    script = os.path.join(ROOT, "scripts", "migrate_workflow.py")  # the documented command
    run = subprocess.run([sys.executable, script, str(src), "-o", str(dst)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert "1 unmapped" in run.stderr and "IPAdapterFaceIDKolors" in run.stderr and "Kolors" in run.stderr
    new = json.loads(dst.read_text())
    assert by_id(new)[3]["type"] == "IPA_ApplyAdvanced" and by_id(new)[9] == faceid
    strict = subprocess.run([sys.executable, script, str(src), "-o", str(dst), "--strict"], capture_output=True,
                            text=True, timeout=60)
    assert strict.returncode == 2


@pytest.mark.parametrize("node,boost_name,weight,boost,factor", [
    ("IPAdapterPreciseStyleTransfer", "style_boost", 0.8, 1.2, 1.5),
    ("IPAdapterPreciseComposition", "composition_boost", 0.5, 0.25, 0.5),
    ("IPAdapterPreciseStyleTransfer", "style_boost", 0.8, 0.8, 1.0),  # boost = weight: the default factor 1
])
def test_precise_boost_becomes_a_factor_on_weight(node, boost_name, weight, boost, factor):
    """The old absolute boost B is this pack's precise_boost = B / weight (weighting.site_weights)."""
    inputs = {"model": ["0", 0], "ipadapter": ["9", 0], "image": ["8", 0], "clip_vision": ["7", 0], "weight": weight,
              "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only", boost_name: boost}
    new, entries = mw.migrate({"1": {"class_type": node, "inputs": inputs}}, available=ALL)
    got = new["1"]["inputs"].get("precise_boost")
    assert got == pytest.approx(factor, rel=1e-12)
    assert entries[0].status == "converted"
