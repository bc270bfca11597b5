"""The InstantX Flux math (families/flux_instantx.py, rope.py) inside diffusers' Flux, against a reference written
the way the published code computes it.

There is no diffusers implementation of this adapter, so the oracle is a re-implementation of Shakker-Labs'
``IPAFluxAttnProcessor2_0`` / ``MLPProjModel`` (InstantX's reference processor, dit-adapters.md §1.2) with diffusers
and torch modules: nn.Linear(bias=False) layers, diffusers' ``RMSNorm(head_dim, eps=1e-5, elementwise_affine=False)``
on ``B H L D`` K and V, nn.Sequential(Linear, GELU, Linear) + nn.LayerNorm for the tokens, the query taken after
norm_q and before RoPE, the term added before to_out (double blocks) / as the whole attention output (single
blocks). Variant A (that reference, inside a tiny diffusers FluxTransformer2DModel) vs variant B (what the host
does in ComfyUI's attention override: the post-RoPE joint q, ``rope.unrope`` with ComfyUI's pe, K and w*V from the
host's cache ``attention.site_kv`` over ``InstantXModel.site_kv``, ``instantx_term`` added to the output slice).
Batch 2 with a different image per row; 2 double + 3 single blocks (5 sites). Tolerances relative to the effect.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

try:
    from testkit.instantx_flux_reference import IPAFlux, MLPProjModel, Processor
except ImportError as e:  # the oracle is optional; the math is also checked by hand in test_instantx_flux_family.py
    pytest.skip(f"diffusers is not importable ({e}): the InstantX Flux oracle cannot run", allow_module_level=True)

from ip_adapter_core.attention import site_kv
from ip_adapter_core.families.flux_instantx import InstantXModel, instantx_term, site_kinds
from ip_adapter_core.rope import unrope
from ip_adapter_core.spec import detect_spec
from testkit.flux_adapters import comfy_pe, diffusers_tiny_flux, flux_ids
from testkit.instantx_flux_adapters import instantx_parts

HEADS, HEAD_DIM, CTX, ENC, TOKENS, DOUBLE, SINGLE = 2, 16, 32, 12, 4, 2, 3
HIDDEN = HEADS * HEAD_DIM
AXES = (4, 6, 6)
SCALE = 0.7
B, GRID, TXT = 2, (3, 4), 5


def _blocks(model):
    return [b.attn for b in model.transformer_blocks] + [b.attn for b in model.single_transformer_blocks]


@pytest.fixture(scope="module")
def case():
    plain = diffusers_tiny_flux(num_layers=DOUBLE, num_single_layers=SINGLE, heads=HEADS, head_dim=HEAD_DIM,
                                joint_attention_dim=CTX, pooled_projection_dim=16, axes_dims_rope=AXES)
    image_proj, ip_adapter = instantx_parts(tokens=TOKENS, enc=ENC, ctx=CTX, hidden=HIDDEN, sites=DOUBLE + SINGLE,
                                            seed=1)
    g = torch.Generator().manual_seed(2)
    ids = flux_ids(*GRID, txt=TXT)
    inputs = dict(hidden_states=torch.randn(B, GRID[0] * GRID[1], 64, generator=g),
                  encoder_hidden_states=torch.randn(B, TXT, CTX, generator=g),
                  pooled_projections=torch.randn(B, 16, generator=g), timestep=torch.tensor([0.4, 0.8]),
                  guidance=torch.tensor([3.5, 3.5]), txt_ids=ids[:TXT], img_ids=ids[TXT:], return_dict=False)
    pooled = 2.0 * torch.randn(B, ENC, generator=g)  # one image per row
    spec = detect_spec(image_proj, ip_adapter, name="'tiny.bin'")
    ours = InstantXModel.from_parts(spec, image_proj, ip_adapter, head_dim=HEAD_DIM)
    ref_proj = MLPProjModel(CTX, ENC, TOKENS).eval()
    ref_proj.load_state_dict(image_proj, strict=True)
    ref_ip = nn.ModuleList(IPAFlux(HIDDEN, CTX, SCALE, HEAD_DIM) for _ in range(DOUBLE + SINGLE)).eval()
    ref_ip.load_state_dict(ip_adapter, strict=True)  # the file's ip_adapter keys are this ModuleList's
    return dict(plain=plain, inputs=inputs, pooled=pooled, ids=ids, spec=spec, ours=ours, ref_proj=ref_proj,
                ref_ip=ref_ip)


def _run(c, adders):
    """The tiny Flux's output with one Processor(add) per block (double blocks first, as the sites)."""
    model = copy.deepcopy(c["plain"])
    for attn, add in zip(_blocks(model), adders):
        attn.set_processor(Processor(add))
    with torch.no_grad():
        return model(**c["inputs"])[0]


