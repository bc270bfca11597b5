"""The InstantX SD3.5 math (families/sd3.py, sd3_resampler.py) against diffusers' IPAdapterTimeImageProjection and
SD3IPAdapterJointAttnProcessor2_0 as the oracle.

A tiny diffusers SD3Transformer2DModel within ComfyUI's MMDiT constraints (2 layers = 2 heads of 64, RMS qk-norm with
random weights) gets a random tiny adapter (resampler depth 4, FF x4, 2 heads) through its own loader
(``_load_ip_adapter_weights``, which converts the original keys itself). Checked, batch 2 with a different image and
a different timestep per row, scale 0.7:
- the resampler: tokens and temb vs diffusers' image_proj(features, t), and for the zero-feature uncond;
- per joint block: K_ip against the processor's own modules where the norms' eps matters, and the term from
  ComfyUI-style joint inputs (context first, q / k after the model's RMS qk-norm, v raw) vs the IP attention output
  inside diffusers' processor (its second SDPA call);
- the whole model: diffusers without the adapter, with a ComfyUI-style attention processor that adds s * our term,
  vs diffusers with the adapter.
Tolerances are relative to the size of the compared term or of the adapter's effect on the output.
"""
from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

try:
    import diffusers  # noqa: F401
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
except ImportError as e:  # the oracle is optional; the math is also checked by hand in test_sd3_family.py
    pytest.skip(f"diffusers is not importable ({e}): the diffusers oracle for InstantX SD3.5 cannot run",
                allow_module_level=True)

from ip_adapter_core.checkpoint import split_parts
from ip_adapter_core.families.sd3 import (InstantXSD3Model, block_ip_kv, joint_image_term, recover_raw_normed,
                                          sd3_image_term)
from ip_adapter_core.spec import detect_spec
from testkit.sd3_adapters import TINY, diffusers_tiny_sd3, sd3_state_dict, to_diffusers

HEADS, D, BLOCKS, ENC, N_FEAT = 2, 64, TINY["blocks"], TINY["enc"], 6
SCALE = 0.7
B, TXT, GRID = 2, 5, 8  # an 8 x 8 latent, patch 2: 16 image tokens
L_X = (GRID // 2) ** 2
SIGMAS = torch.tensor([0.9, 0.35])


@pytest.fixture(scope="module")
def case():
    plain = diffusers_tiny_sd3(num_layers=BLOCKS, joint_attention_dim=32, pooled_projection_dim=16)
    sd = sd3_state_dict(seed=1, **TINY)
    with_ip = copy.deepcopy(plain)
    with_ip._load_ip_adapter_weights(to_diffusers(sd), low_cpu_mem_usage=False)
    procs = [p for p in with_ip.attn_processors.values() if isinstance(p, SD3IPAdapterJointAttnProcessor2_0)]
    assert len(procs) == BLOCKS
    for p in procs:
        p.scale = SCALE
    g = torch.Generator().manual_seed(2)
    inputs = dict(hidden_states=torch.randn(B, 16, GRID, GRID, generator=g),
                  encoder_hidden_states=torch.randn(B, TXT, 32, generator=g),
                  pooled_projections=torch.randn(B, 16, generator=g), timestep=1000 * SIGMAS, return_dict=False)
    features = torch.randn(B, N_FEAT, ENC, generator=g)  # one image per row, different rows
    parts = split_parts(sd, name="'tiny.safetensors'")
    spec = detect_spec(parts.image_proj, parts.ip_adapter)
    ours = InstantXSD3Model.from_parts(spec, parts.image_proj, parts.ip_adapter)
    return dict(plain=plain, with_ip=with_ip, procs=procs, inputs=inputs, features=features, ours=ours)


def _close(got, want, reference, rel=1e-5, atol=1e-7):
    err, size = (got - want).abs().max().item(), reference.abs().max().item()
    print(f"max |diff| {err:.3g}, size {size:.3g}")
    assert size > 0 and err <= rel * size + atol, (err, size)
    return err, size


def _with_ip(c):
    """diffusers with the adapter: its output, each block's attention inputs (norm_hidden_states, norm context) and
    the IP attention output of each block (the processor's second SDPA call, (B, heads, L_x, d))."""
    inputs, sdpa_out, handles = {}, [], []
    real_sdpa = F.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        out = real_sdpa(*args, **kwargs)
        sdpa_out.append(out)
        return out

    for i, block in enumerate(c["with_ip"].transformer_blocks):
        handles.append(block.attn.register_forward_pre_hook(
            lambda m, a, kw, i=i: inputs.__setitem__(i, (kw["hidden_states"], kw["encoder_hidden_states"])),
            with_kwargs=True))
    try:
        with torch.no_grad(), mock.patch.object(F, "scaled_dot_product_attention", recording_sdpa):
            out = c["with_ip"](**c["inputs"], joint_attention_kwargs={"ip_adapter_image_embeds": c["features"]})[0]
    finally:
        for h in handles:
            h.remove()
    assert len(sdpa_out) == 2 * BLOCKS  # per block: the joint attention, then the IP attention
    return out, inputs, sdpa_out[1::2]


def _heads(t):
    return t.reshape(t.shape[0], t.shape[1], HEADS, D).transpose(1, 2)


def _flat(t):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], HEADS * D)


