"""Noise images for a negative (uncond) image prompt: deterministic from a seed.

The start image is the reference image (B, H, W, 3) in 0..1 when one is given, otherwise black (batch, height,
width, 3). With strength s in 0..1 and a torch.Generator seeded with ``seed``:

- fade:     (1 - s) * start + s * U, U uniform noise in [0, 1) per pixel and channel.
- dissolve: each pixel (all three channels together) is replaced by uniform noise with probability s.
- gaussian: start + s * N(0, 1) per pixel and channel, clamped to [0, 1].
- shuffle:  a fraction s of the pixel positions of each image swap places at random (colours kept, layout
            destroyed); needs a reference image (shuffling black gives black).
"""
from __future__ import annotations

import torch

from .errors import InputError, check_choice

NOISE_TYPES = ("fade", "dissolve", "gaussian", "shuffle")


def noise_image(*, noise_type: str, width: int, height: int, batch: int, seed: int, strength: float,
                image: torch.Tensor | None = None, where: str) -> torch.Tensor:
    """-> IMAGE (B, H, W, 3) float32 in [0, 1]; (B, H, W) from ``image`` when given, else (batch, height, width)."""
    check_choice(noise_type, NOISE_TYPES, what="type", where=where)
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"{where}: strength {strength} is outside 0..1.")
    if image is None:
        if noise_type == "shuffle":
            raise InputError(f"{where}: type 'shuffle' rearranges the pixels of a reference image; connect "
                             f"'image' or pick 'fade', 'dissolve' or 'gaussian'.")
        start = torch.zeros(batch, height, width, 3)
    else:
        start = image.float().cpu()
    g = torch.Generator().manual_seed(int(seed))
    b, h, w, c = start.shape
    if noise_type == "fade":
        return ((1.0 - strength) * start + strength * torch.rand(start.shape, generator=g)).clamp(0.0, 1.0)
    if noise_type == "dissolve":
        replace = torch.rand(b, h, w, 1, generator=g) < strength
        return torch.where(replace, torch.rand(start.shape, generator=g), start)
    if noise_type == "gaussian":
        return (start + strength * torch.randn(start.shape, generator=g)).clamp(0.0, 1.0)
    flat = start.reshape(b, h * w, c).clone()
    count = round(strength * h * w)
    for i in range(b):
        chosen = torch.randperm(h * w, generator=g)[:count]
        flat[i, chosen] = flat[i, chosen[torch.randperm(count, generator=g)]]
    return flat.reshape(b, h, w, c)