def _reference(c):
    """Variant A: Shakker's processor math on the pre-RoPE query."""
    with torch.no_grad():
        tokens = c["ref_proj"](c["pooled"])
    adders = []
    for site, (kind, _) in enumerate(site_kinds(c["spec"], DOUBLE, SINGLE)):
        def add(pre, q_rot, out, site=site, kind=kind):
            ip = c["ref_ip"][site](HEADS, pre.transpose(1, 2), tokens)
            if kind == "double":
                return torch.cat([out[:, :TXT], out[:, TXT:] + ip], dim=1)
            return out + ip
        adders.append(add)
    return adders


def _ours(c, seen=None):
    """Variant B: the host's path from the post-RoPE joint q (B, heads, L, d) as ComfyUI's override receives it."""
    tokens = c["ours"].project(c["pooled"])
    pe = comfy_pe(c["ids"][None], AXES)
    adders = []
    for site, (kind, _) in enumerate(site_kinds(c["spec"], DOUBLE, SINGLE)):
        k, v = site_kv(lambda t, site=site: c["ours"].site_kv(site, t), tokens, torch.zeros_like(tokens),
                       weight=SCALE, cond_or_uncond=[0], per_chunk=B, heads=HEADS, device=torch.device("cpu"),
                       dtype=torch.float32)

        def add(pre, q_rot, out, site=site, kind=kind, k=k, v=v):
            q = unrope(q_rot.transpose(1, 2), pe)  # (B, heads, L, d), before RoPE again
            if seen is not None:  # the reference's pre-RoPE q: the image tokens (double), every token (single)
                seen[site] = (q[:, :, TXT:] if kind == "double" else q, pre.transpose(1, 2))
            if kind == "double":
                return torch.cat([out[:, :TXT], out[:, TXT:] + instantx_term(q[:, :, TXT:], k, v)], dim=1)
            return out + instantx_term(q, k, v)
        adders.append(add)
    return adders


def _close(got, want, reference, rel=1e-5, what=""):
    err, size = (got - want).abs().max().item(), reference.abs().max().item()
    print(f"{what}: max |diff| {err:.3g}, size {size:.3g}")
    assert size > 0 and err <= rel * size, (what, err, size)


def test_tokens_equal_the_published_mlp_projection(case):
    with torch.no_grad():
        want = case["ref_proj"](case["pooled"])
    _close(case["ours"].project(case["pooled"]), want, want, what="tokens")


def test_each_sites_kv_equals_the_reference_processors_normalised_kv(case):
    tokens = case["ours"].project(case["pooled"])
    for site, ref in enumerate(case["ref_ip"]):
        with torch.no_grad():
            want_k = ref.norm_added_k(ref.to_k_ip(tokens).view(B, TOKENS, HEADS, -1).transpose(1, 2))
            want_v = ref.norm_added_v(ref.to_v_ip(tokens).view(B, TOKENS, HEADS, -1).transpose(1, 2))
        k, v = (t.view(B, TOKENS, HEADS, -1).transpose(1, 2) for t in case["ours"].site_kv(site, tokens))
        _close(k, want_k, want_k, what=f"site {site} K")
        _close(v, want_v, want_v, what=f"site {site} V")


def test_diffusers_flux_with_our_override_equals_the_reference_processor(case):
    plain = _run(case, [lambda pre, q, out: out] * (DOUBLE + SINGLE))
    want = _run(case, _reference(case))
    seen = {}
    got = _run(case, _ours(case, seen))
    effect = want - plain
    assert effect.abs().max() > 1e-2 * plain.abs().max()  # the adapter changes the output
    for site, (q, pre) in seen.items():
        _close(q, pre, pre, what=f"site {site} unroped q")
    _close(got, want, effect, what="whole model vs reference")


def test_every_site_matters(case):
    """Leaving out any one site's term (double or single) changes the output: each is exercised above."""
    want = _run(case, _reference(case))
    ours = _ours(case)
    for site in range(DOUBLE + SINGLE):
        skipped = list(ours)
        skipped[site] = lambda pre, q, out: out
        diff = (_run(case, skipped) - want).abs().max()
        assert diff > 1e-4 * want.abs().max(), site
