"""A tiny SD3 for the host tests: the same random weights in diffusers' SD3Transformer2DModel (the oracle) and in
ComfyUI's own MMDiT (reference/dit-adapters.md §3.3), and the two calling conventions.

ComfyUI's MMDiT ties the hidden width to 64 * depth and the heads to depth, so the diffusers model has
num_layers == num_attention_heads, head width 64 and RMS qk-norms with random weights
(testkit.sd3_adapters.diffusers_tiny_sd3). ``comfy.sd.load_diffusion_model_state_dict`` detects it from the
diffusers keys and converts them itself. ``dual_attention_layers`` gives MMDiT-X blocks (SD3.5 Medium's second,
image-only attention), which ComfyUI detects too. Call ``build_tiny_sd3`` with ComfyUI imported (the host conftest's
``comfy_nodes``); this module imports no ComfyUI module at import time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .sd3_adapters import diffusers_tiny_sd3

CONTEXT, POOLED, HEAD_DIM = 32, 16, 64


@dataclass
class TinySD3:
    reference: Any  # diffusers.SD3Transformer2DModel (eval, fp32)
    patcher: Any  # comfy.model_patcher.ModelPatcher over the same weights (ComfyUI's own MMDiT)
    blocks: int

    @property
    def hidden(self) -> int:
        return HEAD_DIM * self.blocks


def build_tiny_sd3(*, blocks: int = 2, seed: int = 0, dual_attention_layers: tuple[int, ...] = ()) -> TinySD3:
    import comfy.sd

    reference = diffusers_tiny_sd3(num_layers=blocks, joint_attention_dim=CONTEXT, pooled_projection_dim=POOLED,
                                   seed=seed)
    if dual_attention_layers:  # rebuilt with MMDiT-X blocks, the same seeds
        from diffusers import SD3Transformer2DModel

        torch.manual_seed(seed)
        reference = SD3Transformer2DModel.from_config(reference.config,
                                                      dual_attention_layers=tuple(dual_attention_layers)).eval()
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
                    p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
    state = {k: v.clone() for k, v in reference.state_dict().items()}  # the conversion pops keys
    patcher = comfy.sd.load_diffusion_model_state_dict(state, {"dtype": torch.float32})
    if patcher is None:
        raise RuntimeError("ComfyUI did not detect the tiny diffusers SD3 state dict")
    return TinySD3(reference, patcher, blocks)


def sd3_inputs(batch: int = 2, size: int = 8, text: int = 5, sigma: float = 0.7, seed: int = 1) -> dict[str, Any]:
    """Latent x (B, 16, size, size), the step's sigma (one value), text context (B, L, CONTEXT), pooled (B, POOLED)."""
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, 16, size, size, generator=g), sigma=float(sigma),
                context=torch.randn(batch, text, CONTEXT, generator=g), y=torch.randn(batch, POOLED, generator=g))


def comfy_sd3_forward(patcher: Any, inputs: dict, cond_or_uncond: list[int], *, through: str = "apply_model",
                      sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """ComfyUI's SD3 on the inputs, set up as sampling sets it up: the ModelPatcher's transformer_options and
    wrappers (sampler_helpers), the chunk order, and the step's ``sigmas`` (calc_cond_batch: one value per latent of
    a chunk; pass the same object to two calls to model one step split in two calls). ``through``: "apply_model"
    (BaseModel.apply_model, its APPLY_MODEL wrappers and model_sampling, as the samplers call it; the diffusion
    model's own output is returned, taken by a forward hook) or "diffusion_model" (called directly with
    t = model_sampling.timestep(sigma), as a caller outside apply_model would)."""
    import comfy.patcher_extension

    x = inputs["x"]
    batch = x.shape[0]
    per = batch // len(cond_or_uncond)
    if sigmas is None:
        sigmas = torch.full((per,), inputs["sigma"])
    t = torch.cat([sigmas] * len(cond_or_uncond))
    options = dict(patcher.model_options.get("transformer_options", {}))
    options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
    options.update(cond_or_uncond=list(cond_or_uncond), sigmas=sigmas, uuids=[None] * len(cond_or_uncond))
    model = patcher.model
    with torch.no_grad():
        if through == "diffusion_model":
            timestep = patcher.get_model_object("model_sampling").timestep(t).float()
            return model.diffusion_model(x, timestep, inputs["context"], inputs["y"],
                                         transformer_options=options).float()
        seen = []
        handle = model.diffusion_model.register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            model.apply_model(x, t, c_crossattn=inputs["context"], y=inputs["y"], transformer_options=options)
        finally:
            handle.remove()
    assert len(seen) == 1
    return seen[0].float()


def diffusers_sd3_forward(reference: Any, inputs: dict, **kwargs: Any) -> torch.Tensor:
    """diffusers' forward on the same inputs (timestep = 1000 * sigma for every row). ``kwargs``:
    joint_attention_kwargs and the like."""
    x = inputs["x"]
    timestep = torch.full((x.shape[0],), 1000.0 * inputs["sigma"])
    with torch.no_grad():
        return reference(hidden_states=x, encoder_hidden_states=inputs["context"], pooled_projections=inputs["y"],
                         timestep=timestep, return_dict=False, **kwargs)[0].float()
