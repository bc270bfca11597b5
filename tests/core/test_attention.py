"""The decoupled attention term (formats reference §3) against diffusers' IPAdapterAttnProcessor2_0, plus the batch
layout helpers and the sigma gate.

Layout contract under test (ip_adapter_core.attention): q, out (B, Nq, heads*d); K', w*V' split into heads,
(B, heads, T, d), as site_kv returns them.

Tolerance for the diffusers comparison (fp32): atol = rtol = 1e-5. Both sides run torch SDPA on the same
projections; they differ only in where w is applied (folded into V' here, after the attention in diffusers), which
changes rounding at ~1e-7 relative.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ip_adapter_core.attention import add_image_term, batch_for_chunks, concat_images, sigma_gate, site_kv
from testkit.aten import AtenLog

ATOL = RTOL = 1e-5
HIDDEN, HEADS, CTX = 64, 4, 32
D = HIDDEN // HEADS


def gen(seed):
    return torch.Generator().manual_seed(seed)


def split(t, heads=HEADS):
    """(B, N, heads*d) -> (B, heads, N, d), written here independently of the code under test."""
    b, n, hd = t.shape
    return t.reshape(b, n, heads, hd // heads).permute(0, 2, 1, 3)


def merge(t):
    b, h, n, d = t.shape
    return t.permute(0, 2, 1, 3).reshape(b, n, h * d)


def sdpa(q, k, v, heads=HEADS):
    """A plain torch SDPA wrapper in the host's (B, N, heads*d) layout."""
    return merge(F.scaled_dot_product_attention(split(q, heads), split(k, heads), split(v, heads)))


def manual_attention(q, k, v, heads=HEADS):
    """softmax(q k^T / sqrt(d)) v per head, written out by hand (no SDPA)."""
    qh, kh, vh = split(q, heads), split(k, heads), split(v, heads)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)
    return merge(w @ vh)


def diffusers_attention(scales, num_tokens, seed=0):
    from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

    torch.manual_seed(seed)
    attn = Attention(query_dim=HIDDEN, cross_attention_dim=CTX, heads=HEADS, dim_head=D, out_bias=True)
    proc = IPAdapterAttnProcessor2_0(hidden_size=HIDDEN, cross_attention_dim=CTX, num_tokens=num_tokens, scale=scales)
    attn.set_processor(proc)
    return attn.eval(), proc


def host_side(attn, hs, text):
    """What the host hands an attn2 patch: q, and the text attention output (before to_out)."""
    q = attn.to_q(hs)
    return q, sdpa(q, attn.to_k(text), attn.to_v(text))


@torch.no_grad()
@pytest.mark.parametrize("w", [1.0, 0.7, 2.5])
def test_term_matches_diffusers_processor(w):
    attn, proc = diffusers_attention(w, (4,))
    hs = torch.randn(2, 10, HIDDEN, generator=gen(1))
    text = torch.randn(2, 7, CTX, generator=gen(2))
    ip = torch.randn(2, 4, CTX, generator=gen(3))
    want = attn(hs, encoder_hidden_states=(text, [ip]))

    q, base = host_side(attn, hs, text)
    k_ip, v_ip = proc.to_k_ip[0](ip), proc.to_v_ip[0](ip)
    out = add_image_term(base, q, split(k_ip).contiguous(), split(w * v_ip).contiguous())
    got = attn.to_out[0](out)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    # Control: the image term is not negligible, so the comparison above checks it.
    assert (attn.to_out[0](base) - want).abs().max() > 100 * ATOL


