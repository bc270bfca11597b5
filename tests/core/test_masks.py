"""Attention masks (ip_adapter_core.masks): the site grid from the query length for any latent shape, the resize to
it, the input checks and the batch layout.

The grid of a site is one of the ceil-halvings of the latent (ComfyUI's stride-2 downsampling); every level of every
shape here must be found exactly. Resizing is per axis, area averaging to shrink and bilinear to grow: a column of
the grid whose footprint lies wholly in one half of a half/half mask takes that half's value exactly (atol 1e-6).
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from ip_adapter_core.errors import InputError
from ip_adapter_core.masks import batch_mask, halvings, prepare_mask, resize_mask, site_grid, site_mask

ATOL = 1e-6
SHAPES = [(64, 64), (7, 13), (13, 7), (1, 64), (64, 1), (1, 1), (96, 128), (128, 96), (9, 9), (3, 250), (250, 3),
          (17, 5), (65, 63)]


def random_odd_shapes(n=40, seed=0):
    rng = random.Random(seed)
    return [(rng.randrange(1, 200, 2), rng.randrange(1, 200, 2)) for _ in range(n)]


@pytest.mark.parametrize("hw", SHAPES + random_odd_shapes())
def test_grid_found_at_every_downsampling_level(hw):
    levels = halvings(*hw)
    assert levels[-1] == (1, 1)
    for hs, ws in levels:
        assert site_grid(hw, hs * ws) == (hs, ws), (hw, hs, ws)


def test_halvings_are_ceil_halvings():
    assert halvings(7, 13) == [(7, 13), (4, 7), (2, 4), (1, 2), (1, 1)]
    assert halvings(1, 64)[:3] == [(1, 64), (1, 32), (1, 16)]


@pytest.mark.parametrize("hw,tokens,want", [((64, 96), 6, (2, 3)), ((96, 64), 6, (3, 2)), ((8, 16), 7, (1, 7)),
                                            ((16, 8), 7, (7, 1)), ((10, 10), 36, (6, 6)), ((1, 64), 12, (1, 12))])
def test_fallback_is_the_factorisation_nearest_the_aspect(hw, tokens, want):
    assert site_grid(hw, tokens) == want


def test_site_mask_never_raises_a_size_error():
    rng = random.Random(1)
    for _ in range(200):
        hw = (rng.randrange(1, 90), rng.randrange(1, 90))
        mask = torch.rand(rng.randrange(1, 3), rng.randrange(1, 50), rng.randrange(1, 50))
        tokens = rng.randrange(1, 300)
        out = site_mask(mask, latent_hw=hw, tokens=tokens)
        assert out.shape == (mask.shape[0], tokens, 1)
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("hw", [(7, 13), (13, 7), (64, 64), (1, 64), (64, 1), (8, 12)])
@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_constant_masks_stay_constant(hw, fill):
    mask = torch.full((1, hw[0] * 8, hw[1] * 8), fill)
    for hs, ws in halvings(*hw):
        out = site_mask(mask, latent_hw=hw, tokens=hs * ws)
        if fill == 0.0:
            assert torch.equal(out, torch.zeros_like(out))
        else:
            torch.testing.assert_close(out, torch.ones_like(out), atol=ATOL, rtol=0)


@pytest.mark.parametrize("hw,mask_hw", [((7, 13), (56, 104)), ((13, 7), (104, 56)), ((64, 64), (512, 512)),
                                        ((7, 13), (30, 30)), ((1, 64), (8, 512)), ((64, 64), (16, 16))])
def test_left_half_stays_left_half_at_every_level(hw, mask_hw):
    """A mask of ones on its left half: per grid column, 1 where the filter footprint is wholly left of the middle,
    0 where wholly right, non-increasing from left to right. The mask's own aspect ratio does not matter (stretched)."""
    mh, mw = mask_hw
    mask = torch.zeros(1, mh, mw)
    mask[:, :, : mw // 2] = 1.0
    for hs, ws in halvings(*hw):
        grid = site_mask(mask, latent_hw=hw, tokens=hs * ws).reshape(hs, ws)
        torch.testing.assert_close(grid, grid[:1].expand(hs, ws), atol=ATOL, rtol=0)  # constant per column
        cols = grid[0]
        assert torch.all(cols[1:] <= cols[:-1] + ATOL), cols
        scale = mw / ws
        for j in range(ws):
            if scale >= 1:  # area: the source columns the cell covers
                lo, hi = math.floor(j * scale), math.ceil((j + 1) * scale)
            else:  # bilinear: the two source columns around the sample point
                lo = math.floor((j + 0.5) * scale - 0.5)
                hi = lo + 2
            if hi <= mw // 2:
                assert abs(cols[j] - 1) <= ATOL, (hs, ws, j, cols)
            elif lo >= mw // 2:
                assert abs(cols[j]) <= ATOL, (hs, ws, j, cols)
        if ws >= 2:
            assert cols[0] > 0.5 > cols[-1], cols


def test_mask_with_another_aspect_is_stretched_to_the_latent():
    mask = torch.zeros(1, 10, 10)
    mask[:, :5] = 1.0  # top half
    out = site_mask(mask, latent_hw=(8, 16), tokens=8 * 16).reshape(8, 16)
    torch.testing.assert_close(out, out[:, :1].expand(8, 16), atol=ATOL, rtol=0)  # stretched across the width
    assert torch.equal(out[:4], torch.ones(4, 16)) and torch.equal(out[4:], torch.zeros(4, 16))


def test_resize_to_own_size_is_identity():
    mask = torch.rand(2, 7, 13)
    assert torch.equal(resize_mask(mask, (7, 13)), mask)


def test_prepare_mask_shapes_clamps_and_refuses_non_masks():
    assert prepare_mask(torch.ones(4, 5), where="N").shape == (1, 4, 5)
    got = prepare_mask(torch.tensor([[[-1.0, 0.5, 2.0, float("nan")]]]), where="N")
    assert got.tolist() == [[[0.0, 0.5, 1.0, 0.0]]]
    assert prepare_mask(torch.ones(2, 3, 4, dtype=torch.float16), where="N").dtype == torch.float32
    # the old pack's compatibility mode: values as they come (a bicubic overshoot above 1 stays), NaN still 0
    raw = prepare_mask(torch.tensor([[[-0.1, 0.5, 1.2, float("nan")]]]), where="N", clamp=False)
    assert torch.allclose(raw, torch.tensor([[[-0.1, 0.5, 1.2, 0.0]]]))
    for bad in (torch.ones(1, 1, 4, 4), torch.ones(5), torch.ones(1, 0, 4), [[1.0]]):
        with pytest.raises(InputError, match="attn_mask"):
            prepare_mask(bad, where="N")


def test_batch_mask_layout():
    per_site = torch.arange(3.0).reshape(3, 1, 1).expand(3, 2, 1)
    out = batch_mask(per_site, per_chunk=3, chunks=2)  # one mask per latent, the same for cond and uncond
    assert out.shape == (6, 2, 1) and out[:, 0, 0].tolist() == [0, 1, 2, 0, 1, 2]
    out = batch_mask(per_site, per_chunk=2, chunks=2)  # batch size differs: mask 0 everywhere
    assert out[:, 0, 0].tolist() == [0, 0, 0, 0]
    out = batch_mask(per_site[:1] + 5, per_chunk=4, chunks=1)
    assert out.shape == (4, 2, 1) and torch.all(out == 5)


def test_the_old_packs_bilinear_resize_point_samples_where_area_averages():
    """compatibility "ComfyUI_IPAdapter_plus" (resize "bilinear"): a thin line counts by how near it is to a sample
    point (cell k samples x = 8k + 3.5), where area averaging gives it its share of the cell (1/8)."""
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 3] = 1.0  # one column of 64, inside the first 8-wide cell of an 8 x 8 grid
    area = site_mask(mask, latent_hw=(64, 64), tokens=64, resize="area").reshape(8, 8)
    old = site_mask(mask, latent_hw=(64, 64), tokens=64, resize="bilinear").reshape(8, 8)
    assert torch.allclose(area[:, 0], torch.full((8,), 1 / 8)) and float(area[:, 1:].abs().max()) == 0.0
    assert torch.allclose(old[:, 0], torch.full((8,), 0.5)) and float(old[:, 1:].abs().max()) == 0.0
    mask[:, :, 3], mask[:, :, 6] = 0.0, 1.0  # 2.5 px from the sample: gone
    assert float(site_mask(mask, latent_hw=(64, 64), tokens=64, resize="bilinear").abs().max()) == 0.0
    with pytest.raises(ValueError, match="not one of"):
        site_mask(mask, latent_hw=(64, 64), tokens=64, resize="nearest")