def comfy_joint_qkv(attn, x, ctx):
    """What ComfyUI's MMDiT hands its attention: (q, k, v) each (B, L_ctx + L_x, heads * d), context first, q and k
    after the RMS qk-norms (ln_q / ln_k, here the diffusers block's norm_q / norm_k and norm_added_*), v raw."""
    q = _flat(attn.norm_q(_heads(attn.to_q(x))))
    k = _flat(attn.norm_k(_heads(attn.to_k(x))))
    v = attn.to_v(x)
    cq = _flat(attn.norm_added_q(_heads(attn.add_q_proj(ctx))))
    ck = _flat(attn.norm_added_k(_heads(attn.add_k_proj(ctx))))
    cv = attn.add_v_proj(ctx)
    return torch.cat([cq, q], 1), torch.cat([ck, k], 1), torch.cat([cv, v], 1)


def test_tokens_and_temb_equal_diffusers_image_projection(case):
    t = case["inputs"]["timestep"]
    for features in (case["features"], torch.zeros_like(case["features"])):  # an image per row, and the uncond
        with torch.no_grad():
            want_tokens, want_temb = case["with_ip"].image_proj(features, t)
        tokens, temb = case["ours"].project(features, t)
        assert tokens.shape == (B, TINY["tokens"], TINY["hidden"]) and temb.shape == (B, TINY["dim"])
        _close(tokens, want_tokens, want_tokens)
        _close(temb, want_temb, want_temb)
        assert (tokens[0] - tokens[1]).abs().max() > 0.01 * tokens.abs().max()  # rows differ (timestep, image)
    # the timestep matters: row 0 at row 1's timestep gives row 1's temb and other tokens
    tokens_t1, temb_t1 = case["ours"].project(case["features"][:1], t[1:])
    _close(temb_t1[0], want_temb[1], want_temb)
    assert (tokens_t1[0] - tokens[0]).abs().max() > 0.01 * tokens.abs().max()


def test_block_kv_equals_the_processors_modules_where_the_eps_matters(case):
    """Small tokens and to_k_ip (variance ~ eps) make a 1e-5 / 1e-6 eps mix-up visible."""
    g = torch.Generator().manual_seed(3)
    tokens, temb = 1e-3 * torch.randn(B, 8, TINY["hidden"], generator=g), torch.randn(B, TINY["dim"], generator=g)
    for i, proc in enumerate(case["procs"]):
        small = copy.deepcopy(proc)
        with torch.no_grad():
            small.to_k_ip.weight.mul_(1e-3)
            n = small.norm_ip(tokens, temb=temb)
            want_k = small.norm_ip_k(_heads(small.to_k_ip(n)))
            want_v = _heads(small.to_v_ip(n))
        layer = copy.deepcopy(case["ours"].layers[i])
        layer.load_state_dict(small.state_dict(), strict=True)  # the processor's keys are the file's, after "{i}."
        k, v = block_ip_kv(layer, tokens, temb, HEADS)
        _close(k, want_k, want_k)
        _close(v, want_v, want_v)