@torch.no_grad()
@pytest.mark.parametrize("order,per_chunk", [([1, 0], 1), ([0, 1], 1), ([1, 0], 2), ([0], 3)])
def test_site_kv_chain_matches_diffusers_cfg_batch(order, per_chunk):
    # Full chain: cond/uncond tokens -> site_kv (weight folded, laid out for ComfyUI's chunk order) -> add_image_term,
    # against diffusers given the same per-row image tokens.
    w = 0.8
    attn, proc = diffusers_attention(w, (4,))
    cond = torch.randn(1, 4, CTX, generator=gen(4))
    uncond = torch.randn(1, 4, CTX, generator=gen(5))
    b = len(order) * per_chunk
    hs = torch.randn(b, 9, HIDDEN, generator=gen(6))
    text = torch.randn(b, 7, CTX, generator=gen(7))
    rows = torch.cat([(cond if c == 0 else uncond).expand(per_chunk, -1, -1) for c in order])
    want = attn(hs, encoder_hidden_states=(text, [rows]))

    q, base = host_side(attn, hs, text)
    k_ip, v_ip = site_kv(lambda t: (proc.to_k_ip[0](t), proc.to_v_ip[0](t)), cond, uncond, weight=w,
                         cond_or_uncond=order, per_chunk=per_chunk, heads=HEADS, device=q.device, dtype=q.dtype)
    assert k_ip.shape == v_ip.shape == (b, HEADS, 4, D)
    got = attn.to_out[0](add_image_term(base, q, k_ip, v_ip))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_two_adapters_compose_as_a_sum():
    # Several adapters on one site: Z += sum_j w_j Attn(Q, K'_j, V'_j) (§3), as diffusers' multi-adapter processor.
    w1, w2 = 0.6, 1.3
    attn, proc = diffusers_attention([w1, w2], (4, 16))
    hs = torch.randn(2, 10, HIDDEN, generator=gen(8))
    text = torch.randn(2, 7, CTX, generator=gen(9))
    ip1, ip2 = torch.randn(2, 4, CTX, generator=gen(10)), torch.randn(2, 16, CTX, generator=gen(11))
    want = attn(hs, encoder_hidden_states=(text, [ip1, ip2]))

    q, out = host_side(attn, hs, text)
    for i, (w, ip) in enumerate(((w1, ip1), (w2, ip2))):
        out = add_image_term(out, q, split(proc.to_k_ip[i](ip)).contiguous(), split(w * proc.to_v_ip[i](ip)).contiguous())
    torch.testing.assert_close(attn.to_out[0](out), want, atol=ATOL, rtol=RTOL)


def test_image_term_is_plain_softmax_attention():
    # Same term against a hand-written softmax(q k^T / sqrt(d)) v, with a head count != 1 and d != 64.
    q = torch.randn(3, 11, HIDDEN, generator=gen(12))
    k = torch.randn(3, 5, HIDDEN, generator=gen(13))
    v = torch.randn(3, 5, HIDDEN, generator=gen(14))
    out = torch.randn(3, 11, HIDDEN, generator=gen(15))
    got = add_image_term(out, q, split(k).contiguous(), split(v).contiguous())
    torch.testing.assert_close(got, out + manual_attention(q, k, v), atol=ATOL, rtol=RTOL)


def test_add_image_term_leaves_inputs_untouched():
    q = torch.randn(2, 6, HIDDEN, generator=gen(16))
    out = torch.randn(2, 6, HIDDEN, generator=gen(17))
    k = split(torch.randn(2, 4, HIDDEN, generator=gen(18))).contiguous()
    v = split(torch.randn(2, 4, HIDDEN, generator=gen(19))).contiguous()
    saved = [t.clone() for t in (q, out, k, v)]
    add_image_term(out, q, k, v)
    assert all(torch.equal(a, b) for a, b in zip(saved, (q, out, k, v)))


# --- site_kv: weight folding, dtype, layout --------------------------------------------------------------------

def _to_kv():
    wk = torch.randn(HIDDEN, CTX, generator=gen(20))
    wv = torch.randn(HIDDEN, CTX, generator=gen(21))
    return (lambda t: (t @ wk.to(t).T, t @ wv.to(t).T)), wk, wv


