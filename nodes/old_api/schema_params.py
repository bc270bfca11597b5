"""Old definitions (see schema.py) of regional conditioning and params (IPAdapterRegionalConditioning,
IPAdapterCombineParams, IPAdapterFromParams), Save / Load Embeds, the FaceID and community unified loaders.

Plain data, no imports: ``nodes(s)`` gets the schema module (its OldNode, constants and helpers) and returns
node ID -> OldNode in the old pack's NODE_CLASS_MAPPINGS order.

``EMBEDS_FILES`` is the placeholder of IPAdapterLoadEmbeds' file list (the old pack: the .ipadpt files of the input
folder); params.py resolves it when ComfyUI asks for the inputs."""

EMBEDS_FILES = "<.ipadpt files in the input folder>"
FACEID_PRESETS = ["FACEID", "FACEID PLUS - SD1.5 only", "FACEID PLUS V2", "FACEID PORTRAIT (style transfer)",
                  "FACEID PORTRAIT UNNORM - SDXL only (strong)"]
FACEID_PROVIDERS = ["CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML"]
COMMUNITY_PRESETS = ["Composition", "Kolors"]


def nodes(s) -> dict:
    params = ("IPADAPTER_PARAMS",)
    return {
        "IPAdapterFromParams": s.OldNode(
            "IPAdapter from Params", "ipadapter/params", "apply_ipadapter",
            {"required": {"model": ("MODEL",), "ipadapter": ("IPADAPTER",), "ipadapter_params": params,
                          "combine_embeds": (s.COMBINE_EMBEDS,), "embeds_scaling": (s.EMBEDS_SCALING,)},
             "optional": {"image_negative": ("IMAGE",), "clip_vision": ("CLIP_VISION",)}},
            ("MODEL",)),
        "IPAdapterUnifiedLoaderFaceID": s.OldNode(
            "IPAdapter Unified Loader FaceID", "ipadapter/faceid", "load_models",
            {"required": {"model": ("MODEL",), "preset": (FACEID_PRESETS,),
                          "lora_strength": s._float(0.6, 0, 1, 0.01), "provider": (FACEID_PROVIDERS,)},
             "optional": {"ipadapter": ("IPADAPTER",)}},
            ("MODEL", "IPADAPTER"), ("MODEL", "ipadapter")),
        "IPAdapterUnifiedLoaderCommunity": s.OldNode(
            "IPAdapter Unified Loader Community", "ipadapter/loaders", "load_models",
            {"required": {"model": ("MODEL",), "preset": (COMMUNITY_PRESETS,)},
             "optional": {"ipadapter": ("IPADAPTER",)}},
            ("MODEL", "IPADAPTER"), ("model", "ipadapter")),
        "IPAdapterSaveEmbeds": s.OldNode(
            "IPAdapter Save Embeds", "ipadapter/embeds", "save",
            {"required": {"embeds": ("EMBEDS",), "filename_prefix": ("STRING", {"default": "IP_embeds"})}},
            (), output_node=True),
        "IPAdapterLoadEmbeds": s.OldNode(
            "IPAdapter Load Embeds", "ipadapter/embeds", "load",
            {"required": {"embeds": (EMBEDS_FILES,)}},
            ("EMBEDS",)),
        "IPAdapterRegionalConditioning": s.OldNode(
            "IPAdapter Regional Conditioning", "ipadapter/params", "conditioning",
            {"required": {"image": ("IMAGE",), "image_weight": s._float(1.0, -1.0, 3.0, 0.05),
                          "prompt_weight": s._float(1.0, 0.0, 10.0, 0.05), "weight_type": (s.WEIGHT_TYPES,),
                          "start_at": s.START_AT, "end_at": s.END_AT},
             "optional": {"mask": ("MASK",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",)}},
            ("IPADAPTER_PARAMS", "CONDITIONING", "CONDITIONING"), ("IPADAPTER_PARAMS", "POSITIVE", "NEGATIVE")),
        "IPAdapterCombineParams": s.OldNode(
            "IPAdapter Combine Params", "ipadapter/params", "combine",
            {"required": {"params_1": params, "params_2": params},
             "optional": {"params_3": params, "params_4": params, "params_5": params}},
            ("IPADAPTER_PARAMS",)),
    }
