"""Old definitions (see schema.py) of the other apply nodes: Tiled (+ Batch), Style & Composition (+ Batch), Mad
Scientist, ClipVision Enhancer (+ Batch), Precise Style Transfer / Composition (+ Batch).

Plain data, no imports: ``nodes(s)`` gets the schema module (its OldNode, constants and helpers) and returns
node ID -> OldNode in the old pack's NODE_CLASS_MAPPINGS order."""


def nodes(s) -> dict:
    head = {"model": ("MODEL",), "ipadapter": ("IPADAPTER",)}
    weight3, weight5 = s._float(1.0, -1, 3, 0.05), s._float(1.0, -1, 5, 0.05)
    scaling = (s.EMBEDS_SCALING,)
    batch_size = ("INT", {"default": 0, "min": 0, "max": 4096})
    sharpening = s._float(0.0, 0.0, 1.0, 0.05)
    tiled_out = (("MODEL", "IMAGE", "MASK"), ("MODEL", "tiles", "masks"))

    def style_composition(combine: bool) -> dict:
        required = {**head, "image_style": ("IMAGE",), "image_composition": ("IMAGE",), "weight_style": weight5,
                    "weight_composition": weight5, "expand_style": ("BOOLEAN", {"default": False})}
        if combine:
            required["combine_embeds"] = (s.COMBINE_EMBEDS, {"default": "average"})
        required.update(start_at=s.START_AT, end_at=s.END_AT, embeds_scaling=scaling)
        return {"required": required, "optional": dict(s._APPLY_OPTIONAL)}

    def precise(boost: str, default: float) -> dict:
        return {"required": {**head, "image": ("IMAGE",), "weight": weight5, boost: s._float(default, -5, 5, 0.05),
                             "combine_embeds": (s.COMBINE_EMBEDS,), "start_at": s.START_AT, "end_at": s.END_AT,
                             "embeds_scaling": scaling},
                "optional": dict(s._APPLY_OPTIONAL)}

    tiled = {"required": {**head, "image": ("IMAGE",), "weight": weight3, "weight_type": (s.WEIGHT_TYPES,),
                          "combine_embeds": (s.COMBINE_EMBEDS,), "start_at": s.START_AT, "end_at": s.END_AT,
                          "sharpening": sharpening, "embeds_scaling": scaling},
             "optional": dict(s._APPLY_OPTIONAL)}
    tiled_batch = {"required": {**head, "image": ("IMAGE",), "weight": weight3, "weight_type": (s.WEIGHT_TYPES,),
                                "start_at": s.START_AT, "end_at": s.END_AT, "sharpening": sharpening,
                                "embeds_scaling": scaling, "encode_batch_size": batch_size},
                   "optional": dict(s._APPLY_OPTIONAL)}
    mad_scientist = {"required": {**head, "image": ("IMAGE",), "weight": weight5,
                                  "weight_faceidv2": s._float(1.0, -1, 5.0, 0.05), "weight_type": (s.WEIGHT_TYPES,),
                                  "combine_embeds": (s.COMBINE_EMBEDS,), "start_at": s.START_AT, "end_at": s.END_AT,
                                  "embeds_scaling": scaling, "layer_weights": ("STRING", {"default": "",
                                                                                        "multiline": True})},
                     "optional": {**s._APPLY_OPTIONAL, "insightface": ("INSIGHTFACE",)}}
    tiles = ("INT", {"default": 2, "min": 1, "max": 16})

    def enhancer(batch: bool) -> dict:
        required = {**head, "image": ("IMAGE",), "weight": weight5, "weight_type": (s.WEIGHT_TYPES,)}
        if not batch:
            required["combine_embeds"] = (s.COMBINE_EMBEDS,)
        required.update(start_at=s.START_AT, end_at=s.END_AT, embeds_scaling=scaling, enhance_tiles=tiles,
                        enhance_ratio=s._float(0.5 if batch else 1.0, 0.0, 1.0, 0.05))
        if batch:
            required["encode_batch_size"] = batch_size
        return {"required": required, "optional": dict(s._APPLY_OPTIONAL)}

    apply = "apply_ipadapter"
    return {
        "IPAdapterTiled": s.OldNode("IPAdapter Tiled", "ipadapter/tiled", "apply_tiled", tiled, *tiled_out),
        "IPAdapterTiledBatch": s.OldNode("IPAdapter Tiled Batch", "ipadapter/tiled", "apply_tiled", tiled_batch,
                                         *tiled_out),
        "IPAdapterStyleComposition": s.OldNode(
            "IPAdapter Style & Composition SDXL", "ipadapter/style_composition", apply, style_composition(True),
            ("MODEL",)),
        "IPAdapterStyleCompositionBatch": s.OldNode(
            "IPAdapter Style & Composition Batch SDXL", "ipadapter/style_composition", apply,
            style_composition(False), ("MODEL",)),
        "IPAdapterMS": s.OldNode("IPAdapter Mad Scientist", "ipadapter/dev", apply, mad_scientist, ("MODEL",)),
        "IPAdapterClipVisionEnhancer": s.OldNode("IPAdapter ClipVision Enhancer", "ipadapter/dev", apply,
                                                 enhancer(False), ("MODEL",)),
        "IPAdapterClipVisionEnhancerBatch": s.OldNode("IPAdapter ClipVision Enhancer Batch", "ipadapter/dev", apply,
                                                      enhancer(True), ("MODEL",)),
        "IPAdapterPreciseStyleTransfer": s.OldNode(
            "IPAdapter Precise Style Transfer", "ipadapter", apply, precise("style_boost", 1.0), ("MODEL",)),
        "IPAdapterPreciseStyleTransferBatch": s.OldNode(
            "IPAdapter Precise Style Transfer Batch", "ipadapter", apply, precise("style_boost", 1.0), ("MODEL",)),
        "IPAdapterPreciseComposition": s.OldNode(
            "IPAdapter Precise Composition", "ipadapter", apply, precise("composition_boost", 0.0), ("MODEL",)),
        "IPAdapterPreciseCompositionBatch": s.OldNode(
            "IPAdapter Precise Composition Batch", "ipadapter", apply, precise("composition_boost", 0.0),
            ("MODEL",)),
    }
