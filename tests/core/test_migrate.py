"""Migration from ComfyUI_IPAdapter_plus workflows (migration/migrate_workflow.py), no ComfyUI needed.

The old workflows are written here by hand in the old pack's saved formats (UI: nodes + links with the old nodes'
socket lists and widgets_values in their INPUT_TYPES order; API: class_type + inputs); the expected results are
the mapping of docs/MIGRATION.md, written out by hand.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "scripts")
MIGRATION = os.path.join(ROOT, "migration")
for _p in (SCRIPTS, MIGRATION):
    if _p not in sys.path:
        sys.path.insert(0, _p)
import migrate_workflow as mw  # noqa: E402
import workflow_convert as wc  # noqa: E402

ALL = {"IPA_UnifiedLoader", "IPA_ModelLoader", "IPA_Encode", "IPA_ApplyAdvanced", "IPA_CombineEmbeds",
       "IPA_NoiseImage", "IPA_PrepImage", "IPA_SaveEmbeds", "IPA_StyleComposition", "IPA_ApplyTiled"}
COMPAT = "ComfyUI_IPAdapter_plus"
# IPA_ApplyAdvanced's widgets, in order, at their defaults (the brief's interface of the node).
ADV_DEFAULTS = [1.0, "linear", 0.0, 1.0, "V only", "", 1.0, "constant", "", False, "", "this pack", 1.0]


# ---------------------------------------------------------------------------------------------- a tiny UI builder

class UI:
    """Builds a UI-format workflow the way the editor saves it."""

    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, nid, ntype, inputs=(), outputs=(), widgets=None, **extra):
        node = {"id": nid, "type": ntype, "pos": [nid * 100, nid * 10], "size": [315, 120], "flags": {},
                "order": nid, "mode": 0, "properties": {"Node name for S&R": ntype},
                "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                **extra}
        if widgets is not None:
            node["widgets_values"] = list(widgets)
        self.nodes.append(node)
        return node

    def link(self, src, src_slot, dst, dst_input):
        by_id = {n["id"]: n for n in self.nodes}
        slot = [i["name"] for i in by_id[dst]["inputs"]].index(dst_input)
        lid = len(self.links) + 1
        ltype = by_id[src]["outputs"][src_slot]["type"]
        self.links.append([lid, src, src_slot, dst, slot, ltype])
        by_id[dst]["inputs"][slot]["link"] = lid
        by_id[src]["outputs"][src_slot]["links"].append(lid)
        return lid

    def workflow(self):
        return {"last_node_id": max(n["id"] for n in self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 1}},
                "version": 0.4}


def checkpoint(ui, nid=1):
    return ui.node(nid, "CheckpointLoaderSimple", outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
                   widgets=["v1-5-pruned-emaonly.safetensors"])


def load_image(ui, nid, name="ref.png"):
    return ui.node(nid, "LoadImage", outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], widgets=[name, "image"])


def ksampler(ui, nid):
    return ui.node(nid, "KSampler", inputs=[("model", "MODEL"), ("positive", "CONDITIONING"),
                                            ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
                   outputs=[("LATENT", "LATENT")], widgets=[7, "fixed", 20, 6.5, "euler", "normal", 1.0])


def unified(ui, nid, preset="PLUS (high strength)"):
    return ui.node(nid, "IPAdapterUnifiedLoader", inputs=[("model", "MODEL"), ("ipadapter", "IPADAPTER")],
                   outputs=[("model", "MODEL"), ("ipadapter", "IPADAPTER")], widgets=[preset])


OLD_ADVANCED_IN = [("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("image_negative", "IMAGE"),
                   ("attn_mask", "MASK"), ("clip_vision", "CLIP_VISION")]


def simple_workflow():
    """checkpoint -> unified loader (PLUS) -> IPAdapter (simple) -> KSampler, image from LoadImage."""
    ui = UI()
    checkpoint(ui)
    unified(ui, 2)
    ui.node(3, "IPAdapter", inputs=[("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE"),
                                    ("attn_mask", "MASK")],
            outputs=[("MODEL", "MODEL")], widgets=[0.8, 0.1, 0.9, "prompt is more important"], title="my adapter")
    load_image(ui, 4)
    ksampler(ui, 5)
    ui.link(1, 0, 2, "model")
    ui.link(2, 0, 3, "model")
    ui.link(2, 1, 3, "ipadapter")
    ui.link(4, 0, 3, "image")
    ui.link(3, 0, 5, "model")
    return ui.workflow()


def by_id(wf):
    return {n["id"]: n for n in wf["nodes"]}


def input_source(wf, nid, name):
    """(source node, source slot, link type) of a UI node's input, checked against the links table."""
    node = by_id(wf)[nid]
    (inp,) = [i for i in node["inputs"] if i["name"] == name]
    if inp["link"] is None:
        return None
    (lk,) = [lk for lk in wf["links"] if lk[0] == inp["link"]]
    assert lk[3] == nid and node["inputs"][lk[4]] is inp, f"link {lk} does not land on {nid}.{name}"
    assert inp["link"] in by_id(wf)[lk[1]]["outputs"][lk[2]]["links"], f"link {lk} missing from its source"
    return lk[1], lk[2], lk[5]


