"""Fidelity on Flux: one forward of ComfyUI's own Flux with an XLabs adapter applied by this pack's nodes equals
diffusers' FluxTransformer2DModel with the same adapter loaded (its FluxIPAdapterAttnProcessor).

The same random weights go into a tiny diffusers Flux and ComfyUI's Flux classes (testkit/tiny_flux.py: 2 double
blocks + 1 single block, hidden 128, 2 heads of 64); the same random XLabs file (testkit/flux_adapters.py, 4 tokens:
the only count diffusers detects below the published width) is loaded by diffusers
(``transformer._load_ip_adapter_weights``) and by this pack (IPA Load Adapter, IPA Encode Image, IPA Apply). Both get
the same CLIP features: the tiny ComfyUI CLIP vision's image_embeds of the reference, and for uncond chunks those of
a black image (XLabs' and diffusers' negative image prompt). The pack's path is the block path (nodes/patch/blocks.py):
ComfyUI's own double block runs untouched, the attention override only records the query, RoPE is undone, the term
is added after the block.

Tolerance (fp32, CPU): |comfy - diffusers| <= 1e-5 + 1e-4 * max|diffusers| (the pack's oracle tests' rtol 1e-4),
while the image prompt moves the output by more than 100x that.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

from testkit.flux_adapters import to_diffusers, write_xlabs
from testkit.tiny_flux import CONTEXT, HIDDEN, build_tiny_flux, comfy_flux_forward, diffusers_flux_forward, flux_inputs

RTOL, ATOL = 1e-4, 1e-5
CLIP_PROJ = 40  # make_clip_vision's default projection width: the adapter reads these image embeds


@pytest.fixture(scope="module")
def flux(comfy_nodes):
    pytest.importorskip("diffusers", reason="diffusers is the numerical oracle for this test")
    return build_tiny_flux(double_blocks=2, single_blocks=1, seed=0)


@pytest.fixture(scope="module")
def xlabs_file(flux, ipadapter_dir):
    sub = ipadapter_dir / "oracle_flux"
    sub.mkdir(exist_ok=True)
    path = str(sub / "xlabs_flux_tiny.safetensors")
    if not os.path.exists(path):
        write_xlabs(path, tokens=4, clip_dim=CLIP_PROJ, ctx=CONTEXT, hidden=HIDDEN, blocks=flux.double_blocks, seed=3)
    return path


def _close(actual, expected, without):
    effect = float((expected - without).abs().max())
    tolerance = ATOL + RTOL * float(expected.abs().max())
    assert effect > 100 * tolerance, f"the image prompt barely moves the output ({effect} vs tolerance {tolerance})"
    delta = float((actual - expected).abs().max())
    assert delta <= tolerance, f"max |comfy - diffusers| = {delta:.3g} > {tolerance:.3g} (effect {effect:.3g})"
    return delta, effect


def test_tiny_flux_matches_diffusers_without_adapter(flux, pack_module):
    inputs = flux_inputs()
    torch.testing.assert_close(comfy_flux_forward(flux.patcher, inputs, [0, 0]),
                               diffusers_flux_forward(flux.reference, inputs), rtol=RTOL, atol=ATOL)
    host = pack_module("nodes.patch.host")
    assert [s.key for s in host.dit_sites(flux.patcher, ("double",))] == [("double", 0, 0), ("double", 1, 0)]
    assert host.model_context_dim(flux.patcher) == CONTEXT


@pytest.mark.parametrize("n_images, weight, order", [
    (1, 1.0, [0]), (1, 0.7, [0, 0]), (1, 0.8, [1, 0]), (2, 0.6, [0, 1]),
], ids=["cond-only", "batch2-w0.7", "uncond-cond", "2images-cond-uncond"])
def test_xlabs_forward_matches_diffusers(flux, xlabs_file, make_clip_vision, make_image, run_node, n_images, weight,
                                         order):
    cv = make_clip_vision()
    name = f"oracle_flux/{os.path.basename(xlabs_file)}"
    adapter = run_node("IPA_ModelLoader", ipadapter_file=name)["result"][0]
    image = make_image(21, batch=n_images)
    embeds = run_node("IPA_Encode", ipadapter=adapter, clip_vision=cv, image=image)[0]
    patched = run_node("IPA_Apply", model=flux.patcher, ipadapter=adapter, weight=weight, start_at=0.0, end_at=1.0,
                       embeds=embeds)[0]

    from safetensors.torch import load_file

    reference = copy.deepcopy(flux.reference)
    reference._load_ip_adapter_weights(to_diffusers(load_file(xlabs_file)), low_cpu_mem_usage=False)
    processors = [p for p in reference.attn_processors.values() if hasattr(p, "to_k_ip")]
    assert len(processors) == flux.double_blocks
    for p in processors:
        p.scale = [weight]
    with torch.no_grad():
        cond = cv.encode_image(image)["image_embeds"].float()  # (n_images, E)
        black = cv.encode_image(torch.zeros(1, 64, 64, 3))["image_embeds"].float().expand(n_images, -1)
    features = torch.stack([cond if c == 0 else black for c in order])  # (B, n_images, E): diffusers' layout
    inputs = flux_inputs(batch=len(order))
    expected = diffusers_flux_forward(reference, inputs,
                                      joint_attention_kwargs={"ip_adapter_image_embeds": [features]})
    without = diffusers_flux_forward(flux.reference, inputs)
    actual = comfy_flux_forward(patched, inputs, order)
    delta, effect = _close(actual, expected, without)
    print(f"\nXLabs {n_images} image(s), weight {weight}, chunks {order}: max |comfy - diffusers| = {delta:.3g}, "
          f"effect {effect:.3g}")
    # the caller's model is untouched
    assert not flux.patcher.model_options.get("transformer_options", {}).get("patches_replace")
