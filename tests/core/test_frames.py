"""Batches and animation in the core (no ComfyUI): per-frame indexing (ip_adapter_core.frames), the per-frame K'/V'
layout of site_kv (unfolded tokens, per-frame weights) and masks in AnimateDiff context windows (masks.batch_mask).

Expectations are written out by hand (frame lists, which row goes where) or computed with a plain per-latent loop
(one site_kv call per latent, then stacked), never taken from the code under test.
"""
from __future__ import annotations

import re

import pytest
import torch

from ip_adapter_core.attention import EMBEDS_SCALINGS, add_image_term, site_kv
from ip_adapter_core.errors import InputError
from ip_adapter_core.frames import (frame_factors, frame_indices, full_length, parse_frame_weights, pick,
                                    window_frames)
from ip_adapter_core.masks import batch_mask

ATOL = 1e-6
RTOL = 1e-6  # the per-frame weights are a float32 tensor, the reference multiplies by Python floats


# ------------------------------------------------------------------------------------------- frame lists

@pytest.mark.parametrize("text, expected", [
    ("1, 0.5, 0", (1.0, 0.5, 0.0)),
    ("1\n0.25\n\n-0.5", (1.0, 0.25, -0.5)),
    ("  2 ;.5", (2.0, 0.5)),
    ("1e-1", (0.1,)),
    ("", None),
    ("  \n , ", None),
])
def test_parse_frame_weights(text, expected):
    assert parse_frame_weights(text) == expected


@pytest.mark.parametrize("text, bad", [("1, a", "2 ('a')"), ("0.5x", "1 ('0.5x')"), ("1,,--2", "2 ('--2')"),
                                       ("1, inf", "2 ('inf')")])
def test_parse_frame_weights_names_the_bad_entry(text, bad):
    with pytest.raises(InputError, match=rf"input 'frame_weights': value {re.escape(bad)} is not a (finite )?number"):
        parse_frame_weights(text)


def test_window_frames_only_for_an_active_window_of_the_chunk_size():
    assert window_frames(None, 2) is None
    assert window_frames({}, 2) is None
    assert window_frames({"sub_idxs": None, "full_length": 8}, 2) is None  # ADE without context windows
    assert window_frames({"sub_idxs": [4, 5], "full_length": 8}, 2) == (4, 5)
    assert window_frames({"sub_idxs": [4, 5, 6], "full_length": 8}, 2) is None  # does not describe this batch
    assert full_length({"sub_idxs": [4, 5], "full_length": 8}) == 8
    assert full_length({"sub_idxs": None, "full_length": 8}) is None


def test_frame_indices_pick_and_factors():
    assert frame_indices(None, 3) == (0, 1, 2)
    assert frame_indices((7, 2), 2) == (7, 2)
    # 2 images, 4 latents: pad by repeating the last; 5 images for 3 latents: truncate
    assert pick(2, (0, 1, 2, 3)) == (0, 1, 1, 1)
    assert pick(5, (0, 1, 2)) == (0, 1, 2)
    assert pick(3, (9, 0, 2)) == (2, 0, 2)
    assert frame_factors((1.0, 0.5, 0.0), (0, 1, 2, 3, 4)) == (1.0, 0.5, 0.0, 0.0, 0.0)
    assert frame_factors((1.0, 0.5), (3, 0)) == (0.5, 1.0)


# ------------------------------------------------------------------------------------------- per-frame K'/V'

C, D, HEADS = 6, 8, 2
g = torch.Generator().manual_seed(0)
WK, WV = torch.randn(D, C, generator=g), torch.randn(D, C, generator=g)


def to_kv(t):
    return t @ WK.T, t @ WV.T


def heads(t):
    b, n, _ = t.shape
    return t.reshape(b, n, HEADS, -1).transpose(1, 2)


def reference_kv(cond_rows, uncond, weights, cond_or_uncond, scaling="V only"):
    """Per latent: its own one-row site_kv call with weight w_i (the already tested shared path), stacked in
    ComfyUI's chunk order."""
    ks, vs = [], []
    for c in cond_or_uncond:
        for i, w in enumerate(weights):
            k, v = site_kv(to_kv, cond_rows[i:i + 1], uncond, weight=w, cond_or_uncond=[c], per_chunk=1,
                           heads=HEADS, device=torch.device("cpu"), dtype=torch.float32, scaling=scaling)
            ks.append(k)
            vs.append(v)
    return torch.cat(ks), torch.cat(vs)