def entry(entries, nid):
    (e,) = [e for e in entries if e.node == nid]
    return e


def object_info():
    """A /object_info for the target nodes as the brief defines them (what the server will return)."""
    def info(required, optional=()):
        spec = {n: [t] for n, t in (*required, *optional)}
        return {"input": {"required": {n: spec[n] for n, _ in required}, "optional": {n: spec[n] for n, _ in optional}},
                "input_order": {"required": [n for n, _ in required], "optional": [n for n, _ in optional]}}
    return {
        "IPA_UnifiedLoader": info([("model", "MODEL"), ("preset", "COMBO")],
                                  [("ipadapter_file", "COMBO"), ("clip_vision_file", "COMBO")]),
        "IPA_ApplyAdvanced": info(
            [("model", "MODEL"), ("ipadapter", "IPA_ADAPTER"), ("weight", "FLOAT"), ("weight_type", "COMBO"),
             ("start_at", "FLOAT"), ("end_at", "FLOAT"), ("embeds_scaling", "COMBO")],
            [("image", "IMAGE"), ("clip_vision", "CLIP_VISION"), ("embeds", "IPA_EMBEDS"), ("layer_weights", "STRING"),
             ("weight_composition", "FLOAT"), ("attn_mask", "MASK"), ("weight_schedule", "COMBO"),
             ("schedule_values", "STRING"), ("unfold_batch", "BOOLEAN"), ("frame_weights", "STRING"),
             ("compatibility", "COMBO"), ("precise_boost", "FLOAT")]),
        "IPA_Encode": info([("ipadapter", "IPA_ADAPTER"), ("clip_vision", "CLIP_VISION"), ("image", "IMAGE")],
                           [("encode_batch_size", "INT"), ("uncond", "COMBO"), ("negative_image", "IMAGE")]),
        "IPA_CombineEmbeds": info([("embeds", "IPA_EMBEDS"), ("method", "COMBO")], [("image_weights", "STRING")]),
        "CheckpointLoaderSimple": info([("ckpt_name", "COMBO")]),
        "LoadImage": {"input": {"required": {"image": [["ref.png"], {"image_upload": True}]}}},
        "KSampler": info([("model", "MODEL"), ("seed", "INT"), ("steps", "INT"), ("cfg", "FLOAT"),
                          ("sampler_name", "COMBO"), ("scheduler", "COMBO"), ("positive", "CONDITIONING"),
                          ("negative", "CONDITIONING"), ("latent_image", "LATENT"), ("denoise", "FLOAT")]),
    }


# ---------------------------------------------------------------------------------------------- UI format

