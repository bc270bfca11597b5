"""attn_mask on IPA Apply / IPA Apply (advanced) in a real ComfyUI (tiny SD1.5 from testkit/tiny_models.py: 7
sites, 8 heads; ("input", 1, 0) sees the full latent grid, ("input", 3, 0) the once-halved one).

Exact claims are bit for bit: a zero mask multiplies the image term by 0 and a ones mask by 1, so sampling equals the
unpatched model / the unmasked patch exactly; where a region mask is 0 the patch's output equals the plain attention
exactly.
"""
from __future__ import annotations

import pytest
import torch

@pytest.fixture(scope="module")
def apply(run_node, base_adapter, base_embeds):
    def do(model, node="IPA_Apply", **kw):
        extra = dict(weight_type="linear", embeds_scaling="V only") if node == "IPA_ApplyAdvanced" else {}
        return run_node(node, model=model, ipadapter=base_adapter, weight=1.0, start_at=0.0, end_at=1.0, embeds=base_embeds,
                        **extra, **kw)[0]

    return do


def left_half(h=64, w=64):
    mask = torch.zeros(1, h, w)
    mask[:, :, : w // 2] = 1.0
    return mask


@pytest.mark.parametrize("node", ["IPA_Apply", "IPA_ApplyAdvanced"])
def test_zero_mask_is_bit_identical_to_unpatched(sd15, apply, sample, node):
    assert torch.equal(sample(apply(sd15, node, attn_mask=torch.zeros(1, 64, 64))), sample(sd15))


@pytest.mark.parametrize("node", ["IPA_Apply", "IPA_ApplyAdvanced"])
def test_ones_mask_equals_no_mask(sd15, apply, sample, node):
    unmasked = sample(apply(sd15, node))
    assert torch.equal(sample(apply(sd15, node, attn_mask=torch.ones(1, 48, 80))), unmasked)
    assert not torch.equal(unmasked, sample(sd15))


def test_advanced_mask_equals_ipa_apply_mask(sd15, apply, sample):
    mask = left_half()
    assert torch.equal(sample(apply(sd15, "IPA_ApplyAdvanced", attn_mask=mask)), sample(apply(sd15, attn_mask=mask)))


@pytest.mark.parametrize("key,grid", [(("input", 1, 0), (8, 8)), (("input", 3, 0), (4, 4))])
def test_left_half_mask_zeroes_the_right_half_of_the_term(sd15, apply, call_site, key, grid):
    """An installed patch called directly, as at the first step of an 8x8 latent, cond and uncond batched: the image
    term (out - plain attention) is 0 on every right-half query position of both chunks, non-zero on the left."""
    hs, ws = grid
    out, base = call_site(apply(sd15, attn_mask=left_half()), key, tokens=hs * ws)
    out, base = out.reshape(2, hs, ws, -1), base.reshape(2, hs, ws, -1)
    assert torch.equal(out[:, :, ws // 2:], base[:, :, ws // 2:])
    term = (out - base)[:, :, : ws // 2]
    assert term.abs().amax(dim=-1).min() > 1e-4, "the left half lost its image term"


def test_odd_latent_7x13_samples_with_a_mask(sd15, apply, sample):
    """56x104 px: the latent is 7x13, the halved level 4x7. A square mask is stretched to it; no size error."""
    latent = torch.zeros(1, 4, 7, 13)
    masked = sample(apply(sd15, attn_mask=left_half(50, 50)), latent=latent)
    assert masked.shape == (1, 4, 7, 13) and torch.isfinite(masked).all()
    assert not torch.equal(masked, sample(sd15, latent=latent))
    assert torch.equal(sample(apply(sd15, attn_mask=torch.zeros(1, 50, 50)), latent=latent),
                       sample(sd15, latent=latent))


def test_mask_batch_other_than_the_latent_batch_uses_the_first_mask(sd15, apply, sample):
    both = torch.stack([torch.zeros(64, 64), torch.ones(64, 64)])
    assert torch.equal(sample(apply(sd15, attn_mask=both)), sample(sd15))  # 2 masks, batch 1: mask 0 (zeros)


def test_mask_per_latent_when_the_batches_match(sd15, apply, sample):
    both = torch.stack([torch.zeros(64, 64), torch.ones(64, 64)])
    out = sample(apply(sd15, attn_mask=both), batch=2)
    assert torch.equal(out[:1], sample(sd15, batch=2)[:1])
    assert torch.equal(out[1:], sample(apply(sd15), batch=2)[1:])


@pytest.mark.parametrize("node", ["IPA_Apply", "IPA_ApplyAdvanced"])
def test_bad_mask_is_refused_before_sampling_and_out_of_range_values_are_clamped(sd15, apply, sample, node):
    with pytest.raises(ValueError, match=r"IPA Apply.*attn_mask"):
        apply(sd15, node, attn_mask=torch.ones(1, 1, 8, 8))
    assert torch.equal(sample(apply(sd15, node, attn_mask=torch.full((1, 8, 8), -3.0))), sample(sd15))
