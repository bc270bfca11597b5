"""ComfyUI_IPAdapter_plus (cubiq) workflows written by hand, for the migration tests (tests/core/test_migrate_*.py):
a tiny builder of the UI format as the editor saves it (nodes + links with the old nodes' socket lists and
widgets_values in their INPUT_TYPES order), the old nodes the tests use, readers of the result (by_id, input_source,
entry) and the /object_info of the target nodes. Pure Python.
"""
from __future__ import annotations

# The target nodes a converted workflow may use (the migration's ``available``).
ALL = {"IPA_UnifiedLoader", "IPA_ModelLoader", "IPA_Encode", "IPA_ApplyAdvanced", "IPA_CombineEmbeds",
       "IPA_NoiseImage", "IPA_PrepImage", "IPA_SaveEmbeds", "IPA_StyleComposition", "IPA_ApplyTiled",
       "IPA_ApplyFaceID", "IPA_FaceModelLoader"}
COMPAT = "ComfyUI_IPAdapter_plus"
# IPA_ApplyAdvanced's widgets, in order, at their defaults (the brief's interface of the node).
ADV_DEFAULTS = [1.0, "linear", 0.0, 1.0, "V only", "", 1.0, "constant", "", False, "", "this pack", 1.0, True]


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
