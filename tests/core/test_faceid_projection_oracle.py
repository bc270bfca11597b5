"""The FaceID projections against diffusers' (an independent implementation; formats reference §2, §6).

diffusers builds and loads its modules with its own converter (``UNet2DConditionModel.
_convert_ip_adapter_image_proj_to_diffusers``: ``norm.weight`` -> IPAdapterFaceIDImageProjection,
``perceiver_resampler.proj_in.weight`` -> IPAdapterFaceIDPlusImageProjection with to_kv split into to_k / to_v by
``chunk(2, dim=0)``, else a Resampler -> IPAdapterPlusImageProjection), so the key mapping under test is diffusers'.
Weights are small and random in the published key layout (testkit.faceid_adapters); diffusers' FaceID Plus fixes 4
tokens and an id MLP twice the embedding wide, as the published files have.

Tolerance (fp32): max |Δ| ≤ 1e-5 · max |reference|. Both sides compute the same math in fp32 and differ in
operation order only (SDPA vs explicit q kᵀ with the scale split as 64^-1/4 on q and k; fused vs unfused LayerNorm
and GELU): ~1e-7 relative per op. Measured on these sizes: 0 (FaceID MLP, portrait), ≤ 9e-7 relative (FaceID Plus,
portrait unnorm). A real mistake (a swapped to_kv half, the shortcut missing or always on, tanh GELU) moves the output
by more than 1e-2 relative (the controls below check that).
"""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core import detect_spec
from ip_adapter_core.families.faceid import FaceFeatures, face_features, zero_features
from ip_adapter_core.projection import IPAdapterModel
from testkit.adapters import diffusers_tiny_unet
from testkit.faceid_adapters import faceid_parts

CTX = 128  # 2 heads of 64 for the perceivers (dim = context for FaceID Plus)
SITES = (32, 32, 32, 64)  # the tiny UNet below (formats reference §6)
CLIP = 48
REL = 1e-5

CONFIGS = {
    # kind -> faceid_parts kwargs, tokens per face (by hand)
    "faceid": (dict(lora_rank=4), 4),
    "portrait": (dict(), 16),
    "faceid_plus": (dict(clip_dim=CLIP, lora_rank=4), 4),
    "portrait_unnorm": (dict(resampler_dim=128, heads=2), 16),
}
DIFFUSERS_CLASS = {"faceid": "IPAdapterFaceIDImageProjection", "portrait": "IPAdapterFaceIDImageProjection",
                   "faceid_plus": "IPAdapterFaceIDPlusImageProjection",
                   "portrait_unnorm": "IPAdapterPlusImageProjection"}


@pytest.fixture(scope="module")
def unet():
    return diffusers_tiny_unet(CTX)


def parts(kind, dtype=torch.float32, seed=0):
    kw, _ = CONFIGS[kind]
    return faceid_parts(kind, ctx=CTX, site_dims=SITES, dtype=dtype, seed=seed, **kw)


def ours(p, ip, name="'ip-adapter-faceid-plusv2_x.bin'"):
    return IPAdapterModel.from_parts(detect_spec(p, ip, name=name), p, ip, name=name)


def reference(unet, image_proj):
    return unet._convert_ip_adapter_image_proj_to_diffusers({k: v.float() for k, v in image_proj.items()},
                                                            low_cpu_mem_usage=False).eval()


def inputs(kind, seed=1):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(3, 512, generator=g)
    e = e * 9.0 if kind == "portrait_unnorm" else e / e.norm(dim=-1, keepdim=True)  # raw vs L2-normalised
    return e, torch.randn(3, 17, CLIP, generator=g)


def run_reference(ref, kind, e, clip=None, shortcut=False, scale=1.0):
    with torch.no_grad():
        if kind == "faceid_plus":
            ref.clip_embeds, ref.shortcut, ref.shortcut_scale = clip[:, None], shortcut, scale  # [B, n_images, N, D]
            return ref(e)
        return ref(e[:, None] if kind == "portrait_unnorm" else e)  # unnorm: a length-1 sequence


def assert_matches(got, want, rel=REL):
    err, size = float((got - want).abs().max()), float(want.abs().max())
    assert size > 0.5, size  # a meaningful comparison
    assert err <= rel * size, f"max |Δ| {err:.3g} > {rel} · {size:.3g}"


def test_diffusers_classes_are_the_expected_ones(unet):
    for kind, cls in DIFFUSERS_CLASS.items():
        assert type(reference(unet, parts(kind)[0])).__name__ == cls


@pytest.mark.parametrize("kind", ["faceid", "portrait", "portrait_unnorm"])
def test_projection_matches_diffusers_fp32(unet, kind):
    p, ip = parts(kind)
    e, _ = inputs(kind)
    spec = detect_spec(p, ip)
    got = ours(p, ip).project(face_features(spec, e))
    want = run_reference(reference(unet, p), kind, e)
    assert got.shape == want.shape == (3, CONFIGS[kind][1], CTX) and got.dtype == torch.float32
    assert_matches(got, want)


