"""The XLabs Flux math (families/flux.py, rope.py) against diffusers' FluxIPAdapterAttnProcessor as the oracle.

A tiny diffusers FluxTransformer2DModel gets a random tiny XLabs adapter through its own loader
(``_load_ip_adapter_weights``, keys converted as diffusers' load_ip_adapter does). diffusers detects 16 tokens only
for 65536 projection rows, so the tiny oracle runs the 4-token path (the token count is a reshape our detection reads
from the shapes, tested in test_flux_family.py). Checked, batch 2 with a different image per row, scale 0.7:
- the tokens: our projection vs diffusers' image projection;
- per double block: s * xlabs_image_term(q, K, V) vs the ip_attn_output diffusers' processor returns, with q the
  image query its norm_q produced (after the RMS norm, before RoPE), and with q recovered by rope.unrope from the
  RoPE'd joint query (ComfyUI's pe for the same ids);
- the whole model: diffusers without the adapter, plus our term added after each double block, vs diffusers with it.
Tolerances are relative to the size of the compared term or of the adapter's effect on the output.
"""
from __future__ import annotations

import copy

import pytest
import torch

try:
    import diffusers  # noqa: F401
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor
except ImportError as e:  # the oracle is optional; the math is also checked by hand in test_flux_family.py
    pytest.skip(f"diffusers is not importable ({e}): the diffusers oracle for XLabs Flux cannot run",
                allow_module_level=True)

from ip_adapter_core.attention import add_image_term
from ip_adapter_core.checkpoint import split_parts
from ip_adapter_core.families.flux import XLabsModel, kv_for_tokens, layer_key, split_heads, xlabs_image_term
from ip_adapter_core.rope import unrope
from ip_adapter_core.spec import detect_spec
from testkit.flux_adapters import comfy_pe, diffusers_tiny_flux, flux_ids, to_diffusers, xlabs_state_dict

HEADS, HEAD_DIM, CTX, CLIP, BLOCKS, TOKENS = 2, 16, 32, 12, 2, 4
AXES = (4, 6, 6)
HIDDEN = HEADS * HEAD_DIM
SCALE = 0.7
B, GRID, TXT = 2, (3, 4), 5


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    plain = diffusers_tiny_flux(num_layers=BLOCKS, num_single_layers=1, heads=HEADS, head_dim=HEAD_DIM,
                                joint_attention_dim=CTX, pooled_projection_dim=16, axes_dims_rope=AXES)
    sd = xlabs_state_dict(tokens=TOKENS, clip_dim=CLIP, ctx=CTX, hidden=HIDDEN, blocks=BLOCKS, seed=1)
    with_ip = copy.deepcopy(plain)
    with_ip._load_ip_adapter_weights(to_diffusers(sd), low_cpu_mem_usage=False)
    procs = [p for p in with_ip.attn_processors.values() if isinstance(p, FluxIPAdapterAttnProcessor)]
    assert len(procs) == BLOCKS
    for p in procs:
        p.scale = [SCALE]
    g = torch.Generator().manual_seed(2)
    ids = flux_ids(*GRID, txt=TXT)
    inputs = dict(hidden_states=torch.randn(B, GRID[0] * GRID[1], 64, generator=g),
                  encoder_hidden_states=torch.randn(B, TXT, CTX, generator=g),
                  pooled_projections=torch.randn(B, 16, generator=g), timestep=torch.tensor([0.4, 0.8]),
                  guidance=torch.tensor([3.5, 3.5]), txt_ids=ids[:TXT], img_ids=ids[TXT:], return_dict=False)
    embeds = torch.randn(B, CLIP, generator=g)  # one image per row, different rows
    parts = split_parts(sd, name="'tiny.safetensors'")
    ours = XLabsModel.from_parts(detect_spec(parts.image_proj, parts.ip_adapter), parts.image_proj, parts.ip_adapter)
    return dict(plain=plain, with_ip=with_ip, sd=sd, inputs=inputs, embeds=embeds, ids=ids, ours=ours)


def _run_with_ip(c):
    """diffusers with the adapter; per double block: the norm_q output (B, L_img, heads, d) and ip_attn_output."""
    q, ip, handles = {}, {}, []
    for i, block in enumerate(c["with_ip"].transformer_blocks):
        handles.append(block.attn.norm_q.register_forward_hook(lambda m, a, out, i=i: q.__setitem__(i, out)))
        handles.append(block.attn.register_forward_hook(lambda m, a, out, i=i: ip.__setitem__(i, out[2])))
    try:
        with torch.no_grad():
            out = c["with_ip"](**c["inputs"], joint_attention_kwargs={"ip_adapter_image_embeds": [c["embeds"][:, None]]})[0]
    finally:
        for h in handles:
            h.remove()
    return out, q, ip


