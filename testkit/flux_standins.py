"""The stand-ins of the Flux example workflows, XLabs and InstantX (random weights; testkit/standins.py writes them):

    models/diffusion_models/ipa_standin_flux.safetensors + .json
        a Flux.1-dev-shaped model made of ComfyUI's own Flux classes, shrunk: hidden 128, 2 heads, 2 double blocks +
        1 single block, context 64 (the T5 stand-in's width), vec 64 (the CLIP-L stand-in's), guidance embedding;
        fp32, keyed like flux1-dev.safetensors. The .json holds the widths ComfyUI 0.3.x cannot detect (its
        detection hard-codes Flux's 3072 / 24 heads / 4096; newer ComfyUI reads the widths from the tensors but
        takes the head count from Flux's 128-wide heads, which would give this model 1 head instead of 2):
        IPATest_UNETLoaderJSON (tests/host/helper_nodes) is core UNETLoader with those widths put over what
        ComfyUI detects.
    models/text_encoders/ipa_standin_flux_clip_l.safetensors + .json   CLIP-L text encoder, hidden 64, 2 layers
    models/text_encoders/ipa_standin_flux_t5xxl.safetensors + .json    T5 encoder, d_model 64, 2 layers
        keyed like clip_l.safetensors / t5xxl_fp16.safetensors (fp16); each .json holds the model_options entry that
        ComfyUI's own text encoder classes read as a config override ("clip_l_model_config",
        "t5xxl_model_config"). IPATest_DualCLIPLoaderJSON builds what core DualCLIPLoader builds for type flux
        (ComfyUI's FluxClipModel + FluxTokenizer in a comfy.sd.CLIP) with those options; it cannot call
        comfy.sd.load_clip, which replaces any clip_l config override (its long-CLIP support).
    models/vae/ipa_standin_flux_vae.safetensors
        a TAESD-shaped VAE with 16 latent channels (Flux's): core VAELoader and VAEDecode load and run it as they are.
    models/ipadapter/ipa_standin_xlabs_flux.safetensors
        the XLabs flat layout (v1: 4 tokens) over the stand-in CLIP vision's 48-wide image embeds, context 64,
        hidden 128, one K/V pair per double block.
    models/clip_vision/ipa_standin_siglip.safetensors + .json
        a tiny SigLIP vision encoder (hidden 32, 2 heads, 2 layers, 32 px in 8 px patches: 16 positions, no class
        token) keyed as the published google/siglip-so400m-patch14-384 model.safetensors is (transformers' names),
        its pooling head ``vision_model.head.*`` included, which the pack reads from this very file
        (nodes/patch/host.siglip_head finds it among the clip_vision files by its patch embedding). The .json is
        ComfyUI's ClipVisionModel config (model_type siglip_vision_model): core CLIPVisionLoader only knows the
        full-size SigLIP, so the test-only IPATest_CLIPVisionLoaderJSON loads it (dropping the head, as ComfyUI's
        own loader does).
    models/clip_vision/ipa_standin_siglip_headless.safetensors + .json
        another tiny SigLIP (other weights) without the pooling head: what a SigLIP file without ``vision_model.head.*``
        gives (the InstantX adapter refuses it by name).
    models/ipadapter/ipa_standin_instantx_flux.safetensors
        the InstantX layout (flat ``image_proj.*`` / ``ip_adapter.*`` keys; the published file is a nested .bin) over
        the stand-in SigLIP's 32-wide pooled output: 4 tokens of context 64, one bias-free K/V pair per block of the
        stand-in Flux (2 double + 1 single: 3 sites) at hidden 128.

The VAE's scale and last layer are calibrated on latents that a short sampling run of the stand-in Flux gives (the
example's prompt, cfg 1, 3 steps, 64 px), so the decoded picture is neither flat nor saturated. Built with ComfyUI
imported (standins._import_comfy); no diffusers needed.
"""
from __future__ import annotations

import json
import os