def test_each_block_term_from_comfyui_inputs_equals_diffusers_ip_attention(case):
    _, inputs, ip = _with_ip(case)
    tokens, temb = case["ours"].project(case["features"], case["inputs"]["timestep"])
    for i, block in enumerate(case["with_ip"].transformer_blocks):
        attn, proc = block.attn, case["procs"][i]
        x, ctx = inputs[i]
        with torch.no_grad():
            q, k, v = comfy_joint_qkv(attn, x, ctx)
        k_ip, v_ip = case["ours"].block_kv(i, tokens, temb)
        rq, rk = case["ours"].norm_ratios(i, attn.norm_q.weight, attn.norm_k.weight)
        got = joint_image_term(q, k, v, k_ip, v_ip, txt_len=TXT, ratio_q=rq, ratio_k=rk)
        want = _flat(ip[i])
        assert got.shape == want.shape == (B, L_X, HEADS * D)
        _close(got, want, want)
        # the same through recover_raw_normed and sd3_image_term, heads split by hand
        qx = recover_raw_normed(_heads(q[:, TXT:]), attn.norm_q.weight, proc.norm_q.weight)
        kx = recover_raw_normed(_heads(k[:, TXT:]), attn.norm_k.weight, proc.norm_k.weight)
        _close(sd3_image_term(qx, kx, _heads(v[:, TXT:]), k_ip, v_ip), want, want)
    assert (_flat(ip[0]) - _flat(ip[1])).abs().max() > 0.1 * ip[0].abs().max()  # the blocks' terms differ


class ComfyStyleProcessor:
    """A joint attention as ComfyUI's MMDiT runs it (joint q / k / v, context first, after the qk-norms) plus
    s * our term on the image part before the out-projection: the host's attention-override recipe."""

    def __init__(self, ours, block, state):
        self.ours, self.block, self.state = ours, block, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        q, k, v = comfy_joint_qkv(attn, hidden_states, encoder_hidden_states)
        out = _flat(F.scaled_dot_product_attention(_heads(q), _heads(k), _heads(v)))
        ctx_out, x_out = out[:, :TXT], out[:, TXT:]
        tokens, temb = self.state["tokens"], self.state["temb"]
        k_ip, v_ip = self.ours.block_kv(self.block, tokens, temb)
        rq, rk = self.ours.norm_ratios(self.block, attn.norm_q.weight, attn.norm_k.weight)
        x_out = x_out + SCALE * joint_image_term(q, k, v, k_ip, v_ip, txt_len=TXT, ratio_q=rq, ratio_k=rk)
        x_out = attn.to_out[1](attn.to_out[0](x_out))
        if not attn.context_pre_only:
            ctx_out = attn.to_add_out(ctx_out)
        return x_out, ctx_out


def test_diffusers_without_the_adapter_plus_our_terms_equals_diffusers_with_it(case):
    want, _, _ = _with_ip(case)
    with torch.no_grad():
        without = case["plain"](**case["inputs"])[0]
    tokens, temb = case["ours"].project(case["features"], case["inputs"]["timestep"])
    ours = copy.deepcopy(case["plain"])
    state = dict(tokens=tokens, temb=temb)
    ours.set_attn_processor({name: ComfyStyleProcessor(case["ours"], i, state)
                             for i, name in enumerate(ours.attn_processors)})
    with torch.no_grad():
        got = ours(**case["inputs"])[0]
    effect = want - without
    assert effect.abs().max() > 1e-2 * without.abs().max()  # the adapter changes the output
    _close(got, want, effect, rel=1e-5, atol=1e-6)
