"""Test-only ComfyUI nodes (never shipped with the pack's nodes).

ComfyUI's CLIPVisionLoader recognises only full-size encoders (it detects them by their layer count), so it
cannot load the tiny random CLIP vision stand-in. ``IPATest_CLIPVisionLoaderJSON`` builds
``comfy.clip_vision.ClipVisionModel`` from the ``.json`` config next to the weights instead.

The node is registered only when a harness lists this folder as a ``custom_nodes`` path in its
extra_model_paths.yaml (scripts/run_workflow.py does so when it runs the stand-ins).
"""
import os

import comfy.clip_vision
import comfy.utils
import folder_paths


class IPATestCLIPVisionLoaderJSON:
    CATEGORY = "ip-adapter/testing"
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"
    DESCRIPTION = "TEST ONLY: loads a CLIP vision model from the .json config next to its weights."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("clip_vision"),)}}

    def load(self, clip_name):
        path = folder_paths.get_full_path_or_raise("clip_vision", clip_name)
        config = os.path.splitext(path)[0] + ".json"
        if not os.path.isfile(config):
            raise FileNotFoundError(f"IPATest_CLIPVisionLoaderJSON: no config {config} next to {path}")
        model = comfy.clip_vision.ClipVisionModel(config)
        missing, unexpected = model.load_sd(comfy.utils.load_torch_file(path, safe_load=True))
        if missing or unexpected:
            raise ValueError(f"IPATest_CLIPVisionLoaderJSON: {clip_name} does not fit {config}: "
                             f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
        return (model,)


NODE_CLASS_MAPPINGS = {"IPATest_CLIPVisionLoaderJSON": IPATestCLIPVisionLoaderJSON}
NODE_DISPLAY_NAME_MAPPINGS = {"IPATest_CLIPVisionLoaderJSON": "IPA Test: Load CLIP Vision (json config)"}