UNET = "ipa_standin_flux.safetensors"
CLIP_L = "ipa_standin_flux_clip_l.safetensors"
T5XXL = "ipa_standin_flux_t5xxl.safetensors"
VAE = "ipa_standin_flux_vae.safetensors"
ADAPTER = "ipa_standin_xlabs_flux.safetensors"
SIGLIP = "ipa_standin_siglip.safetensors"
SIGLIP_HEADLESS = "ipa_standin_siglip_headless.safetensors"
ADAPTER_INSTANTX = "ipa_standin_instantx_flux.safetensors"


def _json(rel: str) -> str:
    return rel[: -len(".safetensors")] + ".json"


FILES = {
    "flux_unet": os.path.join("diffusion_models", UNET),
    "flux_unet_json": _json(os.path.join("diffusion_models", UNET)),
    "flux_clip_l": os.path.join("text_encoders", CLIP_L),
    "flux_clip_l_json": _json(os.path.join("text_encoders", CLIP_L)),
    "flux_t5xxl": os.path.join("text_encoders", T5XXL),
    "flux_t5xxl_json": _json(os.path.join("text_encoders", T5XXL)),
    "flux_vae": os.path.join("vae", VAE),
    "adapter_xlabs": os.path.join("ipadapter", ADAPTER),
    "siglip": os.path.join("clip_vision", SIGLIP),
    "siglip_json": _json(os.path.join("clip_vision", SIGLIP)),
    "siglip_headless": os.path.join("clip_vision", SIGLIP_HEADLESS),
    "siglip_headless_json": _json(os.path.join("clip_vision", SIGLIP_HEADLESS)),
    "adapter_instantx": os.path.join("ipadapter", ADAPTER_INSTANTX),
}
PRODUCES = {"flux": ("flux_unet_json", "flux_unet", "flux_clip_l_json", "flux_clip_l", "flux_t5xxl_json",
                     "flux_t5xxl", "flux_vae"),
            "adapter_xlabs": ("adapter_xlabs",),
            "siglip": ("siglip_json", "siglip", "siglip_headless_json", "siglip_headless"),
            "adapter_instantx": ("adapter_instantx",)}
NEEDS_COMFY = ("flux", "siglip")  # the generators that build ComfyUI's classes (standins._import_comfy first)
# the code that writes them (standins._source_stamp)
SOURCES = ("flux_standins.py", "flux_adapters.py", "instantx_flux_adapters.py")

CONTEXT, VEC, HIDDEN, HEADS, DOUBLE, SINGLE = 64, 64, 128, 2, 2, 1
# ComfyUI's Flux unet config (comfy.supported_models.Flux matches image_model + guidance_embed).
UNET_CONFIG = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=VEC, context_in_dim=CONTEXT,
                   hidden_size=HIDDEN, mlp_ratio=4.0, num_heads=HEADS, depth=DOUBLE, depth_single_blocks=SINGLE,
                   axes_dim=[16, 24, 24], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