def test_simple_ui_workflow_is_rewired_and_widgets_mapped():
    old = simple_workflow()
    before = copy.deepcopy(old)
    new, entries = mw.migrate(old, available=ALL)
    assert old == before, "the input workflow was changed"
    nodes = by_id(new)
    assert nodes[2]["type"] == "IPA_UnifiedLoader" and nodes[2]["widgets_values"] == ["plus", "auto", "auto"]
    apply = nodes[3]
    assert apply["type"] == "IPA_ApplyAdvanced"
    # old widget order: weight, start_at, end_at, weight_type ("prompt is more important" = the old "ease out")
    assert apply["widgets_values"] == [0.8, "ease out", 0.1, 0.9, "V only", "", 1.0, "constant", "", False, "",
                                       COMPAT, 1.0]
    assert (apply["pos"], apply["size"], apply["title"]) == ([300, 30], [315, 120], "my adapter")
    assert input_source(new, 3, "model") == (2, 0, "MODEL")
    assert input_source(new, 3, "ipadapter") == (2, 1, "IPA_ADAPTER")
    assert input_source(new, 3, "clip_vision") == (2, 2, "CLIP_VISION"), "the bundled CLIP vision became a link"
    assert input_source(new, 3, "image") == (4, 0, "IMAGE")
    assert input_source(new, 5, "model") == (3, 0, "MODEL")
    assert input_source(new, 2, "model") == (1, 0, "MODEL")
    for nid in (1, 4, 5):
        assert nodes[nid] == by_id(before)[nid], f"non-IPAdapter node {nid} changed"
    assert [(e.node, e.status) for e in entries] == [(2, "converted"), (3, "converted")]
    ids = [lk[0] for lk in new["links"]]
    assert len(ids) == len(set(ids)) and new["last_link_id"] >= max(ids)


def test_converted_ui_workflow_gives_the_expected_api_graph():
    """The rewritten widgets_values and links read back through the editor's rules (scripts/workflow_convert.py)."""
    new, _ = mw.migrate(simple_workflow(), available=ALL)
    api = wc.to_api(new, object_info())
    assert api["3"]["class_type"] == "IPA_ApplyAdvanced"
    assert api["3"]["inputs"] == {
        "model": ["2", 0], "ipadapter": ["2", 1], "clip_vision": ["2", 2], "image": ["4", 0], "weight": 0.8,
        "weight_type": "ease out", "start_at": 0.1, "end_at": 0.9, "embeds_scaling": "V only", "layer_weights": "",
        "weight_composition": 1.0, "weight_schedule": "constant", "schedule_values": "", "unfold_batch": False,
        "frame_weights": "", "compatibility": COMPAT, "precise_boost": 1.0}
    assert api["2"]["inputs"] == {"model": ["1", 0], "preset": "plus", "ipadapter_file": "auto",
                                  "clip_vision_file": "auto"}
    assert api["5"]["inputs"]["model"] == ["3", 0]


def test_migration_is_idempotent():
    once, _ = mw.migrate(simple_workflow(), available=ALL)
    twice, entries = mw.migrate(once, available=ALL)
    assert twice == once and entries == []


def test_workflow_without_old_nodes_is_returned_unchanged():
    ui = UI()
    checkpoint(ui)
    ksampler(ui, 2)
    ui.link(1, 0, 2, "model")
    wf = ui.workflow()
    new, entries = mw.migrate(wf, available=ALL)
    assert new == wf and entries == []


def test_reroute_between_loader_and_apply():
    """The IPADAPTER travels through a Reroute: the reroute gets the new type, the CLIP vision a direct link."""
    ui = UI()
    checkpoint(ui)
    unified(ui, 2, "STANDARD (medium strength)")
    ui.node(6, "Reroute", inputs=[("", "*")], outputs=[("", "IPADAPTER")])
    ui.node(3, "IPAdapterAdvanced", inputs=OLD_ADVANCED_IN, outputs=[("MODEL", "MODEL")],
            widgets=[1.2, "style transfer", "concat", 0.0, 0.5, "K+V w/ C penalty"])
    load_image(ui, 4)
    ui.link(1, 0, 2, "model")
    ui.link(2, 0, 3, "model")
    ui.link(2, 1, 6, "")
    ui.link(6, 0, 3, "ipadapter")
    ui.link(4, 0, 3, "image")
    new, entries = mw.migrate(ui.workflow(), available=ALL)
    nodes = by_id(new)
    assert nodes[3]["widgets_values"][:5] == [1.2, "style transfer", 0.0, 0.5, "K+V w/ C penalty"]
    assert nodes[3]["widgets_values"][-2:] == [COMPAT, 1.0]
    assert input_source(new, 3, "ipadapter") == (6, 0, "IPA_ADAPTER")
    assert input_source(new, 6, "") == (2, 1, "IPA_ADAPTER")
    assert nodes[6]["outputs"][0]["type"] == "IPA_ADAPTER"
    assert input_source(new, 3, "clip_vision") == (2, 2, "CLIP_VISION")
    assert nodes[2]["widgets_values"][0] == "standard"
    assert entry(entries, 3).status == "converted"


