"""Fidelity: one UNet forward with this pack inside ComfyUI equals diffusers' IP-Adapter implementation.

The same random weights go into a tiny diffusers UNet2DConditionModel (reference/ip-adapter-formats.md §6: two levels,
CrossAttnDown + Down, Up + CrossAttnUp, so attn2 layers are N = 1 down0, 3 and 5 up1, 7 mid) and into the
equivalent ComfyUI SD1.5 UNet, copied with ComfyUI's own key map (comfy.utils.unet_to_diffusers). The same random
IP-Adapter file is loaded by diffusers (``unet._load_ip_adapter_weights``) and by this pack (IPA_ModelLoader,
IPA_Encode, IPA_Apply). Both get the same CLIP vision features: those of the tiny ComfyUI CLIP vision for the image,
and, for the uncond half of the batch, the reference's uncond input (zero image embeds for base adapters; penultimate
states of an all-zero normalised image for plus / full face).

Tolerance (fp32, CPU): |comfy - diffusers| <= 1e-5 + 1e-4 * |diffusers| elementwise (assert_close rtol 1e-4), while
the image prompt itself moves the output by more than 100x that; observed differences are ~1e-7.
"""
from __future__ import annotations

import copy
import gc
import os

import pytest
import torch

CTX = 768
COMFY_UNET = dict(
    use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False, adm_in_channels=None,
    in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1], transformer_depth=[1, 0],
    transformer_depth_output=[1, 1, 0, 0], channel_mult=[1, 2], transformer_depth_middle=1,
    use_linear_in_transformer=False, context_dim=CTX, use_temporal_resblock=False, use_temporal_attention=False,
)
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def unets(comfy_nodes):
    """(diffusers UNet, ComfyUI ModelPatcher) with identical random weights."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is the numerical oracle for this test")
    gc.collect()
    gc.freeze()  # keep ComfyUI's per-sampling gc.collect() cheap after this large import (see conftest.py)
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=32, cross_attention_dim=CTX, attention_head_dim=8).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            is_norm_scale = name.endswith("weight") and ("norm" in name.rsplit(".", 2)[-2])
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if is_norm_scale else 0.0))

    cfg = comfy.supported_models.SD15(COMFY_UNET)
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({}, "")
    key_map = comfy.utils.unet_to_diffusers(cfg.unet_config)
    source = unet.state_dict()
    unmapped = sorted(set(source) - set(key_map))
    assert not unmapped, f"ComfyUI's key map misses diffusers keys {unmapped[:5]}"
    result = model.diffusion_model.load_state_dict({key_map[k]: v for k, v in source.items()}, strict=False)
    assert not result.missing_keys and not result.unexpected_keys, result
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return unet, patcher


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500.0, 500.0]), torch.randn(2, 77, CTX, generator=g)


def comfy_forward(model, x, t, context, cond_or_uncond):
    """ComfyUI's UNet forward with the model's transformer_options, as calc_cond_batch sets them up."""
    options = copy.copy(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=list(cond_or_uncond), sigmas=torch.full((x.shape[0],), 5.0),
                   uuids=[None] * len(cond_or_uncond))
    with torch.no_grad():
        return model.model.diffusion_model(x, timesteps=t, context=context, transformer_options=options).float()


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


def test_unets_match_without_adapter(unets, inputs, pack_module):
    unet, patcher = unets
    x, t, ctx = inputs
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=ctx).sample
    close(comfy_forward(patcher, x, t, ctx, [1, 0]), expected)
    sites = pack_module("nodes.patch.host").model_sites(patcher)
    assert [s.key for s in sites] == [("input", 1, 0), ("output", 2, 0), ("output", 3, 0), ("middle", 0, 0)]


@pytest.mark.parametrize("kind, n_images, weight, order, dtype", [
    ("base", 1, 1.0, [1, 0], torch.float32),
    ("base", 2, 0.6, [0, 1], torch.float32),
    ("base", 1, 1.0, [0], torch.float32),
    ("plus", 1, 1.0, [1, 0], torch.float32),
    ("plus", 2, 0.7, [0, 1], torch.float32),
    ("plus", 1, 1.0, [1, 0], torch.float16),
    ("full_face", 1, 1.0, [1, 0], torch.float32),
], ids=["base", "base-2images-w0.6", "base-cond-only", "plus", "plus-2images-w0.7", "plus-fp16-file", "full_face"])
def test_forward_matches_diffusers(unets, inputs, ipadapter_dir, make_adapter_file, make_clip_vision, make_image,
                                   run_node, kind, n_images, weight, order, dtype):
    """fp16 file: published weights are fp16; both sides compute in fp32 from the same fp16 values."""
    unet, patcher = unets
    cv = make_clip_vision()
    sub = ipadapter_dir / "oracle"
    sub.mkdir(exist_ok=True)
    path = make_adapter_file(sub, kind, patcher, cv, seed=11, resampler_heads=2, dtype=dtype)
    name = f"oracle/{os.path.basename(path)}"

    # this pack, through its nodes
    adapter = run_node("IPA_ModelLoader", ipadapter_file=name)["result"][0]
    image = make_image(21, batch=n_images)
    embeds = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image)[0]
    patched = run_node("IPA_Apply", model=patcher, ipadapter=adapter, weight=weight, start_at=0.0, end_at=1.0,
                       embeds=embeds)[0]

    # diffusers, same weights and the same CLIP features
    from safetensors.torch import load_file

    flat = load_file(path)
    state = {part: {k[len(part) + 1:]: v for k, v in flat.items() if k.startswith(part + ".")}
             for part in ("image_proj", "ip_adapter")}
    reference = copy.deepcopy(unet)
    reference._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    processors = [p for p in reference.attn_processors.values() if hasattr(p, "to_k_ip")]
    assert len(processors) == 4
    for p in processors:
        p.scale = [weight]
    with torch.no_grad():
        out = cv.encode_image(image)
        if kind == "base":
            cond = out["image_embeds"].float()
            uncond = torch.zeros_like(cond)
        else:
            cond = out["penultimate_hidden_states"].float()
            zero_pixels = torch.zeros(n_images, 3, cv.image_size, cv.image_size)
            uncond = cv.model(pixel_values=zero_pixels, intermediate_output=-2)[1].float()

    n = len(order)
    x, t, ctx = (v[:n] for v in inputs)
    # one chunk per batch item; diffusers takes one (n_images, ...) feature block per item
    features = torch.stack([cond if c == 0 else uncond for c in order])
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=ctx, added_cond_kwargs={"image_embeds": [features]}).sample
        without = unet(x, t, encoder_hidden_states=ctx).sample

    actual = comfy_forward(patched, x, t, ctx, order)
    effect = (expected - without).abs().max().item()
    tolerance = ATOL + RTOL * expected.abs().max().item()
    assert effect > 100 * tolerance, f"the image prompt barely moves the output ({effect} vs tolerance {tolerance})"
    close(actual, expected)


# ------------------------------------------------------------------------------------------- the LoRA route (FaceID)

def _faceid_lora(unet, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A random LoRA in the FaceID file format, numbered as the official code numbers its processors: N = position in
    diffusers' ``unet.attn_processors`` (attn1 and attn2 of every transformer block)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(unet.named_modules())
    lora = {}
    for n, name in enumerate(unet.attn_processors):
        attn = modules[name.rsplit(".processor", 1)[0]]
        for proj, layer in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v), ("out", attn.to_out[0])):
            lora[f"{n}.to_{proj}_lora.down.weight"] = torch.randn(rank, layer.in_features, generator=g) * 0.2
            lora[f"{n}.to_{proj}_lora.up.weight"] = torch.randn(layer.out_features, rank, generator=g) * 0.2
    return lora


def _merged(unet, lora: dict[str, torch.Tensor], strength: float):
    """diffusers' UNet with W += strength * up @ down on the processor's layers (the official LoRAAttnProcessor adds
    up(down(x)) to each projection, network_alpha None)."""
    merged = copy.deepcopy(unet)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for n, name in enumerate(merged.attn_processors):
            attn = modules[name.rsplit(".processor", 1)[0]]
            for proj, layer in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v), ("out", attn.to_out[0])):
                down, up = lora[f"{n}.to_{proj}_lora.down.weight"], lora[f"{n}.to_{proj}_lora.up.weight"]
                layer.weight += strength * (up @ down)
    return merged


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_lora_route_matches_diffusers_merged_lora(unets, inputs, pack_module, strength):
    """The LoRA route (nodes/patch/lora.py over ip_adapter_core.lora) puts every FaceID LoRA pair on the weight the
    official code puts it on: ComfyUI's loaded clone equals diffusers with the pairs merged by processor number. The
    caller's model keeps no patch, the clone shares the model's weights (no copy), and unloading restores them."""
    import comfy.model_management as mm

    unet, patcher = unets
    lora = _faceid_lora(unet, rank=4, seed=5)
    x, t, ctx = inputs
    with torch.no_grad():
        expected = _merged(unet, lora, strength)(x, t, encoder_hidden_states=ctx).sample
        without = unet(x, t, encoder_hidden_states=ctx).sample
    before = {k: v.clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
    m = patcher.clone()
    count = pack_module("nodes.patch.lora").add_lora(m, lora, strength, adapter_name="lora", where="test")
    assert count == len(lora) // 2 == 32
    assert not patcher.patches and m.model is patcher.model
    try:
        mm.load_models_gpu([m])
        actual = comfy_forward(m, x, t, ctx, [1, 0])
    finally:
        mm.unload_all_models()
    effect = (expected - without).abs().max().item()
    assert effect > 100 * (ATOL + RTOL * expected.abs().max().item()), effect
    close(actual, expected)
    after = patcher.model.diffusion_model.state_dict()
    assert all(torch.equal(before[k], after[k].to(before[k].device)) for k in before), "weights not restored"


def test_lora_route_refuses_a_lora_for_another_model(unets, pack_module):
    unet, patcher = unets
    lora = _faceid_lora(unet, rank=4, seed=6)
    lora["9.to_q_lora.down.weight"], lora["9.to_q_lora.up.weight"] = torch.zeros(4, 32), torch.zeros(32, 4)
    with pytest.raises(Exception, match=r"test: 'x' has a LoRA for attention processor 9, but the model has 8") as e:
        pack_module("nodes.patch.lora").add_lora(patcher.clone(), lora, 1.0, adapter_name="x", where="test")
    assert type(e.value).__name__ == "IncompatibleError"
    wide = _faceid_lora(unet, rank=4, seed=7)
    wide["1.to_k_lora.down.weight"] = torch.zeros(4, 1024)
    with pytest.raises(Exception, match=r"LoRA '1.to_k' is down \(4, 1024\).*maps 768 -> 32"):
        pack_module("nodes.patch.lora").add_lora(patcher.clone(), wide, 1.0, adapter_name="x", where="test")
