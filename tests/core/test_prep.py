"""Reference-image preparation (ip_adapter_core.prep): crop windows, padding, filters and sharpening by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ip_adapter_core.errors import InputError
from ip_adapter_core.prep import CROPS, INTERPOLATIONS, PAD_COLOR, cas_sharpen, prep_image


def gradient(h: int, w: int) -> torch.Tensor:
    """(1, h, w, 3): red rises left -> right, green rises top -> bottom, blue constant."""
    ys = torch.linspace(0, 1, h)[:, None].expand(h, w)
    xs = torch.linspace(0, 1, w)[None, :].expand(h, w)
    return torch.stack([xs, ys, torch.full((h, w), 0.5)], dim=-1)[None]


def resized(image: torch.Tensor, h: int, w: int, mode: str = "bicubic") -> torch.Tensor:
    x = F.interpolate(image.movedim(-1, 1), size=(h, w), mode=mode, antialias=True, align_corners=False)
    return x.clamp(0, 1).movedim(1, -1)


def test_center_crop_equals_slicing_the_resized_image():
    image = torch.rand(2, 40, 60, 3, generator=torch.Generator().manual_seed(0))
    out = prep_image(image, size=16, crop="center")
    big = resized(image, 16, 24)
    assert out.shape == (2, 16, 16, 3)
    assert torch.allclose(out, big[:, :, 4:20], atol=1e-6)


def test_center_crop_matches_comfyui_clip_preprocess_geometry():
    """clip_preprocess: long side round(scale * dim), offset (dim - size) // 2 (here 42 -> 35 px, offset 9)."""
    image = torch.rand(1, 42, 24, 3, generator=torch.Generator().manual_seed(1))
    out = prep_image(image, size=20, crop="center")
    assert torch.allclose(out, resized(image, 35, 20)[:, 7:27], atol=1e-6)


@pytest.mark.parametrize("crop,rows,cols", [("left", slice(None), slice(0, 16)), ("right", slice(None), slice(8, 24)),
                                             ("top", slice(None), slice(4, 20)), ("bottom", slice(None), slice(4, 20))])
def test_positions_on_a_wide_image_pick_their_window(crop, rows, cols):
    image = gradient(40, 60)
    big = resized(image, 16, 24)
    assert torch.allclose(prep_image(image, size=16, crop=crop), big[:, rows, cols], atol=1e-6)


@pytest.mark.parametrize("crop,rows", [("top", slice(0, 16)), ("bottom", slice(8, 24)), ("center", slice(4, 20)),
                                       ("left", slice(4, 20)), ("right", slice(4, 20))])
def test_positions_on_a_tall_image_pick_their_window(crop, rows):
    image = gradient(60, 40)
    big = resized(image, 24, 16)
    out = prep_image(image, size=16, crop=crop)
    assert torch.allclose(out, big[:, rows], atol=1e-6)


def test_top_window_is_darker_in_green_than_bottom_window():
    image = gradient(90, 30)
    top, bottom = prep_image(image, size=16, crop="top"), prep_image(image, size=16, crop="bottom")
    assert top[..., 1].mean() < 0.3 < 0.7 < bottom[..., 1].mean()


def test_pad_keeps_the_whole_wide_image_between_grey_bars():
    image = torch.ones(1, 20, 40, 3)
    out = prep_image(image, size=20, crop="pad", interpolation="nearest")
    pad = torch.tensor(PAD_COLOR)
    assert out.shape == (1, 20, 20, 3)
    assert torch.allclose(out[0, :5], pad.expand(5, 20, 3))
    assert torch.allclose(out[0, 15:], pad.expand(5, 20, 3))
    assert torch.equal(out[0, 5:15], torch.ones(10, 20, 3))


def test_pad_with_antialiased_filter_keeps_content_and_bars():
    image = gradient(30, 90)
    out = prep_image(image, size=30, crop="pad")
    pad = torch.tensor(PAD_COLOR)
    assert torch.allclose(out[0, :8], pad.expand(8, 30, 3), atol=1e-5)
    assert torch.allclose(out[0, -8:], pad.expand(8, 30, 3), atol=1e-5)
    red = out[0, 15, :, 0]
    assert red[0] < 0.05 and red[-1] > 0.95, "the whole width (red 0 -> 1) is kept"


def test_pad_of_a_tall_image_puts_bars_left_and_right():
    out = prep_image(torch.zeros(1, 40, 20, 3), size=20, crop="pad", interpolation="nearest")
    assert torch.allclose(out[0, :, :5], torch.tensor(PAD_COLOR).expand(20, 5, 3))
    assert torch.equal(out[0, :, 5:15], torch.zeros(20, 10, 3))


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_square_image_at_size_is_unchanged_and_every_mode_stays_in_range(crop, interpolation):
    image = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(prep_image(image, size=16, crop=crop, interpolation=interpolation), image)
    big = torch.rand(2, 37, 23, 3, generator=torch.Generator().manual_seed(3))
    out = prep_image(big, size=16, crop=crop, interpolation=interpolation, sharpening=1.0)
    assert out.shape == (2, 16, 16, 3) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_upscaling_works_for_every_filter():
    image = gradient(8, 12)
    for interpolation in INTERPOLATIONS:
        out = prep_image(image, size=32, interpolation=interpolation)
        assert out.shape == (1, 32, 32, 3)