def test_negative_image_and_combine_insert_encode_and_combine_nodes():
    ui = UI()
    checkpoint(ui)
    ui.node(2, "IPAdapterModelLoader", outputs=[("IPADAPTER", "IPADAPTER")], widgets=["ip-adapter_sd15.safetensors"])
    ui.node(7, "CLIPVisionLoader", outputs=[("CLIP_VISION", "CLIP_VISION")], widgets=["vit-h.safetensors"])
    ui.node(3, "IPAdapterAdvanced", inputs=OLD_ADVANCED_IN, outputs=[("MODEL", "MODEL")],
            widgets=[0.7, "linear", "average", 0.0, 1.0, "V only"])
    load_image(ui, 4)
    load_image(ui, 8, "noise.png")
    ui.link(1, 0, 3, "model")
    ui.link(2, 0, 3, "ipadapter")
    ui.link(4, 0, 3, "image")
    ui.link(8, 0, 3, "image_negative")
    ui.link(7, 0, 3, "clip_vision")
    old = ui.workflow()
    new, entries = mw.migrate(old, available=ALL)
    nodes = by_id(new)
    assert nodes[2]["type"] == "IPA_ModelLoader" and nodes[2]["widgets_values"] == ["ip-adapter_sd15.safetensors"]
    encode, combine = nodes[9], nodes[10]  # new ids after the highest old id
    assert encode["type"] == "IPA_Encode" and combine["type"] == "IPA_CombineEmbeds"
    assert encode["widgets_values"] == [0, "black image"]
    assert combine["widgets_values"] == ["average", ""]
    assert input_source(new, 9, "ipadapter") == (2, 0, "IPA_ADAPTER")
    assert input_source(new, 9, "clip_vision") == (7, 0, "CLIP_VISION")
    assert input_source(new, 9, "image") == (4, 0, "IMAGE")
    assert input_source(new, 9, "negative_image") == (8, 0, "IMAGE")
    assert input_source(new, 10, "embeds") == (9, 0, "IPA_EMBEDS")
    assert input_source(new, 3, "embeds") == (10, 0, "IPA_EMBEDS")
    assert input_source(new, 3, "image") is None and input_source(new, 3, "clip_vision") is None
    assert nodes[3]["widgets_values"][:5] == [0.7, "linear", 0.0, 1.0, "V only"]
    assert new["last_node_id"] == 10
    e = entry(entries, 3)
    assert e.status == "approximate" and "IPA_Encode" in e.new_type and any("average" in n for n in e.notes)
    # the images' outputs keep their link ids: LoadImage nodes are byte-for-byte the same
    assert nodes[4] == by_id(old)[4] and nodes[8] == by_id(old)[8]


