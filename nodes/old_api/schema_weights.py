"""Old definitions (see schema.py) of the weight-strategy nodes (IPAdapterWeights, IPAdapterCombineWeights,
IPAdapterWeightsFromStrategy, IPAdapterPromptScheduleFromWeightsStrategy).

Plain data, no imports: ``nodes(s)`` gets the schema module (its OldNode, constants and helpers) and returns
node ID -> OldNode in the old pack's NODE_CLASS_MAPPINGS order."""

TIMINGS = ["custom", "linear", "ease_in_out", "ease_in", "ease_out", "random"]
METHODS = ["full batch", "shift batches", "alternate batches"]


def _frames(default: int) -> tuple:
    return ("INT", {"default": default, "min": 0, "max": 9999, "step": 1})


def nodes(s) -> dict:
    outputs = ("FLOAT", "FLOAT", "INT", "IMAGE", "IMAGE", "WEIGHTS_STRATEGY")
    names = ("weights", "weights_invert", "total_frames", "image_1", "image_2", "weights_strategy")
    strategy = ("WEIGHTS_STRATEGY",)
    return {
        "IPAdapterWeights": s.OldNode(
            "IPAdapter Weights", "ipadapter/weights", "weights",
            {"required": {"weights": ("STRING", {"default": "1.0, 0.0", "multiline": True}),
                          "timing": (TIMINGS, {"default": "linear"}), "frames": _frames(0),
                          "start_frame": _frames(0), "end_frame": _frames(9999), "add_starting_frames": _frames(0),
                          "add_ending_frames": _frames(0), "method": (METHODS, {"default": "full batch"})},
             "optional": {"image": ("IMAGE",)}},
            outputs, names),
        "IPAdapterCombineWeights": s.OldNode(
            "IPAdapter Combine Weights", "ipadapter/utils", "combine",
            {"required": {"weights_1": s._float(0.0, 0.0, 1.0, 0.05), "weights_2": s._float(0.0, 0.0, 1.0, 0.05)}},
            ("FLOAT", "INT"), ("weights", "count")),
        "IPAdapterWeightsFromStrategy": s.OldNode(
            "IPAdapter Weights From Strategy", "ipadapter/weights", "weights",
            {"required": {"weights_strategy": strategy}, "optional": {"image": ("IMAGE",)}},
            outputs, names),
        "IPAdapterPromptScheduleFromWeightsStrategy": s.OldNode(
            "Prompt Schedule From Weights Strategy", "ipadapter/weights", "prompt_schedule",
            {"required": {"weights_strategy": strategy, "prompt": ("STRING", {"default": "", "multiline": True})}},
            ("STRING",), ("prompt_schedule",)),
    }
