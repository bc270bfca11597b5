"""Migration from ComfyUI_IPAdapter_plus workflows, no ComfyUI needed: the old pack's regional-conditioning chains
(IPAdapterRegionalConditioning -> IPAdapterCombineParams -> IPAdapterFromParams) folded into IPA Regional Apply with
masked prompts, and what stays unmapped.
"""
from __future__ import annotations

from migration import migrate_workflow as mw
from testkit.old_workflows import ALL, UI, by_id, checkpoint, entry, input_source, ksampler, load_image, unified


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
