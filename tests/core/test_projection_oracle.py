"""Image projections against diffusers (an independent implementation; formats reference §2, §6).

The diffusers modules are built and loaded by diffusers' own converter
(``UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers``), so the key mapping under test is diffusers',
not ours. Weights are small and random, in the published key layout.

Tolerance (fp32): atol = rtol = 1e-5. Both sides compute the same math in fp32 and differ only in operation order
(SDPA vs explicit q k^T with the scale split as 64^-1/4 on q and k, fused vs unfused LayerNorm/GELU). Rounding is
~1e-7 relative per op; through 4 resampler layers it stays well below 1e-5 on LayerNorm outputs of size O(1),
while any real mistake (a swapped to_kv half, a missing residual, tanh GELU, eps 1e-6) moves values by > 1e-3.
"""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core import detect_spec
from ip_adapter_core.projection import IPAdapterModel
from testkit.adapters import adapter_parts, diffusers_tiny_unet

CTX = 64
SITES = (32, 32, 32, 64)  # the tiny UNet below: N = 1 down0, 3 and 5 up1, 7 mid (formats reference §6)
ATOL = RTOL = 1e-5

CONFIGS = {
    # kind -> adapter_parts kwargs, input shape (B, ...), expected token count (by hand)
    "base": (dict(encoder_dim=40, tokens=4), (3, 40), 4),
    "plus": (dict(encoder_dim=48, tokens=16, resampler_dim=128, resampler_heads=2, depth=4), (3, 17, 48), 16),
    "full_face": (dict(encoder_dim=48, tokens=None), (3, 17, 48), 17),
}


def parts(kind, dtype=torch.float32, seed=0):
    kw, _, _ = CONFIGS[kind]
    return adapter_parts(kind, ctx=CTX, site_dims=SITES, dtype=dtype, seed=seed, **kw)


def ours(p, ip):
    return IPAdapterModel.from_parts(detect_spec(p, ip), p, ip)


def features(kind, dtype=torch.float32, seed=1):
    _, shape, _ = CONFIGS[kind]
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.fixture(scope="module")
def unet():
    return diffusers_tiny_unet(CTX)


def reference(unet, image_proj):
    """diffusers' projection module, built and loaded by diffusers' own converter."""
    state = {k: v.float() for k, v in image_proj.items()}
    return unet._convert_ip_adapter_image_proj_to_diffusers(state, low_cpu_mem_usage=False).eval()


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_projection_matches_diffusers_fp32(unet, kind):
    p, ip = parts(kind)
    x = features(kind)
    got = ours(p, ip).project(x)
    with torch.no_grad():
        want = reference(unet, p)(x)
    _, shape, tokens = CONFIGS[kind]
    assert got.shape == (shape[0], tokens, CTX)
    assert got.dtype == torch.float32
    assert want.shape == got.shape
    assert want.abs().mean() > 0.1  # a meaningful comparison, not two near-zero tensors
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_diffusers_classes_are_the_expected_ones(unet):
    from diffusers.models.embeddings import ImageProjection, IPAdapterFullImageProjection, IPAdapterPlusImageProjection

    assert isinstance(reference(unet, parts("base")[0]), ImageProjection)
    assert isinstance(reference(unet, parts("plus")[0]), IPAdapterPlusImageProjection)
    assert isinstance(reference(unet, parts("full_face")[0]), IPAdapterFullImageProjection)