def test_site_kv_folds_weight_into_v_only():
    to_kv, wk, wv = _to_kv()
    cond = torch.randn(1, 4, CTX, generator=gen(22))
    uncond = torch.randn(1, 4, CTX, generator=gen(23))
    k, v = site_kv(to_kv, cond, uncond, weight=0.5, cond_or_uncond=[0, 1], per_chunk=1, heads=HEADS,
                   device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(k, split(torch.cat((cond, uncond)) @ wk.T), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(v, split(0.5 * (torch.cat((cond, uncond)) @ wv.T)), atol=ATOL, rtol=RTOL)


def test_weight_zero_gives_exactly_zero_term():
    to_kv, _, _ = _to_kv()
    cond = torch.randn(1, 4, CTX, generator=gen(24))
    uncond = torch.randn(1, 4, CTX, generator=gen(25))
    k, v = site_kv(to_kv, cond, uncond, weight=0.0, cond_or_uncond=[1, 0], per_chunk=2, heads=HEADS,
                   device=torch.device("cpu"), dtype=torch.float32)
    assert torch.count_nonzero(v) == 0
    q = torch.randn(4, 9, HIDDEN, generator=gen(26))
    out = torch.randn(4, 9, HIDDEN, generator=gen(27))
    assert torch.equal(add_image_term(out, q, k, v), out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_site_kv_casts_to_requested_dtype_and_is_contiguous(dtype):
    to_kv, _, _ = _to_kv()
    cond = torch.randn(1, 4, CTX, generator=gen(28))
    k, v = site_kv(to_kv, cond, cond.clone(), weight=1.0, cond_or_uncond=[0, 1], per_chunk=3, heads=HEADS,
                   device=torch.device("cpu"), dtype=dtype)
    for t in (k, v):
        assert t.dtype == dtype and t.shape == (6, HEADS, 4, D) and t.is_contiguous()


# --- batch layout ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [[0, 1], [1, 0], [0], [1], [0, 1, 0]])
@pytest.mark.parametrize("per_chunk", [1, 2])
def test_batch_for_chunks_puts_cond_on_0_and_uncond_on_1(order, per_chunk):
    cond = torch.full((1, 3, 5), 1.0)
    uncond = torch.full((1, 3, 5), -1.0)
    got = batch_for_chunks(cond, uncond, order, per_chunk)
    assert got.shape == (len(order) * per_chunk, 3, 5)
    expected_rows = [1.0 if c == 0 else -1.0 for c in order for _ in range(per_chunk)]
    assert [float(r) for r in got[:, 0, 0]] == expected_rows
    assert torch.equal(got, torch.tensor(expected_rows).view(-1, 1, 1).expand(-1, 3, 5))


def test_concat_images_shapes_and_order():
    n, t, c = 3, 4, CTX
    cond = torch.arange(n * t * c, dtype=torch.float32).view(n, t, c)
    uncond = torch.randn(1, t, c, generator=gen(29))
    cc, uu = concat_images(cond, uncond)
    assert cc.shape == uu.shape == (1, n * t, c)
    for i in range(n):  # image i's tokens are rows i*t .. i*t+t-1
        assert torch.equal(cc[0, i * t:(i + 1) * t], cond[i])
        assert torch.equal(uu[0, i * t:(i + 1) * t], uncond[0])


def test_concat_images_is_one_softmax_over_all_tokens():
    n, t = 3, 4
    to_kv, _, _ = _to_kv()
    cond = torch.randn(n, t, CTX, generator=gen(30))
    uncond = torch.randn(1, t, CTX, generator=gen(31))
    cc, uu = concat_images(cond, uncond)
    k, v = site_kv(to_kv, cc, uu, weight=1.0, cond_or_uncond=[0], per_chunk=1, heads=HEADS,
                   device=torch.device("cpu"), dtype=torch.float32)
    q = torch.randn(1, 6, HIDDEN, generator=gen(32))
    zero = torch.zeros(1, 6, HIDDEN)
    got = add_image_term(zero, q, k, v)
    kk, vv = to_kv(cond.reshape(1, n * t, CTX))
    torch.testing.assert_close(got, manual_attention(q, kk, vv), atol=ATOL, rtol=RTOL)
    # ... which is not the mean of per-image attentions (the other plausible reading).
    per_image = torch.stack([manual_attention(q, *to_kv(cond[i:i + 1])) for i in range(n)]).mean(0)
    assert (got - per_image).abs().max() > 100 * ATOL


def test_repeated_uncond_equals_single_copy():
    n, t = 4, 4
    to_kv, _, _ = _to_kv()
    cond = torch.randn(n, t, CTX, generator=gen(33))
    uncond = torch.randn(1, t, CTX, generator=gen(34))
    cc, uu = concat_images(cond, uncond)
    k, v = site_kv(to_kv, cc, uu, weight=1.0, cond_or_uncond=[1], per_chunk=1, heads=HEADS,
                   device=torch.device("cpu"), dtype=torch.float32)
    q = torch.randn(1, 6, HIDDEN, generator=gen(35))
    got = add_image_term(torch.zeros(1, 6, HIDDEN), q, k, v)
    torch.testing.assert_close(got, manual_attention(q, *to_kv(uncond)), atol=ATOL, rtol=RTOL)


# --- sigma gate ----------------------------------------------------------------------------------------------------

START, END = 10.0, 1.0


@pytest.mark.parametrize("sigma,expected", [(10.0, 1.0), (1.0, 1.0), (5.0, 1.0), (9.999, 1.0), (1.001, 1.0),
                                            (10.01, 0.0), (0.999, 0.0), (0.0, 0.0), (14.6, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sigma_gate_inclusive_range(sigma, expected, dtype):
    g = sigma_gate(torch.tensor([sigma, sigma]), sigma_start=START, sigma_end=END, dtype=dtype)
    assert g.shape == (1, 1, 1) and g.dtype == dtype
    assert float(g) == expected


def test_sigma_gate_boundaries_as_comfyui_computes_them():
    # ComfyUI's percent_to_sigma gives floats of fp32 tensors; the step's sigma is the same fp32 value.
    sigmas = torch.tensor([14.614642, 0.0291675], dtype=torch.float32)
    start, end = float(sigmas[0]), float(sigmas[1])
    assert float(sigma_gate(sigmas[:1], sigma_start=start, sigma_end=end, dtype=torch.float32)) == 1.0
    assert float(sigma_gate(sigmas[1:], sigma_start=start, sigma_end=end, dtype=torch.float32)) == 1.0
    assert float(sigma_gate(sigmas[1:], sigma_start=start, sigma_end=start, dtype=torch.float32)) == 0.0
    # start == end: a window of one sigma
    assert float(sigma_gate(sigmas[:1], sigma_start=start, sigma_end=start, dtype=torch.float32)) == 1.0


def test_gate_switches_the_term():
    q = torch.randn(2, 6, HIDDEN, generator=gen(36))
    out = torch.randn(2, 6, HIDDEN, generator=gen(37))
    k = split(torch.randn(2, 4, HIDDEN, generator=gen(38))).contiguous()
    v = split(torch.randn(2, 4, HIDDEN, generator=gen(39))).contiguous()
    off = sigma_gate(torch.tensor([20.0]), sigma_start=START, sigma_end=END, dtype=torch.float32)
    on = sigma_gate(torch.tensor([5.0]), sigma_start=START, sigma_end=END, dtype=torch.float32)
    assert torch.equal(add_image_term(out, q, k, v, off), out)
    assert torch.equal(add_image_term(out, q, k, v, on), add_image_term(out, q, k, v))


def test_oplog_control_sees_item():
    with AtenLog() as log:
        torch.tensor([1.0]).item()
    assert log.syncs()


def test_per_layer_path_never_syncs_with_host():
    # No .item() / bool(tensor) / float(tensor) in sigma_gate or add_image_term (a device-to-host sync on GPU).
    sigmas = torch.tensor([5.0])
    q = torch.randn(2, 6, HIDDEN, generator=gen(40))
    out = torch.randn(2, 6, HIDDEN, generator=gen(41))
    k = split(torch.randn(2, 4, HIDDEN, generator=gen(42))).contiguous()
    v = split(torch.randn(2, 4, HIDDEN, generator=gen(43))).contiguous()
    with AtenLog() as log:
        gate = sigma_gate(sigmas, sigma_start=START, sigma_end=END, dtype=torch.float32)
        add_image_term(out, q, k, v, gate)
        add_image_term(out, q, k, v)
    assert log.ops, "the dispatch mode saw no ops at all"
    assert log.syncs() == []


@pytest.mark.parametrize("scaling", ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"])
def test_uncond_factor_zero_gives_the_uncond_chunks_no_term(scaling):
    """uncond_factor 0 (IPA Apply (advanced)'s uncond_term off): the uncond chunk's V' is exactly 0, so its term is 0
    in every scaling mode; the cond chunk is as without it."""
    g = torch.Generator().manual_seed(3)
    w_k, w_v = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    to_kv = lambda t: (t @ w_k.T, t @ w_v.T)  # noqa: E731
    cond, uncond = torch.randn(1, 4, 6, generator=g), torch.randn(1, 4, 6, generator=g)
    args = dict(weight=0.7, cond_or_uncond=[1, 0], per_chunk=2, heads=2, device=torch.device("cpu"),
                dtype=torch.float32, scaling=scaling)
    k0, v0 = site_kv(to_kv, cond, uncond, uncond_factor=0.0, **args)
    k1, v1 = site_kv(to_kv, cond, uncond, **args)
    assert torch.count_nonzero(v0[:2]) == 0  # chunk 0 is the uncond one here
    assert torch.equal(v0[2:], v1[2:]) and torch.equal(k0[2:], k1[2:])
    q = torch.randn(4, 5, 8, generator=g)
    out = add_image_term(torch.zeros(4, 5, 8), q, k0, v0)
    assert torch.count_nonzero(out[:2]) == 0 and torch.count_nonzero(out[2:]) > 0