@pytest.mark.parametrize("scaling", EMBEDS_SCALINGS)
@pytest.mark.parametrize("cond_or_uncond", [[1, 0], [0], [0, 1]])
def test_unfolded_tokens_with_frame_weights_equal_per_latent_calls(scaling, cond_or_uncond):
    t = 3
    cond = torch.randn(3, t, C, generator=g)  # one row per latent (already picked)
    uncond = torch.randn(1, t, C, generator=g)
    weights = (0.7, 0.0, -1.5)
    k, v = site_kv(to_kv, cond, uncond, weight=2.0, cond_or_uncond=cond_or_uncond, per_chunk=3, heads=HEADS,
                   device=torch.device("cpu"), dtype=torch.float32, scaling=scaling, frame_weights=weights)
    rk, rv = reference_kv(cond, uncond, [2.0 * w for w in weights], cond_or_uncond, scaling)
    assert k.shape == (3 * len(cond_or_uncond), HEADS, t, D // HEADS)
    torch.testing.assert_close(k, rk, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(v, rv, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("scaling", EMBEDS_SCALINGS)
def test_frame_weight_zero_gives_exactly_no_term(scaling):
    """Latent 1 has factor 0: its term is exactly 0 (bit-identical output) for cond and uncond, in every mode."""
    cond, uncond = torch.randn(1, 4, C, generator=g), torch.randn(1, 4, C, generator=g)
    k, v = site_kv(to_kv, cond, uncond, weight=1.3, cond_or_uncond=[1, 0], per_chunk=2, heads=HEADS,
                   device=torch.device("cpu"), dtype=torch.float32, scaling=scaling, frame_weights=(1.0, 0.0))
    q, out = torch.randn(4, 5, D, generator=g), torch.randn(4, 5, D, generator=g)
    new = add_image_term(out, q, k, v)
    for row in (1, 3):  # latent 1 of the uncond chunk, latent 1 of the cond chunk
        assert torch.equal(new[row], out[row])
    for row in (0, 2):
        assert not torch.equal(new[row], out[row])


def test_shared_tokens_with_frame_weights_scale_each_latent():
    """Unfold off: every latent sees the same tokens, latent i's V' is w * f_i * V' of the shared layout."""
    cond, uncond = torch.randn(1, 4, C, generator=g), torch.randn(1, 4, C, generator=g)
    shared_k, shared_v = site_kv(to_kv, cond, uncond, weight=1.0, cond_or_uncond=[0, 1], per_chunk=3, heads=HEADS,
                                 device=torch.device("cpu"), dtype=torch.float32)
    k, v = site_kv(to_kv, cond, uncond, weight=1.0, cond_or_uncond=[0, 1], per_chunk=3, heads=HEADS,
                   device=torch.device("cpu"), dtype=torch.float32, frame_weights=(1.0, 0.5, 0.25))
    f = torch.tensor([1.0, 0.5, 0.25, 1.0, 0.5, 0.25]).reshape(6, 1, 1, 1)
    torch.testing.assert_close(k, shared_k, atol=0, rtol=0)
    torch.testing.assert_close(v, shared_v * f, atol=ATOL, rtol=0)


def test_frame_weights_keep_half_precision():
    cond, uncond = torch.randn(1, 4, C, generator=g), torch.randn(1, 4, C, generator=g)
    wk, wv = WK.half(), WV.half()
    k, v = site_kv(lambda t: (t @ wk.T, t @ wv.T), cond, uncond, weight=1.0, cond_or_uncond=[0], per_chunk=2,
                   heads=HEADS, device=torch.device("cpu"), dtype=torch.float16, frame_weights=(1.0, 0.5))
    assert k.dtype == v.dtype == torch.float16


# ------------------------------------------------------------------------------------------- masks in windows

def test_masks_in_a_context_window_follow_the_window_frames():
    per_site = torch.arange(6.0).reshape(6, 1, 1).expand(6, 2, 1)  # mask i has value i: 6 frames in the video
    out = batch_mask(per_site, per_chunk=3, chunks=2, frames=(4, 5, 0), full_length=6)
    assert out.shape == (6, 2, 1) and out[:, 0, 0].tolist() == [4, 5, 0, 4, 5, 0]
    # a mask batch as long as the window (not the video): one per latent of the window, as without a window
    out = batch_mask(per_site[:3], per_chunk=3, chunks=1, frames=(4, 5, 0), full_length=6)
    assert out[:, 0, 0].tolist() == [0, 1, 2]
    # any other size: mask 0 for every latent
    out = batch_mask(per_site[:4], per_chunk=3, chunks=1, frames=(4, 5, 0), full_length=6)
    assert out[:, 0, 0].tolist() == [0, 0, 0]
    # no window: a 6-mask batch on 3 latents -> mask 0 (the rule before context windows)
    assert batch_mask(per_site, per_chunk=3, chunks=1)[:, 0, 0].tolist() == [0, 0, 0]


def test_masks_past_sixteen_frames():
    """The old pack's complaint (#117): masks break past 16 frames with context windows. 48 frames, window 32..47."""
    per_site = torch.arange(48.0).reshape(48, 1, 1)
    frames = tuple(range(32, 48))
    out = batch_mask(per_site, per_chunk=16, chunks=2, frames=frames, full_length=48)
    assert out[:, 0, 0].tolist() == list(range(32, 48)) * 2
