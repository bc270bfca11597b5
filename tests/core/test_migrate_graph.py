"""Migration from ComfyUI_IPAdapter_plus workflows (migration.migrate_workflow), no ComfyUI needed: the graph rewrite
in both saved formats (UI: nodes, links, widgets and layout; API: class_type + inputs), inserted helper nodes,
what is reported and left in place.

The old workflows are written by hand in the old pack's saved formats (testkit/old_workflows.py); the expected
results are the mapping of docs/MIGRATION.md, written out by hand. Value tables: test_migrate_values.py; regional
conditioning: test_migrate_regional.py.
"""
from __future__ import annotations

import copy

from migration import migrate_workflow as mw
from testkit import workflow_convert as wc
from testkit.old_workflows import (ADV_DEFAULTS, ALL, COMPAT, OLD_ADVANCED_IN, UI, by_id, checkpoint, entry,
                                   input_source, ksampler, load_image, object_info, simple_workflow, unified)


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
                                       COMPAT, 1.0, True]
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
    assert nodes[3]["widgets_values"][-3:] == [COMPAT, 1.0, True]
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
    ui.node(3, "IPAdapterFaceIDKolors", inputs=[("model", "MODEL")], outputs=[("MODEL", "MODEL"),
                                                                              ("face_image", "IMAGE")],
            widgets=[1.0, 1.0, 1.0, "linear", "concat", 0.0, 1.0, "V only"])
    ui.node(4, "SomeOtherPackNode", inputs=[("model", "MODEL")], outputs=[("MODEL", "MODEL")], widgets=[3])
    ui.link(1, 0, 3, "model")
    ui.link(3, 0, 4, "model")
    old = ui.workflow()
    new, entries = mw.migrate(old, available=ALL)
    assert new == old
    assert [(e.node, e.status) for e in entries] == [(3, "unmapped")]
    assert "Kolors" in entries[0].notes[0]
    text = mw.report_text(entries)
    assert text.startswith("0 converted, 0 approximate, 1 unmapped") and "IPAdapterFaceIDKolors" in text


FACEID_OUT = [("MODEL", "MODEL"), ("face_image", "IMAGE")]


def test_faceid_unified_loader_and_apply_convert_with_the_loras_strength():
    """IPAdapterUnifiedLoaderFaceID + IPAdapterFaceID -> IPA Unified Loader (FaceID preset) + IPA Apply FaceID with
    the loader's lora_strength (the LoRA inside the adapter file now) and an added IPA Load Face Models with the
    loader's provider; the old widgets map by name, the old pack's RGB CLIP crop is kept."""
    ui = UI()
    checkpoint(ui)
    ui.node(2, "IPAdapterUnifiedLoaderFaceID", inputs=[("model", "MODEL"), ("ipadapter", "IPADAPTER")],
            outputs=[("MODEL", "MODEL"), ("ipadapter", "IPADAPTER")], widgets=["FACEID PLUS V2", 0.7, "CUDA"])
    ui.node(3, "IPAdapterFaceID", inputs=OLD_ADVANCED_IN + [("insightface", "INSIGHTFACE")], outputs=FACEID_OUT,
            widgets=[0.8, 1.5, "ease in", "concat", 0.1, 0.9, "K+V"])
    ui.node(4, "PreviewImage", inputs=[("images", "IMAGE")], outputs=[])
    ui.link(1, 0, 2, "model")
    ui.link(2, 0, 3, "model")
    ui.link(2, 1, 3, "ipadapter")
    ui.link(3, 1, 4, "images")
    new, entries = mw.migrate(ui.workflow(), available=ALL)
    nodes = by_id(new)
    assert nodes[2]["type"] == "IPA_UnifiedLoader" and nodes[2]["widgets_values"][0] == "faceid plus v2"
    assert nodes[3]["type"] == "IPA_ApplyFaceID"
    widgets = dict(zip(mw.TARGETS["IPA_ApplyFaceID"].widgets(), nodes[3]["widgets_values"]))
    assert widgets["weight"] == 0.8 and widgets["weight_faceidv2"] == 1.5 and widgets["weight_type"] == "ease in"
    assert (widgets["start_at"], widgets["end_at"], widgets["embeds_scaling"]) == (0.1, 0.9, "K+V")
    assert widgets["lora_strength"] == 0.7 and widgets["clip_crop_colors"] == "ComfyUI_IPAdapter_plus (RGB)"
    assert widgets["unfold_batch"] is False
    faces = [n for n in new["nodes"] if n["type"] == "IPA_FaceModelLoader"]
    assert len(faces) == 1 and faces[0]["widgets_values"] == ["buffalo_l", "CUDA"]
    assert input_source(new, 3, "face_models") == (faces[0]["id"], 0, "IPA_FACE_MODELS")
    assert input_source(new, 3, "clip_vision") == (2, 2, "CLIP_VISION")  # the loader's CLIP vision (Plus)
    assert input_source(new, 3, "ipadapter") == (2, 1, "IPA_ADAPTER")
    assert input_source(new, 4, "images") == (3, 1, "IMAGE")
    assert entry(entries, 3).status == "approximate" and entry(entries, 2).status == "converted"


def test_faceid_with_an_insightface_loader_and_a_separate_lora_keeps_the_lora_off():
    ui = UI()
    checkpoint(ui)
    ui.node(2, "IPAdapterModelLoader", outputs=[("IPADAPTER", "IPADAPTER")], widgets=["ip-adapter-faceid_sd15.bin"])
    ui.node(5, "IPAdapterInsightFaceLoader", outputs=[("INSIGHTFACE", "INSIGHTFACE")], widgets=["ROCM", "buffalo_l"])
    ui.node(3, "IPAAdapterFaceIDBatch", inputs=OLD_ADVANCED_IN + [("insightface", "INSIGHTFACE")], outputs=FACEID_OUT,
            widgets=[1.0, 1.0, "linear", "concat", 0.0, 1.0, "V only"])
    ui.link(1, 0, 3, "model")
    ui.link(2, 0, 3, "ipadapter")
    ui.link(5, 0, 3, "insightface")
    new, entries = mw.migrate(ui.workflow(), available=ALL)
    nodes = by_id(new)
    assert nodes[5]["type"] == "IPA_FaceModelLoader" and nodes[5]["widgets_values"] == ["buffalo_l", "ROCM"]
    assert input_source(new, 3, "face_models") == (5, 0, "IPA_FACE_MODELS")
    widgets = dict(zip(mw.TARGETS["IPA_ApplyFaceID"].widgets(), nodes[3]["widgets_values"]))
    assert widgets["lora_strength"] == 0.0 and widgets["unfold_batch"] is True
    assert not [n for n in new["nodes"] if n["type"] == "IPA_FaceModelLoader" and n["id"] != 5]
    assert entry(entries, 5).status == "converted"


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
                         "compatibility", "precise_boost", "uncond_term"], ADV_DEFAULTS))
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