@pytest.mark.parametrize("shortcut, scale", [(False, 1.0), (True, 1.0), (True, 2.5)])
def test_faceid_plus_matches_diffusers_fp32(unet, shortcut, scale):
    p, ip = parts("faceid_plus")
    e, clip = inputs("faceid_plus")
    got = ours(p, ip).project(FaceFeatures(e, clip, shortcut=shortcut, shortcut_scale=scale))
    want = run_reference(reference(unet, p), "faceid_plus", e, clip, shortcut, scale)
    assert got.shape == want.shape == (3, 4, CTX)
    assert_matches(got, want)


def test_plus_v2_by_name_gets_diffusers_shortcut_output(unet):
    # The version read from the name sets the shortcut: a v2 file's default features give diffusers' shortcut=True
    # output, a v1 file's its shortcut=False output.
    p, ip = parts("faceid_plus")
    e, clip = inputs("faceid_plus")
    ref = reference(unet, p)
    for name, shortcut in (("'ip-adapter-faceid-plusv2_sd15.bin'", True), ("'ip-adapter-faceid-plus_sd15.bin'", False)):
        model = ours(p, ip, name=name)
        got = model.project(face_features(model.spec, e, clip))
        assert_matches(got, run_reference(ref, "faceid_plus", e, clip, shortcut, 1.0))


def test_uncond_matches_diffusers_on_zero_inputs(unet):
    # formats §5: FaceID Plus uncond = proj(zero id, CLIP states of a zero-pixel image, same shortcut and scale).
    p, ip = parts("faceid_plus")
    model = ours(p, ip)
    clip_zero = inputs("faceid_plus", seed=7)[1][:1]  # stands for the encoder's states of the zero image
    got = model.project(zero_features(model.spec, clip_zero, shortcut_scale=1.5))
    want = run_reference(reference(unet, p), "faceid_plus", torch.zeros(1, 512), clip_zero, True, 1.5)
    assert_matches(got, want)
    pp, pip = parts("portrait")
    spec = detect_spec(pp, pip)
    assert_matches(ours(pp, pip).project(zero_features(spec)),
                   run_reference(reference(unet, pp), "portrait", torch.zeros(1, 512)))


# ---------------------------------------------------------------------------------------------- controls

def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_oracle_sees_a_swapped_to_kv_half(unet):
    p, ip = parts("faceid_plus")
    e, clip = inputs("faceid_plus")
    want = run_reference(reference(unet, p), "faceid_plus", e, clip, True, 1.0)
    swapped = dict(p)
    k, v = p["perceiver_resampler.layers.2.0.to_kv.weight"].chunk(2, dim=0)
    swapped["perceiver_resampler.layers.2.0.to_kv.weight"] = torch.cat((v, k))
    got = ours(swapped, ip).project(FaceFeatures(e, clip, shortcut=True))
    assert _relative(got, want) > 1e-2


def test_oracle_sees_the_shortcut(unet):
    p, ip = parts("faceid_plus")
    e, clip = inputs("faceid_plus")
    ref = reference(unet, p)
    model = ours(p, ip)
    assert _relative(model.project(FaceFeatures(e, clip, shortcut=False)),
                     run_reference(ref, "faceid_plus", e, clip, True, 1.0)) > 1e-2
    assert _relative(model.project(FaceFeatures(e, clip, shortcut=True, shortcut_scale=1.0)),
                     run_reference(ref, "faceid_plus", e, clip, True, 2.0)) > 1e-2


# ---------------------------------------------------------------------------------------------- precision, batch

@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_fp16_weights_fp32_features(unet, kind):
    # published files are fp16: an fp32 caller gets fp32 math on the fp16-stored weights (cast at call time)
    p, ip = parts(kind, dtype=torch.float16)
    e, clip = inputs(kind)
    spec = detect_spec(p, ip)
    features = face_features(spec, e, clip if kind == "faceid_plus" else None, shortcut=True)
    got = ours(p, ip).project(features)
    assert got.dtype == torch.float32
    assert_matches(got, run_reference(reference(unet, p), kind, e, clip, True, 1.0))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_half_features_give_half_tokens_close_to_fp32(kind):
    # fp16 (eps 9.8e-4): max |Δ| < 3e-2 on LayerNorm outputs of size O(1), mean < 3e-3
    p, ip = parts(kind)
    model = ours(p, ip)
    e, clip = inputs(kind)
    f = face_features(model.spec, e, clip if kind == "faceid_plus" else None)
    ref = model.project(f)
    got = model.project(f.to(torch.float16))
    assert got.dtype == torch.float16
    err = (got.float() - ref).abs()
    assert err.max() < 3e-2 and err.mean() < 3e-3, (float(err.max()), float(err.mean()))


def test_projection_is_per_face():
    # each row of the batch is projected alone: the batch of 3 equals three single-face calls
    for kind in CONFIGS:
        p, ip = parts(kind)
        model = ours(p, ip)
        e, clip = inputs(kind)
        f = face_features(model.spec, e, clip if kind == "faceid_plus" else None)
        whole = model.project(f)
        for i in range(3):
            one = face_features(model.spec, e[i:i + 1], None if f.clip is None else clip[i:i + 1])
            torch.testing.assert_close(model.project(one), whole[i:i + 1], atol=1e-5, rtol=1e-5)
