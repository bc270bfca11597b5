"""IPA Apply (tiled) in a real ComfyUI (tiny SD1.5 and tiny CLIP vision from testkit/tiny_models.py: the encoder
input is 32 px; site ("input", 1, 0) sees the full 8x8 latent grid).

A 40 x 80 reference (twice as wide as tall) is cut into two 40 px tiles, left and right half, so on a square
8x8 latent tile 0 owns columns 0-3 and tile 1 columns 4-7. Exact claims are bit for bit: a term multiplied by a
zero mask adds exactly 0.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

KEY = ("input", 1, 0)


@pytest.fixture(scope="module")
def tiled(run_node, base_adapter, cv):
    def do(model, image, weight=1.0, **kw):
        return run_node("IPA_ApplyTiled", model=model, ipadapter=base_adapter, clip_vision=cv, image=image,
                        weight=weight, start_at=0.0, end_at=1.0, **kw)

    return do


def wide(make_image, seed=5):
    return make_image(seed, height=40, width=80)


def bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W, 3) -> (B, size, size, 3): the antialiased bicubic resize of CLIP preprocessing, clamped."""
    y = F.interpolate(x.movedim(-1, 1), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return y.clamp(0, 1).movedim(1, -1)


def test_outputs_tiles_and_masks_of_a_wide_reference(sd15, tiled, make_image, cv):
    image = wide(make_image)
    _, tiles, masks = tiled(sd15, image)
    size = int(cv.image_size)
    assert tiles.shape == (2, size, size, 3)
    assert torch.allclose(tiles[0], bicubic(image[:, :, :40], size)[0], atol=1e-6)
    assert torch.allclose(tiles[1], bicubic(image[:, :, 40:], size)[0], atol=1e-6)
    want = torch.zeros(2, 40, 80)
    want[0, :, :40] = want[1, :, 40:] = 1
    assert torch.equal(masks, want)


def test_one_clone_with_one_term_per_tile_sharing_the_adapter(sd15, tiled, make_image, attn2_patches, base_adapter,
                                                              run_node, cv):
    """Every site holds one term per tile, all of the same LoadedAdapter; tile k's tokens are those of tile k
    encoded alone (within float tolerance of a batched pass, 1e-5); the input model gets no patch."""
    image = wide(make_image)
    model, tiles, _ = tiled(sd15, image)
    patches = attn2_patches(model)
    assert len(patches) == 7
    for patch in patches.values():
        assert len(patch.terms) == 2 and all(run.adapter is base_adapter for run, _ in patch.terms)
    runs = [run for run, _ in patches[KEY].terms]
    for k, run in enumerate(runs):
        alone = run_node("IPA_Encode", ipadapter=base_adapter, clip_vision=cv, image=tiles[k:k + 1])[0]
        assert torch.allclose(run.cond, alone.cond, atol=1e-5), k
    assert not torch.allclose(runs[0].cond, runs[1].cond, atol=1e-4)
    assert "patches_replace" not in sd15.model_options.get("transformer_options", {})


def test_changing_one_tile_changes_only_its_region(sd15, tiled, make_image, call_site):
    """Repainting the right half of the reference changes tile 1's tokens only: the site's output changes on the
    right half of the latent (columns 4-7 of the cond chunk; the uncond tokens are the same) and not one value on
    the left half."""
    image = wide(make_image)
    repainted = image.clone()
    repainted[:, :, 40:] = make_image(9, height=40, width=40)
    a, base = call_site(tiled(sd15, image)[0], KEY)
    b, _ = call_site(tiled(sd15, repainted)[0], KEY)
    a, b, base = (t.reshape(2, 8, 8, -1) for t in (a, b, base))
    assert torch.equal(a[:, :, :4], b[:, :, :4])
    assert (a[1, :, 4:] - b[1, :, 4:]).abs().amax(dim=-1).min() > 1e-6  # cond_or_uncond [1, 0]: chunk 1 = cond
    assert (a - base)[:, :, :4].abs().amax(dim=-1).min() > 1e-5, "the left tile lost its term"


def test_uniform_reference_with_overlaps_equals_one_plain_apply(sd15, tiled, make_image, run_node, base_adapter, cv,
                                                               call_site):
    """A one-colour reference: every tile is the same picture, and the region masks sum to 1 (0.5 + 0.5 in the
    overlaps), so the tiled patch equals IPA Apply of that picture (tolerance 1e-5 for the float sums)."""
    image = torch.full((1, 40, 100, 3), 0.3)
    image[..., 1] = 0.7
    model, tiles, masks = tiled(sd15, image, tile_overlap=0.3)
    # t = 40, neighbours <= 28 px apart: 1 + ceil(60 / 28) = 4 tiles at 0, 20, 40, 60; columns 20-80 covered twice
    assert tiles.shape[0] == 4 and torch.equal(masks[:, 0, 30], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert torch.allclose(masks.sum(0), torch.ones(40, 100))
    plain = run_node("IPA_Apply", model=sd15, ipadapter=base_adapter, weight=1.0, start_at=0.0, end_at=1.0,
                     image=tiles[:1], clip_vision=cv)[0]
    out, base = call_site(model, KEY)
    want, _ = call_site(plain, KEY)
    assert not torch.allclose(want, base, atol=1e-4)
    assert torch.allclose(out, want, atol=1e-5)


def test_weight_zero_and_zero_attn_mask_sample_like_the_plain_model(sd15, tiled, make_image, sample):
    image = wide(make_image)
    plain = sample(sd15)
    assert torch.equal(sample(tiled(sd15, image, weight=0.0)[0]), plain)
    assert torch.equal(sample(tiled(sd15, image, attn_mask=torch.zeros(1, 16, 16))[0]), plain)
    assert not torch.equal(sample(tiled(sd15, image)[0]), plain)


def test_attn_mask_multiplies_every_region(sd15, tiled, make_image, call_site):
    """attn_mask = top half of a 16 x 16 canvas: the masks are the tile rectangles on that canvas (the 40 x 80
    reference stretched onto it: columns 0-7 and 8-15) times it, and the site's output keeps the plain attention
    on the latent's bottom half (16 -> 8 is an exact 2x2 area average)."""
    attn = torch.zeros(1, 16, 16)
    attn[:, :8] = 1
    model, _, masks = tiled(sd15, wide(make_image), attn_mask=attn)
    want = torch.zeros(2, 16, 16)
    want[0, :8, :8] = want[1, :8, 8:] = 1
    assert torch.equal(masks, want)
    out, base = call_site(model, KEY)
    out, base = out.reshape(2, 8, 8, -1), base.reshape(2, 8, 8, -1)
    assert torch.equal(out[:, 4:], base[:, 4:]) and not torch.equal(out[:, :4], base[:, :4])


def test_near_square_reference_gets_four_tiles(sd15, tiled, make_image, attn2_patches):
    """80 px square, encoder 32 px: 2 tiles per side are 40 px >= 32, so 2x2 tiles, one term each."""
    model, tiles, masks = tiled(sd15, make_image(6, height=80, width=80))
    assert tiles.shape[0] == 4 and masks.shape == (4, 80, 80)
    assert torch.equal(masks[3, 40:, 40:], torch.ones(40, 40)) and masks[3, :40].sum() == 0
    assert all(len(p.terms) == 4 for p in attn2_patches(model).values())


def test_image_batch_tiles_each_image_and_shares_tiles_per_region(sd15, tiled, make_image, attn2_patches, run_node,
                                                                   base_adapter, cv):
    """Two 40 x 80 images: tiles come tile-major (left of image 0, left of image 1, right of 0, right of 1) and
    region k attends to tile k of both images together (2 x 4 tokens, as IPA Apply does with a batch of two)."""
    images = make_image(7, batch=2, height=40, width=80)
    model, tiles, masks = tiled(sd15, images)
    assert tiles.shape[0] == 4 and masks.shape[0] == 2
    size = int(cv.image_size)
    assert torch.allclose(tiles[1], bicubic(images[1:, :, :40], size)[0], atol=1e-6)
    assert torch.allclose(tiles[2], bicubic(images[:1, :, 40:], size)[0], atol=1e-6)
    runs = [run for run, _ in attn2_patches(model)[KEY].terms]
    for k, run in enumerate(runs):
        pair = run_node("IPA_Encode", ipadapter=base_adapter, clip_vision=cv, image=tiles[2 * k:2 * k + 2])[0]
        assert torch.allclose(run.cond, pair.cond.reshape(1, -1, pair.cond.shape[-1]), atol=1e-5), k


@pytest.mark.parametrize("kw,pattern", [
    ({"tile_overlap": 0.95}, r"^IPA Apply \(tiled\), input 'tile_overlap'"),
    ({"short_side_tiles": 9}, r"^IPA Apply \(tiled\), input 'short_side_tiles'"),
    ({"attn_mask": torch.ones(1, 1, 4, 4)}, r"^IPA Apply \(tiled\), input 'attn_mask'"),
    ({"image": torch.rand(1, 8, 8, 5)}, r"^IPA Apply \(tiled\), input 'image'"),
    ({"start_at": 0.8, "end_at": 0.2}, r"^IPA Apply \(tiled\): start_at"),
])
def test_bad_inputs_are_refused_naming_node_and_input(sd15, run_node, base_adapter, cv, make_image, pack_module,
                                                      kw, pattern):
    errors = pack_module("ip_adapter_core.errors")
    inputs = dict(model=sd15, ipadapter=base_adapter, clip_vision=cv, image=wide(make_image), weight=1.0,
                  start_at=0.0, end_at=1.0)
    with pytest.raises(errors.InputError, match=pattern):
        run_node("IPA_ApplyTiled", **{**inputs, **kw})


def test_missing_or_wrong_clip_vision_is_refused(sd15, run_node, base_adapter, make_clip_vision, make_image,
                                                 pack_module):
    errors = pack_module("ip_adapter_core.errors")
    inputs = dict(model=sd15, ipadapter=base_adapter, image=wide(make_image), weight=1.0, start_at=0.0, end_at=1.0)
    with pytest.raises(errors.InputError, match=r"^IPA Apply \(tiled\): input 'clip_vision' is missing"):
        run_node("IPA_ApplyTiled", clip_vision=None, **inputs)
    with pytest.raises(errors.IncompatibleError, match=r"^IPA Apply \(tiled\), input 'clip_vision'"):
        run_node("IPA_ApplyTiled", clip_vision=make_clip_vision(hidden=64, proj=24), **inputs)
