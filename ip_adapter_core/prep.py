"""Reference-image preparation for a CLIP vision encoder: crop or pad to a square, resize, optionally sharpen.

CLIP resizes the short side to the encoder size and centre-crops, so content outside the central square of a
non-square reference never reaches the encoder. ``prep_image`` makes that choice explicit:

- crop "center" / "top" / "bottom" / "left" / "right": resize the short side to ``size`` (long side
  ``round(size * long / short)``, as ComfyUI's ``clip_preprocess``) and take the ``size`` x ``size`` window at that
  position; the window's other axis is centred (offset ``(dim - size) // 2``). "center" with "bicubic" gives
  exactly the pixels ComfyUI's own CLIP preprocessing would crop.
- crop "pad": letterbox the whole image into a square (content centred, offset ``(long - short) // 2``) filled
  with ``PAD_COLOR``, then resize the square to ``size``. Nothing is cut off.

``PAD_COLOR`` is the CLIP normalisation mean (0.4815, 0.4578, 0.4082), a neutral grey: after CLIP's
normalisation the bars are exactly zero, the same "no image" input the adapters' training uses for the uncond,
so the bars carry as little signal as any pixel can. Black bars (the older nodes' choice) are a strong dark
feature (about -1.8 after normalisation) that the encoder describes as part of the picture.

Interpolation (``INTERPOLATIONS``): "bicubic" and "bilinear" use ``torch.nn.functional.interpolate`` with
``antialias=True`` (as ComfyUI's ``clip_preprocess``), "nearest" is "nearest-exact" (pixel centres), "area" is
box averaging, "lanczos" is a separable Lanczos-3 filter widened by the downscale factor (as PIL's LANCZOS).
An image already ``size`` x ``size`` is not resampled.

Sharpening s in 0..1 is an unsharp mask applied after resizing: ``out = x + s * (x - G * x)``, G the 3x3
binomial kernel ``[1, 2, 1]^T [1, 2, 1] / 16`` with replicated borders; s = 0 leaves the image unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .compat import prepare_images
from .errors import InputError, check_choice

CROPS = ("center", "top", "bottom", "left", "right", "pad")
INTERPOLATIONS = ("bicubic", "bilinear", "lanczos", "nearest", "area")
PAD_COLOR = (0.48145466, 0.4578275, 0.40821073)
LANCZOS_A = 3

_BINOMIAL = torch.tensor([1.0, 2.0, 1.0]) / 4.0


def prep_image(image: torch.Tensor, *, size: int, crop: str = "center", interpolation: str = "bicubic",
               sharpening: float = 0.0, where: str = "prep_image") -> torch.Tensor:
    """image: IMAGE (B, H, W, C), C in 1..4 -> (B, size, size, 3) float32 in [0, 1] (alpha dropped, gray expanded)."""
    check_choice(crop, CROPS, what="crop", where=where)
    check_choice(interpolation, INTERPOLATIONS, what="interpolation", where=where)
    if not 0.0 <= sharpening <= 1.0:
        raise InputError(f"{where}: sharpening {sharpening} is outside 0..1.")
    if size < 1:
        raise InputError(f"{where}: size {size} must be at least 1 pixel.")
    x = prepare_images(image, where=f"{where}, input 'image'").movedim(-1, 1)
    _, _, h, w = x.shape
    if crop == "pad":
        x = _resize(_letterbox(x), size, size, interpolation)
    else:
        scale = size / min(h, w)
        rh, rw = max(size, round(scale * h)), max(size, round(scale * w))
        x = _resize(x, rh, rw, interpolation)
        top = {"top": 0, "bottom": rh - size}.get(crop, (rh - size) // 2)
        left = {"left": 0, "right": rw - size}.get(crop, (rw - size) // 2)
        x = x[:, :, top:top + size, left:left + size]
    if sharpening > 0.0:
        x = x + sharpening * (x - _blur(x))
    return x.clamp(0.0, 1.0).movedim(1, -1).contiguous()


def _letterbox(x: torch.Tensor) -> torch.Tensor:
    """x: (B, 3, H, W) -> (B, 3, S, S), S = max(H, W), x centred on PAD_COLOR."""
    b, c, h, w = x.shape
    side = max(h, w)
    out = torch.tensor(PAD_COLOR, dtype=x.dtype, device=x.device).view(1, c, 1, 1).repeat(b, 1, side, side)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, :, top:top + h, left:left + w] = x
    return out


def _resize(x: torch.Tensor, height: int, width: int, interpolation: str) -> torch.Tensor:
    """x: (B, C, H, W) -> (B, C, height, width); unchanged when the size already matches."""
    if x.shape[-2:] == (height, width):
        return x
    if interpolation == "lanczos":
        rows = _lanczos_matrix(x.shape[-2], height, x)
        cols = _lanczos_matrix(x.shape[-1], width, x)
        return torch.einsum("oh,bchw,pw->bcop", rows, x, cols)
    if interpolation in ("bicubic", "bilinear"):
        return F.interpolate(x, size=(height, width), mode=interpolation, antialias=True, align_corners=False)
    mode = "nearest-exact" if interpolation == "nearest" else "area"
    return F.interpolate(x, size=(height, width), mode=mode)


def _lanczos_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in) resampling weights: Lanczos-3 around each output pixel centre, stretched by the downscale
    factor (antialiasing), each row normalised to sum 1 (PIL's LANCZOS)."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    d = ((torch.arange(n_in, dtype=torch.float64) + 0.5)[None, :] - centres[:, None]) / stretch
    weights = torch.sinc(d) * torch.sinc(d / LANCZOS_A) * (d.abs() < LANCZOS_A)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return weights.to(dtype=like.dtype, device=like.device)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W) -> 3x3 binomial blur per channel, replicated borders."""
    c = x.shape[1]
    k = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(dtype=x.dtype, device=x.device)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(c, 1, 3, 3), groups=c)


def cas_sharpen(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Contrast-adaptive sharpening (AMD FidelityFX CAS), as the incumbent's IPAdapter Tiled applies it: x (B, C, H,
    W) in [0, 1] -> the same shape in [0, 1]. Per pixel, over its 3x3 neighbourhood (zero outside the image): lo / hi
    = min / max of the plus-shaped five, each clamped to [0, 1], plus the same of the four corners;
    amp = sqrt(min(lo, 2 - hi) / hi); the four edge neighbours get the weight -amp * (1/8 + amount * (1/5 - 1/8))
    against the centre's 1, normalised; NaN (a black neighbourhood) -> 0. amount 0 still sharpens (at 1/8)."""
    p = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]

    def at(dy: int, dx: int) -> torch.Tensor:
        return p[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    edges = [at(-1, 0), at(0, -1), at(0, 1), at(1, 0)]
    corners = [at(-1, -1), at(-1, 1), at(1, -1), at(1, 1)]
    plus = torch.stack([x, *edges])
    diag = torch.stack(corners)
    lo = plus.amin(0).clamp(min=0) + diag.amin(0).clamp(min=0)
    hi = plus.amax(0).clamp(max=1) + diag.amax(0).clamp(max=1)
    amp = torch.sqrt(torch.reciprocal(hi) * torch.minimum(lo, 2 - hi))  # this order of float operations: the
    weight = -amp * (amount * (1 / 5 - 1 / 8) + 1 / 8)  # incumbent's pixels exactly (a random UNet amplifies 1e-7)
    out = ((edges[0] + edges[1] + edges[2] + edges[3]) * weight + x) * torch.reciprocal(1 + 4 * weight)
    return torch.nan_to_num(out).clamp(0, 1)