# Config overrides of ComfyUI's CLIP-L (sd1_clip_config.json) and T5-XXL (t5_config_xxl.json) text encoders.
TEXT_OPTIONS = {
    "clip_l_model_config": {"hidden_size": VEC, "intermediate_size": 128, "num_attention_heads": 2,
                            "num_hidden_layers": 2},
    "t5xxl_model_config": {"d_model": CONTEXT, "d_ff": 128, "d_kv": 32, "num_heads": 2, "num_layers": 2,
                           "num_decoder_layers": 2},
}
TEXT_FILES = (("flux_clip_l", "clip_l_model_config"), ("flux_t5xxl", "t5xxl_model_config"))
ADAPTER_TOKENS = 4
# ComfyUI's ClipVisionModel config of the SigLIP stand-in (the fields of its clip_vision_siglip_384.json, shrunk).
SIGLIP_CONFIG = {"model_type": "siglip_vision_model", "hidden_act": "gelu_pytorch_tanh", "hidden_size": 32,
                 "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2, "num_channels": 3,
                 "patch_size": 8, "image_size": 32, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
INSTANTX_TOKENS = 4
PROMPT = "a mountain lake at sunset, highly detailed"  # the example's prompt (calibration only)
GUIDANCE = 3.5


def make_flux(base: str, *, seed: int, save, write_json, randomise) -> None:
    """The text encoders, the Flux model and the VAE (calibrated on the other two)."""
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sample
    import comfy.taesd.taesd
    import comfy.text_encoders.flux

    g = torch.Generator().manual_seed(seed)
    # text encoders: ComfyUI's Flux text encoder with the overrides, random, one file per encoder (fp16 as published)
    te = comfy.text_encoders.flux.FluxClipModel(device="cpu", dtype=torch.float32, model_options=dict(TEXT_OPTIONS))
    randomise(te, g)
    parts = {"flux_clip_l": te.clip_l.transformer.state_dict(), "flux_t5xxl": te.t5xxl.transformer.state_dict()}
    for key, option in TEXT_FILES:
        write_json(os.path.join(base, FILES[f"{key}_json"]), {option: TEXT_OPTIONS[option]})
        save(os.path.join(base, FILES[key]), {k: v.half() for k, v in parts[key].items()})

    # Flux: ComfyUI's classes at the stand-in widths
    model = comfy_flux_model()
    randomise(model.diffusion_model, g)
    with torch.no_grad():  # QK RMS-norm scales near 1 (ComfyUI 0.3.x names them 'scale', which randomise takes for a bias)
        for name, p in model.diffusion_model.named_parameters():
            if name.endswith(("_norm.scale", "_norm.weight")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    write_json(os.path.join(base, FILES["flux_unet_json"]), UNET_CONFIG)
    save(os.path.join(base, FILES["flux_unet"]), published_keys(model.diffusion_model.state_dict()))

    taesd = comfy.taesd.taesd.TAESD(latent_channels=16)
    randomise(taesd, g)
    with torch.no_grad():
        # the example's conditioning: ComfyUI's Flux tokenizer and the random text encoder (FluxGuidance 3.5)
        tokens = comfy.text_encoders.flux.FluxTokenizer(embedding_directory=None, tokenizer_data={})
        context, pooled = te.encode_token_weights(tokens.tokenize_with_weights(PROMPT))
        assert context.shape[-1] == CONTEXT and pooled.shape[-1] == VEC, (context.shape, pooled.shape)
        positive = [[context, {"pooled_output": pooled, "guidance": GUIDANCE}]]
        negative = [[torch.zeros_like(context), {"pooled_output": torch.zeros_like(pooled)}]]
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        latent = torch.zeros(2, 16, 8, 8)
        noise = torch.randn(latent.shape, generator=g)
        samples = comfy.sample.sample(patcher, noise, 3, 1.0, "euler", "simple", positive, negative, latent,
                                      denoise=1.0, disable_pbar=True, seed=seed).float()
        del patcher, te
        taesd.vae_shift.fill_(float(samples.mean()))
        taesd.vae_scale.fill_(1.5 / float(samples.std()))
        last = taesd.taesd_decoder[-1]
        last.bias.zero_()
        out = taesd.taesd_decoder((samples - taesd.vae_shift) * taesd.vae_scale)
        gain = 0.25 / float(out.std())
        last.weight.mul_(gain)
        last.bias.fill_(0.5 - gain * float(out.mean()))
    save(os.path.join(base, FILES["flux_vae"]), {k: v.half() for k, v in taesd.state_dict().items()})


def comfy_flux_model(config: dict | None = None, *, dtype=None):
    """ComfyUI's Flux model (comfy.model_base.Flux, ``dtype`` (fp32), weights uninitialised) at the stand-in widths
    (UNET_CONFIG, or ``config``), plus what newer ComfyUI's detection adds for a Flux.1 file (txt_ids_dims)."""
    import dataclasses

    import torch
    import comfy.ldm.flux.model
    import comfy.supported_models

    config = dict(UNET_CONFIG if config is None else config)
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        config.setdefault("txt_ids_dims", [])
    model_config = comfy.supported_models.Flux(config)
    model_config.set_inference_dtype(torch.float32 if dtype is None else dtype, None)
    return model_config.get_model({})


def published_keys(state_dict: dict) -> dict:
    """flux1-dev.safetensors' key names (the QK norms' '*_norm.scale', which newer ComfyUI calls '*_norm.weight' in
    the model and renames on loading), fp32."""
    return {(k[: -len(".weight")] + ".scale" if k.endswith("_norm.weight") else k): v.float()
            for k, v in state_dict.items()}


def make_adapter(base: str, *, seed: int, encoder_dim: int, save) -> None:
    """The XLabs stand-in: 4 tokens over ``encoder_dim``-wide image embeds, fitting the stand-in Flux (fp16)."""
    import torch

    from .flux_adapters import xlabs_state_dict

    sd = xlabs_state_dict(tokens=ADAPTER_TOKENS, clip_dim=encoder_dim, ctx=CONTEXT, hidden=HIDDEN, blocks=DOUBLE,
                          seed=seed, dtype=torch.float16)
    save(os.path.join(base, FILES["adapter_xlabs"]), sd)


def siglip_state_dict(*, seed: int, randomise=None, head: bool = True) -> dict:
    """A random SigLIP vision encoder of SIGLIP_CONFIG in ComfyUI's own class, keyed as transformers keys it
    (``vision_model.*``), plus, with ``head``, the pooling head ``vision_model.head.*`` (transformers'
    SiglipMultiheadAttentionPoolingHead: probe, a torch MultiheadAttention, LayerNorm, MLP fc1 / fc2), fp32.
    randomise: the stand-ins' initialiser (default: standins._randomise). Needs ComfyUI imported."""
    import tempfile

    if randomise is None:
        from .standins import _randomise as randomise

    import torch
    import comfy.clip_vision

    g = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:  # ClipVisionModel is built from a json file
        config = os.path.join(tmp, "siglip.json")
        write_json(config, SIGLIP_CONFIG)
        cv = comfy.clip_vision.ClipVisionModel(config)
    randomise(cv.model, g)
    sd = {k: v.float() for k, v in cv.get_sd().items()}
    assert "vision_model.embeddings.class_embedding" not in sd and "visual_projection.weight" not in sd, sorted(sd)
    if head:
        hidden, heads = SIGLIP_CONFIG["hidden_size"], SIGLIP_CONFIG["num_attention_heads"]
        pooling = torch.nn.Module()
        pooling.probe = torch.nn.Parameter(torch.empty(1, 1, hidden))
        pooling.attention = torch.nn.MultiheadAttention(hidden, heads, batch_first=True)
        pooling.layernorm = torch.nn.LayerNorm(hidden, eps=1e-6)
        pooling.mlp = torch.nn.Module()
        pooling.mlp.fc1 = torch.nn.Linear(hidden, SIGLIP_CONFIG["intermediate_size"])
        pooling.mlp.fc2 = torch.nn.Linear(SIGLIP_CONFIG["intermediate_size"], hidden)
        randomise(pooling, g)
        with torch.no_grad():
            pooling.probe.normal_(generator=g)  # transformers initialises the probe N(0, 1)
        sd.update({f"vision_model.head.{k}": v.float() for k, v in pooling.state_dict().items()})
    return sd


def make_siglip(base: str, *, seed: int, save, write_json, randomise) -> None:
    """The SigLIP stand-ins: one with its pooling head, one without (other weights), each with its .json config."""
    for key, head, s in (("siglip", True, seed), ("siglip_headless", False, seed + 1)):
        write_json(os.path.join(base, FILES[f"{key}_json"]), SIGLIP_CONFIG)
        save(os.path.join(base, FILES[key]), siglip_state_dict(seed=s, randomise=randomise, head=head))


def make_instantx_adapter(base: str, *, seed: int, save) -> None:
    """The InstantX stand-in: 4 tokens over the stand-in SigLIP's pooled output, one site per block of the stand-in
    Flux (its double blocks, then its single blocks), flat prefixed keys (fp16)."""
    import torch

    from .instantx_flux_adapters import instantx_parts

    image_proj, ip_adapter = instantx_parts(tokens=INSTANTX_TOKENS, enc=SIGLIP_CONFIG["hidden_size"], ctx=CONTEXT,
                                            hidden=HIDDEN, sites=DOUBLE + SINGLE, seed=seed, dtype=torch.float16)
    flat = {f"image_proj.{k}": v for k, v in image_proj.items()}
    flat.update({f"ip_adapter.{k}": v for k, v in ip_adapter.items()})
    save(os.path.join(base, FILES["adapter_instantx"]), flat)


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
