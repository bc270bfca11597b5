"""Noise images for the negative image prompt (ip_adapter_core.noise): the documented formulas, by hand."""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core.errors import InputError
from ip_adapter_core.noise import noise_image


def make(noise_type, strength, image=None, seed=1):
    return noise_image(noise_type=noise_type, width=5, height=4, batch=2, seed=seed, strength=strength, image=image,
                       where="t")


def test_fade_is_a_lerp_toward_the_seeded_uniform_noise():
    start = torch.full((1, 4, 5, 3), 0.5)
    u = torch.rand(start.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(make("fade", 0.25, start), 0.75 * start + 0.25 * u)
    assert make("fade", 1.0).shape == (2, 4, 5, 3)
    assert torch.equal(make("fade", 0.0, start), start)


def test_gaussian_adds_scaled_normal_noise_clipped():
    start = torch.full((1, 4, 5, 3), 0.5)
    n = torch.randn(start.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(make("gaussian", 0.1, start), (start + 0.1 * n).clamp(0, 1))


def test_dissolve_replaces_whole_pixels():
    start = torch.full((1, 4, 5, 3), 0.5)
    assert torch.equal(make("dissolve", 0.0, start), start)
    out = make("dissolve", 0.5, start)
    kept = (out == 0.5).all(-1)
    assert kept.any() and (~kept).any()
    assert ((out == 0.5).any(-1) == kept).all()  # a replaced pixel has all three channels replaced


def test_shuffle_moves_pixels_and_keeps_colours():
    start = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).reshape(2, 4, 5, 3) / 120
    out = make("shuffle", 1.0, start)
    assert not torch.equal(out, start)
    assert torch.equal(out.reshape(2, -1, 3).sort(1).values, start.reshape(2, -1, 3).sort(1).values)
    assert torch.equal(make("shuffle", 0.0, start), start)


def test_same_seed_same_image_and_bad_inputs():
    assert torch.equal(make("dissolve", 0.7), make("dissolve", 0.7))
    assert not torch.equal(make("fade", 1.0, seed=1), make("fade", 1.0, seed=2))
    with pytest.raises(InputError, match="needs|connect 'image'"):
        make("shuffle", 0.5)
    with pytest.raises(InputError, match="unknown type"):
        make("blur", 0.5)
    with pytest.raises(InputError, match="outside 0..1"):
        make("fade", 1.5)