def test_lanczos_matches_pil():
    Image = pytest.importorskip("PIL.Image")
    import numpy as np

    image = torch.rand(1, 50, 50, 3, generator=torch.Generator().manual_seed(4))
    out = prep_image(image, size=20, interpolation="lanczos")
    for c in range(3):
        ref = Image.fromarray(image[0, :, :, c].numpy().astype(np.float32), mode="F").resize((20, 20), Image.LANCZOS)
        assert torch.allclose(out[0, :, :, c], torch.from_numpy(np.array(ref)).clamp(0, 1), atol=1e-4)


def test_lanczos_keeps_a_constant_image_constant():
    out = prep_image(torch.full((1, 50, 31, 3), 0.3), size=16, interpolation="lanczos")
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-6)


def test_sharpening_zero_is_identity_and_positive_raises_edge_contrast():
    image = torch.rand(1, 30, 30, 3, generator=torch.Generator().manual_seed(5)) * 0.5 + 0.25
    base = prep_image(image, size=24)
    assert torch.equal(prep_image(image, size=24, sharpening=0.0), base)
    edge = torch.zeros(1, 24, 24, 3)
    edge[:, :, 12:] = 1.0
    edge = edge * 0.5 + 0.25
    soft, sharp = prep_image(edge, size=24), prep_image(edge, size=24, sharpening=0.8)
    assert torch.equal(soft, edge)
    assert sharp[0, 0, 11, 0] < soft[0, 0, 11, 0] and sharp[0, 0, 12, 0] > soft[0, 0, 12, 0]
    assert torch.allclose(sharp[0, 0, 11, 0], torch.tensor(0.25 - 0.8 * 0.125))
    assert torch.equal(sharp[:, :, :10], soft[:, :, :10]), "flat areas are unchanged"
    grads = [(x[:, :, 1:] - x[:, :, :-1]).abs().sum() for x in (base, prep_image(image, size=24, sharpening=0.5))]
    assert grads[1] > grads[0]


def test_gray_and_rgba_are_handled_like_encode():
    gray = torch.rand(1, 20, 30, 1, generator=torch.Generator().manual_seed(6))
    out = prep_image(gray, size=10)
    assert out.shape == (1, 10, 10, 3)
    assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 1], out[..., 2])
    rgb = torch.rand(1, 20, 30, 3, generator=torch.Generator().manual_seed(7))
    rgba = torch.cat([rgb, torch.zeros(1, 20, 30, 1)], dim=-1)
    assert torch.equal(prep_image(rgba, size=10), prep_image(rgb, size=10))
    assert prep_image(torch.rand(1, 20, 30, 2), size=10).shape == (1, 10, 10, 3)


@pytest.mark.parametrize("image,kwargs,words", [
    (torch.rand(20, 30, 3), {}, "[B, H, W, C]"),
    (torch.rand(0, 20, 30, 3), {}, "empty"),
    (torch.rand(1, 20, 30, 5), {}, "5 channels"),
    (torch.full((1, 4, 4, 3), float("nan")), {}, "NaN"),
    (torch.rand(1, 8, 8, 3), {"crop": "middle"}, "unknown crop"),
    (torch.rand(1, 8, 8, 3), {"interpolation": "hamming"}, "unknown interpolation"),
    (torch.rand(1, 8, 8, 3), {"sharpening": 1.5}, "outside 0..1"),
    (torch.rand(1, 8, 8, 3), {"size": 0}, "at least 1"),
])
def test_bad_inputs_are_refused_with_a_clear_message(image, kwargs, words):
    with pytest.raises(InputError, match="^Prep(, input .image.)?: .*" + words.replace("[", r"\[").replace("]", r"\]")):
        prep_image(image, **{"size": 8, **kwargs}, where="Prep")


def test_cas_sharpen_keeps_flat_regions_and_raises_edge_contrast():
    """Contrast-adaptive sharpening: a flat image is a fixed point, a step edge gets steeper, values stay in 0..1, and
    a larger amount sharpens more."""
    flat = torch.full((1, 3, 8, 8), 0.4)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # the border sees the zero padding
    assert torch.allclose(cas_sharpen(flat, 0.5)[inner], flat[inner], atol=1e-6)
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 0.6
    step[..., :4] = 0.3
    soft, hard = cas_sharpen(step, 0.0), cas_sharpen(step, 1.0)
    jump = lambda t: float(t[0, 0, 4, 4] - t[0, 0, 4, 3])  # noqa: E731
    assert jump(step) < jump(soft) < jump(hard)
    assert float(hard.min()) >= 0.0 and float(hard.max()) <= 1.0