def test_oracle_is_sensitive_to_the_to_kv_split(unet):
    # Control: swapping the k and v halves of one to_kv (a plausible implementation mistake) is caught at ATOL.
    p, ip = parts("plus")
    swapped = dict(p)
    k, v = p["layers.1.0.to_kv.weight"].chunk(2, dim=0)
    swapped["layers.1.0.to_kv.weight"] = torch.cat((v, k))
    x = features("plus")
    with torch.no_grad():
        want = reference(unet, p)(x)
    assert (ours(swapped, ip).project(x) - want).abs().max() > 100 * ATOL


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_fp16_weights_fp32_input(unet, kind):
    # Published files are fp16; an fp32 caller gets fp32 math on the fp16-stored weights (cast at call time).
    p, ip = parts(kind, dtype=torch.float16)
    x = features(kind)
    got = ours(p, ip).project(x)
    assert got.dtype == torch.float32
    with torch.no_grad():
        want = reference(unet, p)(x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


# Low-precision inputs: output in the input's dtype, close to the fp32 result. Tolerances are loose and stated:
# fp16 (eps 9.8e-4) atol 3e-2, bf16 (eps 7.8e-3) atol 1.5e-1, on LayerNorm outputs of size O(1); the mean error is
# checked tighter (fp16 3e-3, bf16 3e-2) so a systematic error cannot hide under the max tolerance.
LOW = {torch.float16: (3e-2, 3e-3), torch.bfloat16: (1.5e-1, 3e-2)}


@pytest.mark.parametrize("dtype", list(LOW), ids=["fp16", "bf16"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_low_precision_input_gives_low_precision_output(kind, dtype):
    p, ip = parts(kind)
    model = ours(p, ip)
    x = features(kind)
    ref = model.project(x)
    got = model.project(x.to(dtype))
    assert got.dtype == dtype
    err = (got.float() - ref).abs()
    max_tol, mean_tol = LOW[dtype]
    assert err.max() < max_tol, float(err.max())
    assert err.mean() < mean_tol, float(err.mean())


def test_weights_are_cast_at_call_time_not_in_place():
    # One stored copy serves every caller: a fp16 call must not convert (or copy) the stored fp32 weights.
    p, ip = parts("plus")
    model = ours(p, ip)
    before = {k: (v.dtype, v.data_ptr()) for k, v in model.state_dict().items()}
    model.project(features("plus", dtype=torch.float16))
    after = {k: (v.dtype, v.data_ptr()) for k, v in model.state_dict().items()}
    assert after == before
    assert all(dt == torch.float32 for dt, _ in after.values())


def test_from_parts_shares_the_given_tensors():
    # from_parts assigns the loaded tensors (no copy): a file's weights are held once.
    p, ip = parts("base")
    sd = IPAdapterModel.from_parts(detect_spec(p, ip), p, ip).state_dict()
    assert sd["image_proj.proj.weight"].data_ptr() == p["proj.weight"].data_ptr()
    assert sd["sites.3.to_v_ip.weight"].data_ptr() == ip["7.to_v_ip.weight"].data_ptr()


def test_project_has_no_autograd_graph():
    p, ip = parts("plus")
    x = features("plus").requires_grad_(True)
    assert not ours(p, ip).project(x).requires_grad


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_site_layers_follow_diffusers_key_mapping(unet, kind):
    # diffusers installs to_k_ip / to_v_ip from key N = 1, 3, 5, ... in its attn_processors order; our site index i
    # must hold the same matrices, and site_kv must apply them.
    p, ip = parts(kind)
    model = ours(p, ip)
    procs = unet._convert_ip_adapter_attn_to_diffusers([{"image_proj": p, "ip_adapter": ip}], low_cpu_mem_usage=False)
    ip_procs = [proc for name, proc in procs.items() if name.endswith("attn2.processor")]
    assert len(ip_procs) == len(SITES) == model.spec.num_sites
    tokens = torch.randn(2, 5, CTX, generator=torch.Generator().manual_seed(3))
    for i, proc in enumerate(ip_procs):
        k, v = model.site_kv(i, tokens)
        with torch.no_grad():
            torch.testing.assert_close(k, proc.to_k_ip[0](tokens), atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(v, proc.to_v_ip[0](tokens), atol=ATOL, rtol=RTOL)


# --- from_parts strictness: a file whose tensors disagree with its own spec gets a typed, readable error ----------

def _inconsistent():
    # Damage that detect_spec cannot see (it reads layer 0 and the first/last shapes only).
    plus_p, plus_ip = parts("plus")
    full_p, full_ip = parts("full_face")
    return {
        "missing ff weight": ({k: v for k, v in plus_p.items() if k != "layers.3.1.3.weight"}, plus_ip, "plus"),
        "proj_out.bias of wrong length": ({**plus_p, "proj_out.bias": torch.zeros(CTX - 1)}, plus_ip, "plus"),
        "one layer's to_q of wrong width": ({**plus_p, "layers.2.0.to_q.weight": torch.zeros(64, 128)}, plus_ip, "plus"),
        "full face proj.2 of wrong width": ({**full_p, "proj.2.weight": torch.zeros(CTX, 40)}, full_ip, "full_face"),
    }


@pytest.mark.parametrize("case", sorted(_inconsistent()))
def test_from_parts_rejects_inconsistent_tensors_with_typed_error(case):
    from ip_adapter_core.errors import NotAnIPAdapterError

    p, ip, kind = _inconsistent()[case]
    spec = detect_spec(*parts(kind))  # the spec of the intact file
    with pytest.raises(NotAnIPAdapterError) as e:
        IPAdapterModel.from_parts(spec, p, ip, name="'odd.safetensors'")
    assert "odd.safetensors" in str(e.value)
