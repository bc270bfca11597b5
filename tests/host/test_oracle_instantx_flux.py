"""Fidelity on Flux for the InstantX adapter: one forward of ComfyUI's own Flux with an InstantX file applied by this
pack's nodes (IPA Load Adapter, IPA Apply) equals a tiny diffusers Flux running the reference processor
(testkit/instantx_flux_reference.py: Shakker-Labs' IPAFluxAttnProcessor2_0 math written with diffusers modules;
diffusers has no implementation of this adapter) on the same weights.

The pack's path is the block path's "inside" terms (nodes/patch/blocks.py): ComfyUI's own double and single blocks
run untouched; the attention override records the joint query, undoes RoPE, and adds the term to the attention output
before the out-projection (a double block's image rows, a single block's every row). The tokens are the adapter's
projection of a random pooled SigLIP feature per row (the encoder's pooled output is tested on its own), given to
IPA Apply as embeds. Tolerance (fp32, CPU): 1e-5 + 1e-4 * max|reference|, with an effect > 100x that.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

from testkit.instantx_flux_adapters import write_instantx
from testkit.tiny_flux import CONTEXT, HEADS, HIDDEN, build_tiny_flux, comfy_flux_forward, diffusers_flux_forward, flux_inputs

ENC, TOKENS = 12, 4
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def flux(comfy_nodes):
    pytest.importorskip("diffusers", reason="diffusers runs the reference processor for this test")
    return build_tiny_flux(double_blocks=2, single_blocks=2, seed=0)


@pytest.fixture(scope="module")
def instantx(flux, ipadapter_dir, run_node):
    sub = ipadapter_dir / "oracle_instantx"
    sub.mkdir(exist_ok=True)
    path = str(sub / "instantx_flux_tiny.bin")
    if not os.path.exists(path):
        write_instantx(path, seed=5, tokens=TOKENS, enc=ENC, ctx=CONTEXT, hidden=HIDDEN,
                       sites=flux.double_blocks + flux.single_blocks)
    out = run_node("IPA_ModelLoader", ipadapter_file="oracle_instantx/instantx_flux_tiny.bin")
    return out["result"][0], path


def _reference_adders(flux, path, tokens_per_row, weight, txt):
    """One hook per block (double blocks, then single), adding the reference's term with the file's weights."""
    from testkit.instantx_flux_reference import IPAFlux

    nested = torch.load(path, weights_only=True)
    layers = torch.nn.ModuleList(IPAFlux(HIDDEN, CONTEXT, weight, HIDDEN // HEADS)
                                 for _ in range(flux.double_blocks + flux.single_blocks)).eval()
    layers.load_state_dict(nested["ip_adapter"], strict=True)
    adders = []
    for site in range(flux.double_blocks + flux.single_blocks):
        def add(pre, q_rot, out, site=site, double=site < flux.double_blocks):
            ip = layers[site](HEADS, pre.transpose(1, 2), tokens_per_row)
            return torch.cat([out[:, :txt], out[:, txt:] + ip], dim=1) if double else out + ip
        adders.append(add)
    return adders


@pytest.mark.parametrize("weight, order", [(1.0, [0]), (0.7, [0, 0]), (0.8, [1, 0])],
                         ids=["cond-only", "batch2-w0.7", "uncond-cond"])
def test_instantx_forward_matches_the_reference_processor(flux, instantx, pack_module, run_node, weight, order):
    from testkit.instantx_flux_reference import Processor

    adapter, path = instantx
    g = torch.Generator().manual_seed(11)
    pooled_cond, pooled_uncond = 2.0 * torch.randn(1, ENC, generator=g), 2.0 * torch.randn(1, ENC, generator=g)
    cond, uncond = adapter.model.project(pooled_cond).float(), adapter.model.project(pooled_uncond).float()
    embeds = pack_module("ip_adapter_core.embeds").ImageTokens(cond=cond, uncond=uncond, spec=adapter.spec,
                                                                adapter_id=adapter.adapter_id, adapter_name=adapter.name)
    patched = run_node("IPA_Apply", model=flux.patcher, ipadapter=adapter, weight=weight, start_at=0.0, end_at=1.0,
                       embeds=embeds)[0]

    inputs = flux_inputs(batch=len(order))
    txt = inputs["context"].shape[1]
    with torch.no_grad():  # the reference's own MLP projection, from the file
        from testkit.instantx_flux_reference import MLPProjModel

        proj = MLPProjModel(CONTEXT, ENC, TOKENS).eval()
        proj.load_state_dict(torch.load(path, weights_only=True)["image_proj"], strict=True)
        rows = torch.cat([proj(pooled_cond if c == 0 else pooled_uncond) for c in order])
    reference = copy.deepcopy(flux.reference)
    blocks = [b.attn for b in reference.transformer_blocks] + [b.attn for b in reference.single_transformer_blocks]
    for attn, add in zip(blocks, _reference_adders(flux, path, rows, weight, txt)):
        attn.set_processor(Processor(add))
    expected = diffusers_flux_forward(reference, inputs)
    without = diffusers_flux_forward(flux.reference, inputs)
    actual = comfy_flux_forward(patched, inputs, order)
    effect = float((expected - without).abs().max())
    tolerance = ATOL + RTOL * float(expected.abs().max())
    delta = float((actual - expected).abs().max())
    print(f"\nInstantX weight {weight}, chunks {order}: max |comfy - reference| = {delta:.3g}, effect {effect:.3g}")
    assert effect > 100 * tolerance, f"the image prompt barely moves the output ({effect} vs {tolerance})"
    assert delta <= tolerance, f"max |comfy - reference| = {delta:.3g} > {tolerance:.3g}"
    sites = pack_module("nodes.patch.host").dit_sites(flux.patcher, ("double", "single"))
    assert [s.key for s in sites] == [("double", 0, 0), ("double", 1, 0), ("single", 0, 0), ("single", 1, 0)]
