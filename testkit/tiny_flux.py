"""A tiny Flux for the host tests: the same random weights in diffusers' FluxTransformer2DModel (the oracle) and in
ComfyUI's own Flux classes (reference/dit-adapters.md §3.2), and the two calling conventions.

ComfyUI's model detection hard-codes Flux's full width, so the ComfyUI side is built directly from
``comfy.supported_models.Flux(unet_config)`` and loaded with ``comfy.model_detection.convert_diffusers_mmdit``
(strict). That conversion does not swap the final layer's (scale, shift) halves the way ComfyUI's own diffusers key
map does, so the random ``norm_out.linear`` gets equal halves: both orders then give the same model (checked by
the tests: the unpatched outputs agree to float rounding). Call ``build_tiny_flux`` with ComfyUI imported (the host
conftest's ``comfy_nodes``); this module imports no ComfyUI module at import time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .flux_adapters import diffusers_tiny_flux, flux_ids
from .flux_standins import comfy_flux_model

HIDDEN, HEADS, CONTEXT, VEC = 128, 2, 64, 32
AXES = (16, 24, 24)  # sums to the head width, 64


@dataclass
class TinyFlux:
    reference: Any  # diffusers.FluxTransformer2DModel (eval, fp32)
    patcher: Any  # comfy.model_patcher.ModelPatcher over the same weights
    double_blocks: int
    single_blocks: int


def build_tiny_flux(*, double_blocks: int = 2, single_blocks: int = 1, seed: int = 0) -> TinyFlux:
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher

    reference = diffusers_tiny_flux(num_layers=double_blocks, num_single_layers=single_blocks, heads=HEADS,
                                    head_dim=HIDDEN // HEADS, joint_attention_dim=CONTEXT, pooled_projection_dim=VEC,
                                    axes_dims_rope=AXES, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            scale_like = name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight"))
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if scale_like else 0.0))
        w, b = reference.norm_out.linear.weight, reference.norm_out.linear.bias
        half = w.shape[0] // 2
        w[half:], b[half:] = w[:half].clone(), b[:half].clone()
    config = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=VEC, context_in_dim=CONTEXT,
                  hidden_size=HIDDEN, mlp_ratio=4.0, num_heads=HEADS, depth=double_blocks,
                  depth_single_blocks=single_blocks, axes_dim=list(AXES), theta=10000, patch_size=2, qkv_bias=True,
                  guidance_embed=True)
    model = comfy_flux_model(config)
    state = comfy.model_detection.convert_diffusers_mmdit(dict(reference.state_dict()), "")  # it pops: a copy
    model.diffusion_model.load_state_dict(state, strict=True)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return TinyFlux(reference, patcher, double_blocks, single_blocks)


def flux_inputs(batch: int = 2, size: int = 8, text: int = 5, seed: int = 1) -> dict[str, torch.Tensor]:
    """Latent x (B, 16, size, size), sigma, text context, pooled vector and guidance."""
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, 16, size, size, generator=g), sigma=torch.full((batch,), 0.7),
                context=torch.randn(batch, text, CONTEXT, generator=g), y=torch.randn(batch, VEC, generator=g),
                guidance=torch.full((batch,), 3.5))


def comfy_flux_forward(patcher: Any, inputs: dict, cond_or_uncond: list[int], **kwargs: Any) -> torch.Tensor:
    """ComfyUI's Flux forward with the model's transformer_options and its wrappers, as sampling sets them up
    (sampler_helpers puts the ModelPatcher's wrappers into transformer_options, calc_cond_batch the chunk order and
    sigmas). ``kwargs``: more keywords of Flux.forward (ref_latents for Kontext)."""
    import comfy.patcher_extension

    options = dict(patcher.model_options.get("transformer_options", {}))
    options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
    options.update(cond_or_uncond=list(cond_or_uncond), sigmas=inputs["sigma"], uuids=[None] * len(cond_or_uncond))
    with torch.no_grad():
        return patcher.model.diffusion_model(inputs["x"], inputs["sigma"], inputs["context"], inputs["y"],
                                             inputs["guidance"], transformer_options=options, **kwargs).float()


def diffusers_flux_forward(reference: Any, inputs: dict, **kwargs: Any) -> torch.Tensor:
    """diffusers' forward on the same inputs: packed (B, HW/4, 64) latents in (c ph pw) order, img_ids [0, row,
    col], txt_ids 0; the output unpacked back to (B, 16, H, W). ``kwargs``: joint_attention_kwargs and the like."""
    x = inputs["x"]
    b, c, h, w = x.shape
    packed = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    txt = inputs["context"].shape[1]
    ids = flux_ids(h // 2, w // 2, txt=txt)
    with torch.no_grad():
        out = reference(hidden_states=packed, encoder_hidden_states=inputs["context"], pooled_projections=inputs["y"],
                        timestep=inputs["sigma"], img_ids=ids[txt:], txt_ids=ids[:txt], guidance=inputs["guidance"],
                        **kwargs).sample
    return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w).float()