def test_encoder_and_embeds_become_encode_and_apply_with_embeds():
    ui = UI()
    checkpoint(ui)
    unified(ui, 2)
    ui.node(3, "IPAdapterEncoder", inputs=[("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("mask", "MASK"),
                                           ("clip_vision", "CLIP_VISION")],
            outputs=[("pos_embed", "EMBEDS"), ("neg_embed", "EMBEDS")], widgets=[1.0])
    ui.node(5, "IPAdapterEmbeds", inputs=[("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("pos_embed", "EMBEDS"),
                                          ("neg_embed", "EMBEDS"), ("attn_mask", "MASK"),
                                          ("clip_vision", "CLIP_VISION")],
            outputs=[("MODEL", "MODEL")], widgets=[0.9, "ease in", 0.0, 0.8, "K+V"])
    load_image(ui, 4)
    ui.link(1, 0, 2, "model")
    ui.link(2, 1, 3, "ipadapter")
    ui.link(4, 0, 3, "image")
    ui.link(2, 0, 5, "model")
    ui.link(2, 1, 5, "ipadapter")
    ui.link(3, 0, 5, "pos_embed")
    ui.link(3, 1, 5, "neg_embed")
    new, entries = mw.migrate(ui.workflow(), available=ALL)
    nodes = by_id(new)
    assert nodes[3]["type"] == "IPA_Encode" and nodes[3]["widgets_values"] == [0, "black image"]
    assert input_source(new, 3, "clip_vision") == (2, 2, "CLIP_VISION")
    assert input_source(new, 5, "embeds") == (3, 0, "IPA_EMBEDS")
    assert input_source(new, 5, "image") is None and input_source(new, 5, "clip_vision") is None
    assert nodes[5]["widgets_values"][:5] == [0.9, "ease in", 0.0, 0.8, "K+V"]
    assert not any(lk[1] == 3 and lk[2] == 1 for lk in new["links"]), "neg_embed link kept"
    assert len(nodes[3]["outputs"]) == 1
    assert entry(entries, 5).status == "converted" and entry(entries, 3).status == "converted"


def test_unmapped_nodes_are_reported_and_left_in_place():
    ui = UI()
    checkpoint(ui)
    ui.node(2, "IPAdapterUnifiedLoaderFaceID", inputs=[("model", "MODEL"), ("ipadapter", "IPADAPTER")],
            outputs=[("MODEL", "MODEL"), ("ipadapter", "IPADAPTER")], widgets=["FACEID", 0.6, "CPU"])
    ui.node(3, "IPAdapterFaceID", inputs=OLD_ADVANCED_IN + [("insightface", "INSIGHTFACE")],
            outputs=[("MODEL", "MODEL"), ("face_image", "IMAGE")],
            widgets=[1.0, 1.0, "linear", "concat", 0.0, 1.0, "V only"])
    ui.node(4, "SomeOtherPackNode", inputs=[("model", "MODEL")], outputs=[("MODEL", "MODEL")], widgets=[3])
    ui.link(1, 0, 2, "model")
    ui.link(2, 0, 3, "model")
    ui.link(2, 1, 3, "ipadapter")
    ui.link(3, 0, 4, "model")
    old = ui.workflow()
    new, entries = mw.migrate(old, available=ALL)
    assert new == old
    assert [(e.node, e.status) for e in entries] == [(2, "unmapped"), (3, "unmapped")]
    assert all("FaceID" in e.notes[0] for e in entries)
    text = mw.report_text(entries)
    assert text.startswith("0 converted, 0 approximate, 2 unmapped") and "IPAdapterFaceID" in text


def test_dropped_output_into_an_unconverted_node_is_reported():
    ui = UI()
    ui.node(2, "IPAdapterModelLoader", outputs=[("IPADAPTER", "IPADAPTER")], widgets=["a.safetensors"])
    ui.node(3, "IPAdapterEncoder", inputs=[("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("mask", "MASK"),
                                           ("clip_vision", "CLIP_VISION")],
            outputs=[("pos_embed", "EMBEDS"), ("neg_embed", "EMBEDS")], widgets=[0.5])
    ui.node(4, "ForeignEmbedsUser", inputs=[("embeds", "EMBEDS")], outputs=[])
    ui.link(2, 0, 3, "ipadapter")
    ui.link(3, 1, 4, "embeds")
    new, entries = mw.migrate(ui.workflow(), available=ALL)
    assert by_id(new)[4]["inputs"][0]["link"] is None
    assert not any(lk[3] == 4 for lk in new["links"])
    e = entry(entries, 3)
    assert e.status == "approximate"
    assert any("weight 0.5" in n for n in e.notes) and any("node 4" in n for n in e.notes)


def test_widget_converted_to_input_keeps_its_link():
    """A primitive drives the old weight: the link lands on the new node's weight widget input."""
    ui = UI()
    ui.node(2, "IPAdapterModelLoader", outputs=[("IPADAPTER", "IPADAPTER")], widgets=["a.safetensors"])
    ui.node(6, "PrimitiveNode", outputs=[("FLOAT", "FLOAT")], widgets=[0.35, "fixed"])
    node = ui.node(3, "IPAdapterBatch", inputs=OLD_ADVANCED_IN + [("weight", "FLOAT")], outputs=[("MODEL", "MODEL")],
                   widgets=[0.9, "linear", 0.0, 1.0, "V only", 0])
    node["inputs"][-1]["widget"] = {"name": "weight"}
    ui.link(2, 0, 3, "ipadapter")
    ui.link(6, 0, 3, "weight")
    new, _ = mw.migrate(ui.workflow(), available=ALL)
    apply = by_id(new)[3]
    (weight,) = [i for i in apply["inputs"] if i["name"] == "weight"]
    assert weight["widget"] == {"name": "weight"} and input_source(new, 3, "weight") == (6, 0, "FLOAT")
    assert apply["widgets_values"][0] == 0.9 and apply["widgets_values"][9] is True  # unfold_batch for *Batch


# ---------------------------------------------------------------------------------------------- API format

def test_api_workflow():
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "2": {"class_type": "IPAdapterUnifiedLoader",
              "inputs": {"model": ["1", 0], "preset": "VIT-G (medium strength)"}},
        "3": {"class_type": "IPAdapterPreciseComposition", "inputs": {
            "model": ["2", 0], "ipadapter": ["2", 1], "image": ["4", 0], "weight": 1.0, "composition_boost": 0.0,
            "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": 1}},
        "6": {"class_type": "IPAdapterNoise", "inputs": {"type": "gaussian", "strength": 0.6, "blur": 0}},
    }
    before = copy.deepcopy(api)
    new, entries = mw.migrate(api, available=ALL)
    assert api == before
    assert new["2"]["class_type"] == "IPA_UnifiedLoader" and new["2"]["inputs"]["preset"] == "vit-G"
    expected = dict(zip(["weight", "weight_type", "start_at", "end_at", "embeds_scaling", "layer_weights",
                         "weight_composition", "weight_schedule", "schedule_values", "unfold_batch", "frame_weights",
                         "compatibility", "precise_boost"], ADV_DEFAULTS))
    # composition_boost 0: the old 'composition precise' map is exactly the composition layers
    expected.update(weight_type="composition", compatibility=COMPAT, model=["2", 0], ipadapter=["2", 1],
                    image=["4", 0], clip_vision=["2", 2])
    assert new["3"] == {"class_type": "IPA_ApplyAdvanced", "inputs": expected,
                        "_meta": {"title": "IPA Apply (advanced)"}}
    assert new["5"] == before["5"] and new["4"] == before["4"] and new["1"] == before["1"]
    assert new["6"]["inputs"] == {"width": 224, "height": 224, "batch": 1, "seed": 0, "type": "gaussian",
                                  "strength": 0.6}
    assert entry(entries, "6").status == "approximate"
    again, more = mw.migrate(new, available=ALL)
    assert again == new and more == []


def test_api_inserted_nodes_get_fresh_ids():
    api = {"10": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": "a.safetensors"}},
           "11": {"class_type": "IPAdapterBatch", "inputs": {
               "model": ["12", 0], "ipadapter": ["10", 0], "image": ["13", 0], "clip_vision": ["14", 0],
               "weight": 1.0, "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only",
               "encode_batch_size": 8}}}
    new, _ = mw.migrate(api, available=ALL)
    assert new["15"]["class_type"] == "IPA_Encode"
    assert new["15"]["inputs"] == {"ipadapter": ["10", 0], "clip_vision": ["14", 0], "image": ["13", 0],
                                   "encode_batch_size": 8, "uncond": "black image"}
    assert new["11"]["inputs"]["embeds"] == ["15", 0] and new["11"]["inputs"]["unfold_batch"] is True
    assert "image" not in new["11"]["inputs"]


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
    faceid = {"id": 9, "type": "IPAdapterInsightFaceLoader", "pos": [0, 0], "size": [1, 1], "mode": 0, "inputs": [],
              "outputs": [{"name": "INSIGHTFACE", "type": "INSIGHTFACE", "links": [], "slot_index": 0}],
              "widgets_values": ["CPU", "buffalo_l"]}
    old["nodes"].append(faceid)
    src, dst = tmp_path / "old.json", tmp_path / "new.json"
    src.write_text(json.dumps(old))
    script = os.path.join(MIGRATION, "migrate_workflow.py")
    run = subprocess.run([sys.executable, script, str(src), "-o", str(dst)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert "1 unmapped" in run.stderr and "IPAdapterInsightFaceLoader" in run.stderr
    new = json.loads(dst.read_text())
    assert by_id(new)[3]["type"] == "IPA_ApplyAdvanced" and by_id(new)[9] == faceid
    strict = subprocess.run([sys.executable, script, str(src), "-o", str(dst), "--strict"], capture_output=True,
                            text=True, timeout=60)
    assert strict.returncode == 2


# ---------------------------------------------------------------------------------------------- regional params

def regional_workflow(second_mask=True):
    """Two IPAdapter Regional Conditioning nodes -> Combine Params -> IPAdapter from Params; the regions' masked
    prompts are combined by core ConditioningCombine nodes."""
    ui = UI()
    checkpoint(ui)
    unified(ui, 2)
    load_image(ui, 3, "left.png")
    load_image(ui, 4, "right.png")
    for nid in (5, 6):
        ui.node(nid, "SolidMask", outputs=[("MASK", "MASK")], widgets=[1.0, 512, 512])
    for nid, text in ((7, "a cat"), (8, "a dog"), (9, "blurry")):
        ui.node(nid, "CLIPTextEncode", inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")],
                widgets=[text])
    regional_in = [("image", "IMAGE"), ("mask", "MASK"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")]
    regional_out = [("IPADAPTER_PARAMS", "IPADAPTER_PARAMS"), ("POSITIVE", "CONDITIONING"),
                    ("NEGATIVE", "CONDITIONING")]
    ui.node(10, "IPAdapterRegionalConditioning", inputs=regional_in, outputs=regional_out,
            widgets=[0.8, 1.5, "linear", 0.0, 0.9])
    ui.node(11, "IPAdapterRegionalConditioning", inputs=regional_in, outputs=regional_out,
            widgets=[0.6, 1.5, "style transfer", 0.0, 0.9])
    ui.node(12, "IPAdapterCombineParams", inputs=[(f"params_{i}", "IPADAPTER_PARAMS") for i in range(1, 6)],
            outputs=[("IPADAPTER_PARAMS", "IPADAPTER_PARAMS")])
    ui.node(13, "IPAdapterFromParams", inputs=[("model", "MODEL"), ("ipadapter", "IPADAPTER"),
                                               ("ipadapter_params", "IPADAPTER_PARAMS"), ("image_negative", "IMAGE"),
                                               ("clip_vision", "CLIP_VISION")],
            outputs=[("MODEL", "MODEL")], widgets=["concat", "V only"])
    ui.node(14, "ConditioningCombine", inputs=[("conditioning_1", "CONDITIONING"), ("conditioning_2", "CONDITIONING")],
            outputs=[("CONDITIONING", "CONDITIONING")])
    ksampler(ui, 15)
    ui.link(1, 0, 2, "model")
    for src, dst in ((3, 10), (4, 11)):
        ui.link(src, 0, dst, "image")
    ui.link(5, 0, 10, "mask")
    if second_mask:
        ui.link(6, 0, 11, "mask")
    ui.link(7, 0, 10, "positive")
    ui.link(9, 0, 10, "negative")
    ui.link(8, 0, 11, "positive")
    ui.link(10, 0, 12, "params_1")
    ui.link(11, 0, 12, "params_2")
    ui.link(2, 0, 13, "model")
    ui.link(2, 1, 13, "ipadapter")
    ui.link(12, 0, 13, "ipadapter_params")
    ui.link(10, 1, 14, "conditioning_1")
    ui.link(11, 1, 14, "conditioning_2")
    ui.link(13, 0, 15, "model")
    ui.link(14, 0, 15, "positive")
    ui.link(10, 2, 15, "negative")
    return ui.workflow()


def test_regional_params_become_one_regional_apply_and_masked_prompts():
    old = regional_workflow()
    new, entries = mw.migrate(old, available=ALL | {"IPA_RegionalApply"})
    nodes = by_id(new)
    apply = nodes[13]
    assert apply["type"] == "IPA_RegionalApply"
    assert input_source(new, 13, "image_1") == (3, 0, "IMAGE") and input_source(new, 13, "mask_1") == (5, 0, "MASK")
    assert input_source(new, 13, "image_2") == (4, 0, "IMAGE") and input_source(new, 13, "mask_2") == (6, 0, "MASK")
    assert input_source(new, 13, "clip_vision") == (2, 2, "CLIP_VISION")
    assert input_source(new, 13, "model") == (2, 0, "MODEL") and input_source(new, 15, "model") == (13, 0, "MODEL")
    # widgets in the node's order: weight_1, start_at, end_at, weight_2, weight_3, weight_4, prompt_strength
    assert apply["widgets_values"] == [0.8, 0.0, 0.9, 0.6, 1.0, 1.0, 1.0]
    assert 12 not in nodes, "Combine Params should be gone"
    # each region's prompts: core Conditioning (Set Mask) with the region's mask and prompt_weight
    assert nodes[10]["type"] == nodes[11]["type"] == "ConditioningSetMask"
    assert nodes[10]["widgets_values"] == [1.5, "default"]
    assert input_source(new, 10, "conditioning") == (7, 0, "CONDITIONING")
    assert input_source(new, 10, "mask") == (5, 0, "MASK")
    assert input_source(new, 14, "conditioning_1") == (10, 0, "CONDITIONING")
    assert input_source(new, 14, "conditioning_2") == (11, 0, "CONDITIONING")
    (neg,) = [n for n in new["nodes"] if n["id"] > 15]  # the negative prompt of region 1 gets its own Set Mask
    assert neg["type"] == "ConditioningSetMask" and input_source(new, neg["id"], "conditioning") == (9, 0,
                                                                                                     "CONDITIONING")
    assert input_source(new, 15, "negative") == (neg["id"], 0, "CONDITIONING")
    e = entry(entries, 13)
    assert e.status == "approximate" and any("style transfer" in n for n in e.notes)
    assert entry(entries, 12).new_type == "(removed)"
    again, more = mw.migrate(new, available=ALL | {"IPA_RegionalApply"})
    assert again == new and more == []


def test_regional_without_a_mask_stays_unmapped():
    old = regional_workflow(second_mask=False)
    new, entries = mw.migrate(old, available=ALL | {"IPA_RegionalApply"})
    old_nodes = {n["id"]: n for n in old["nodes"] if n["id"] != 2}  # the unified loader is converted alone
    assert {n["id"]: n for n in new["nodes"] if n["id"] != 2} == old_nodes
    assert any("node 13 (IPAdapterFromParams)" in n for n in entry(entries, 2).notes), "the new type is reported"
    assert {e.node: e.status for e in entries if e.node >= 10} == {10: "unmapped", 11: "unmapped", 12: "unmapped",
                                                                   13: "unmapped"}
    assert "mask" in entry(entries, 13).notes[0]


def test_neg_embed_from_another_encoder_is_approximate():
    """The old 'what not to see' wiring: a second encoder's pos_embed as neg_embed cannot ride in IPA_EMBEDS."""
    enc = {"ipadapter": ["1", 0], "image": ["2", 0], "weight": 1.0, "clip_vision": ["3", 0]}
    api = {"1": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": "a.safetensors"}},
           "4": {"class_type": "IPAdapterEncoder", "inputs": dict(enc)},
           "5": {"class_type": "IPAdapterEncoder", "inputs": dict(enc, image=["6", 0])},
           "7": {"class_type": "IPAdapterEmbeds", "inputs": {
               "model": ["0", 0], "ipadapter": ["1", 0], "pos_embed": ["4", 0], "neg_embed": ["5", 0], "weight": 1.0,
               "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}}}
    new, entries = mw.migrate(api, available=ALL)
    assert new["7"]["inputs"]["embeds"] == ["4", 0] and "neg_embed" not in new["7"]["inputs"]
    assert entry(entries, "7").status == "approximate"
    same = copy.deepcopy(api)
    same["7"]["inputs"]["neg_embed"] = ["4", 1]
    assert entry(mw.migrate(same, available=ALL)[1], "7").status == "converted"


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
