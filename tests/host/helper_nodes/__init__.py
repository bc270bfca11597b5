"""Test-only ComfyUI nodes (never shipped with the pack's nodes).

ComfyUI's CLIPVisionLoader recognises only full-size encoders (it detects them by their layer count), so it
cannot load the tiny random CLIP vision stand-in. ``IPATest_CLIPVisionLoaderJSON`` builds
``comfy.clip_vision.ClipVisionModel`` from the ``.json`` config next to the weights instead. A SigLIP file
(model_type siglip_vision_model) may hold its pooling head, ``vision_model.head.*``, which ComfyUI's model has no
place for: like core CLIPVisionLoader, the node leaves those keys out (the pack reads them from the file itself).

The Flux stand-ins (testkit/flux_standins.py) have the same problem: ComfyUI 0.3.x's detection hard-codes Flux's full
width (hidden 3072, 24 heads, context 4096), and its Flux text encoders are a full-size CLIP-L and T5-XXL.
``IPATest_UNETLoaderJSON`` runs core UNETLoader's own code with the widths of the ``.json`` next to the file put over
what ComfyUI detects; ``IPATest_DualCLIPLoaderJSON`` builds what core DualCLIPLoader builds for type flux
(ComfyUI's FluxClipModel and FluxTokenizer in a ``comfy.sd.CLIP``) with the config overrides of the ``.json`` next to
each file. Both take the inputs of the core node they stand in for; everything downstream (CLIPTextEncode,
FluxGuidance, KSampler, VAELoader, VAEDecode) is the core node itself.

The nodes are registered only when a harness lists this folder as a ``custom_nodes`` path in its
extra_model_paths.yaml (scripts/run_workflow.py does so when it runs the stand-ins).
"""
import json
import os

import comfy.clip_vision
import comfy.model_detection
import comfy.sd
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.utils
import folder_paths
import nodes
import torch


SIGLIP_HEAD = "vision_model.head."


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
        sd = comfy.utils.load_torch_file(path, safe_load=True)
        with open(config) as f:
            siglip = json.load(f).get("model_type") == "siglip_vision_model"
        if siglip:  # core CLIPVisionLoader drops SigLIP's pooling head too (no place for it in ComfyUI's model)
            sd = {k: v for k, v in sd.items() if not k.startswith(SIGLIP_HEAD)}
        missing, unexpected = model.load_sd(sd)
        if missing or unexpected:
            raise ValueError(f"IPATest_CLIPVisionLoaderJSON: {clip_name} does not fit {config}: "
                             f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
        return (model,)


def _config_next_to(path: str, node: str) -> dict:
    config = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(config):
        raise FileNotFoundError(f"{node}: no config {config} next to {path}")
    with open(config) as f:
        return json.load(f)


def _keys(path: str) -> set:
    """The tensor names of a .safetensors file (its header only)."""
    with open(path, "rb") as f:
        return set(json.loads(f.read(int.from_bytes(f.read(8), "little")))) - {"__metadata__"}


class IPATestUNETLoaderJSON:
    CATEGORY = "ip-adapter/testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    DESCRIPTION = ("TEST ONLY: core UNETLoader, with the model widths of the .json next to the file put over what "
                   "ComfyUI detects (its detection hard-codes the full-size Flux).")

    @classmethod
    def INPUT_TYPES(cls):
        return nodes.UNETLoader.INPUT_TYPES()

    def load(self, unet_name, weight_dtype="default"):
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        widths = _config_next_to(path, "IPATest_UNETLoaderJSON")
        detect = comfy.model_detection.detect_unet_config

        def detect_with_widths(state_dict, key_prefix, *args, **kwargs):
            return {**(detect(state_dict, key_prefix, *args, **kwargs) or {}), **widths}

        comfy.model_detection.detect_unet_config = detect_with_widths  # only while core UNETLoader runs
        try:
            (model,) = nodes.UNETLoader().load_unet(unet_name, weight_dtype)
        finally:
            comfy.model_detection.detect_unet_config = detect
        # core loading only warns about keys that do not fit: check them (as the model config renames them)
        have = set(model.model.diffusion_model.state_dict())
        given = set(model.model.model_config.process_unet_state_dict(dict.fromkeys(_keys(path))))
        if have != given:
            raise ValueError(f"IPATest_UNETLoaderJSON: {unet_name} does not fit its .json: missing "
                             f"{sorted(have - given)[:5]}, unexpected {sorted(given - have)[:5]}")
        return (model,)


class IPATestDualCLIPLoaderJSON:
    CATEGORY = "ip-adapter/testing"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    DESCRIPTION = ("TEST ONLY: core DualCLIPLoader for type flux (ComfyUI's FluxClipModel + FluxTokenizer), with the "
                   "text encoder config overrides of the .json next to each file (tiny CLIP-L and T5 stand-ins).")

    @classmethod
    def INPUT_TYPES(cls):
        return nodes.DualCLIPLoader.INPUT_TYPES()

    def load(self, clip_name1, clip_name2, type, device="default"):
        if type != "flux":
            raise ValueError(f"IPATest_DualCLIPLoaderJSON: only type 'flux' is built here, not {type!r}")
        paths = [folder_paths.get_full_path_or_raise("text_encoders", n) for n in (clip_name1, clip_name2)]
        options = {}
        for path in paths:
            options.update(_config_next_to(path, "IPATest_DualCLIPLoaderJSON"))
        if device == "cpu":
            options["load_device"] = options["offload_device"] = torch.device("cpu")
        state_dicts = [comfy.utils.load_torch_file(p, safe_load=True) for p in paths]
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer,
                                                        comfy.text_encoders.flux.FluxClipModel)
        clip = comfy.sd.CLIP(target, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                             parameters=sum(comfy.utils.calculate_parameters(sd) for sd in state_dicts),
                             tokenizer_data={}, model_options=options)
        for name, sd in zip((clip_name1, clip_name2), state_dicts):
            missing, unexpected = clip.load_sd(sd)  # FluxClipModel routes each file to its encoder (CLIP-L or T5)
            if missing or unexpected:
                raise ValueError(f"IPATest_DualCLIPLoaderJSON: {name} does not fit its .json: missing "
                                 f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
        return (clip,)


NODE_CLASS_MAPPINGS = {"IPATest_CLIPVisionLoaderJSON": IPATestCLIPVisionLoaderJSON,
                       "IPATest_UNETLoaderJSON": IPATestUNETLoaderJSON,
                       "IPATest_DualCLIPLoaderJSON": IPATestDualCLIPLoaderJSON}
NODE_DISPLAY_NAME_MAPPINGS = {"IPATest_CLIPVisionLoaderJSON": "IPA Test: Load CLIP Vision (json config)",
                              "IPATest_UNETLoaderJSON": "IPA Test: Load Diffusion Model (json config)",
                              "IPATest_DualCLIPLoaderJSON": "IPA Test: DualCLIPLoader flux (json config)"}