def _block_kv(c, tokens, i):
    sd = c["sd"]
    return kv_for_tokens(tokens, sd[layer_key(i, "k", "weight")], sd[layer_key(i, "k", "bias")],
                         sd[layer_key(i, "v", "weight")], sd[layer_key(i, "v", "bias")], HEADS)


def _close(got, want, reference, rel=1e-5):
    err, size = (got - want).abs().max().item(), reference.abs().max().item()
    print(f"max |diff| {err:.3g}, size {size:.3g}")
    assert size > 0 and err <= rel * size, (err, size)
    return err, size


def test_tokens_equal_diffusers_image_projection(case):
    with torch.no_grad():
        want = case["with_ip"].encoder_hid_proj([case["embeds"][:, None]])[0][:, 0]
    got = case["ours"].project(case["embeds"])
    assert got.shape == (B, TOKENS, CTX)
    _close(got, want, want)


def test_each_block_term_equals_diffusers_ip_attn_output(case):
    _, q, ip = _run_with_ip(case)
    tokens = case["ours"].project(case["embeds"])
    for i in range(BLOCKS):
        k, v = _block_kv(case, tokens, i)
        got = SCALE * xlabs_image_term(q[i].transpose(1, 2), k, v)
        assert got.shape == ip[i].shape == (B, GRID[0] * GRID[1], HIDDEN)
        _close(got, ip[i], ip[i])
        # the model's own route (site_kv, then the head split the host's K/V cache does) gives the same K and V
        k2, v2 = (split_heads(t, HEADS) for t in case["ours"].site_kv(i, tokens))
        assert torch.equal(k2, k) and torch.equal(v2, v)
        # attention.add_image_term (the UNet path's term, q flat, s folded into V) is the same math
        q_flat = q[i].flatten(2)
        _close(add_image_term(torch.zeros_like(q_flat), q_flat, k, SCALE * v), ip[i], ip[i])
    assert (ip[0] - ip[1]).abs().max() > 0.1 * ip[0].abs().max()  # the blocks' terms differ
    assert (ip[0][0] - ip[0][1]).abs().max() > 0.1 * ip[0].abs().max()  # so do the rows (different images)


def test_the_query_recovered_from_the_roped_joint_query_gives_the_same_term(case):
    """Path B of the host: the attention override sees the joint (txt + img) q after RoPE; rope.unrope with
    ComfyUI's pe for the same ids gives back the pre-RoPE q, whose image slice drives the term."""
    _, q, ip = _run_with_ip(case)
    tokens = case["ours"].project(case["embeds"])
    ids = case["ids"]
    rotary = case["with_ip"].pos_embed(ids)  # diffusers' (cos, sin) for txt + img
    pe = comfy_pe(ids[None], AXES)
    g = torch.Generator().manual_seed(3)
    for i in range(BLOCKS):
        q_img = q[i].transpose(1, 2)  # (B, heads, L_img, d)
        q_txt = torch.randn(B, HEADS, TXT, HEAD_DIM, generator=g)
        joint = apply_rotary_emb(torch.cat([q_txt, q_img], dim=2), rotary, sequence_dim=2)
        back = unrope(joint, pe)
        _close(back, torch.cat([q_txt, q_img], dim=2), joint)
        got = SCALE * xlabs_image_term(back[:, :, TXT:], *_block_kv(case, tokens, i))
        _close(got, ip[i], ip[i])


def test_diffusers_without_the_adapter_plus_our_terms_equals_diffusers_with_it(case):
    """The host's recipe: call the original double block, then add s * term to its image output."""
    want, _, _ = _run_with_ip(case)
    tokens = case["ours"].project(case["embeds"])
    kv = [_block_kv(case, tokens, i) for i in range(BLOCKS)]
    q, handles = {}, []
    for i, block in enumerate(case["plain"].transformer_blocks):
        handles.append(block.attn.norm_q.register_forward_hook(lambda m, a, out, i=i: q.__setitem__(i, out)))
        handles.append(block.register_forward_hook(
            lambda m, a, out, i=i: (out[0], out[1] + SCALE * xlabs_image_term(q[i].transpose(1, 2), *kv[i]))))
    try:
        with torch.no_grad():
            got = case["plain"](**case["inputs"])[0]
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        without = case["plain"](**case["inputs"])[0]
    effect = want - without
    assert effect.abs().max() > 1e-3 * without.abs().max()  # the adapter changes the output
    _close(got, want, effect)
