"""Tile geometry of tiled references (ip_adapter_core.tiles): grids, tile cutting and region masks, checked against
rectangles worked out by hand in each test's docstring or comment."""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core.errors import InputError
from ip_adapter_core.tiles import axis_starts, cut_tiles, mask_canvas, old_pack_tiling, tile_grid, tile_masks

S = 224  # the usual CLIP vision input size


def boxes(grid):
    return grid.boxes


def test_square_512_is_four_quadrants():
    """Near-square and 2 tiles per side stay >= 224 px (256): k = 2, t = 256, starts 0 and 256 on both axes."""
    g = tile_grid(512, 512, encoder_size=S)
    assert g.size == 256 and len(g) == 4
    assert boxes(g) == [(0, 0, 256, 256), (0, 256, 256, 512), (256, 0, 512, 256), (256, 256, 512, 512)]


def test_small_square_is_not_split():
    """300 px square: two tiles would be 150 px < 224 (upscaled, blurred), so one tile = the whole image."""
    g = tile_grid(300, 300, encoder_size=S)
    assert boxes(g) == [(0, 0, 300, 300)]


def test_portrait_4_to_5_keeps_the_whole_image():
    """800 wide x 1000 tall (ratio 1.25 < 4/3): k = 2, t = 400; width 800 = 2 tiles (0, 400); height 1000 needs
    1 + ceil(600 / 400) = 3 tiles at round(i * 600 / 2) = 0, 300, 600 (100 px overlaps). 6 tiles, nothing cropped."""
    g = tile_grid(1000, 800, encoder_size=S)
    assert g.size == 400 and g.tops == (0, 300, 600) and g.lefts == (0, 400)
    assert boxes(g) == [(0, 0, 400, 400), (0, 400, 400, 800), (300, 0, 700, 400), (300, 400, 700, 800),
                        (600, 0, 1000, 400), (600, 400, 1000, 800)]


def test_wide_3_to_1_is_one_row():
    """672 x 224 (ratio 3): k = 1, t = 224, lefts 0, 224, 448 (exact fit, no overlap)."""
    g = tile_grid(224, 672, encoder_size=S)
    assert boxes(g) == [(0, 0, 224, 224), (0, 224, 224, 448), (0, 448, 224, 672)]


def test_tall_1_to_4_is_one_column():
    """100 wide x 400 tall: k = 1, t = 100, tops 0, 100, 200, 300."""
    g = tile_grid(400, 100, encoder_size=S)
    assert boxes(g) == [(0, 0, 100, 100), (100, 0, 200, 100), (200, 0, 300, 100), (300, 0, 400, 100)]


def test_overlap_spreads_tiles_evenly():
    """672 x 224 with overlap 0.25: step <= 168, so n = 1 + ceil(448 / 168) = 4 tiles at round(i * 448 / 3) =
    0, 149 (149.33), 299 (298.67), 448; every neighbour overlaps by >= 56 px."""
    g = tile_grid(224, 672, encoder_size=S, overlap=0.25)
    assert g.lefts == (0, 149, 299, 448) and g.tops == (0,)
    assert all(b - a <= 224 - 56 for a, b in zip(g.lefts, g.lefts[1:]))


def test_overlap_shrinks_the_tiles_of_a_near_square_grid():
    """512 square, overlap 0.25, 2 tiles per side: t = ceil(512 / 1.75) = 293 (>= 224 so auto keeps k = 2);
    starts 0 and 512 - 293 = 219: overlap 74 px >= 0.25 * 293."""
    g = tile_grid(512, 512, encoder_size=S, overlap=0.25)
    assert g.size == 293 and g.tops == g.lefts == (0, 219)


def test_explicit_short_side_tiles():
    """300 tall x 900 wide with 2 tiles across the short side: t = 150; height: 0, 150; width 1 + ceil(750 / 150) =
    6 tiles at 0, 150, ..., 750."""
    g = tile_grid(300, 900, encoder_size=S, short_side_tiles=2)
    assert g.size == 150 and g.tops == (0, 150) and g.lefts == (0, 150, 300, 450, 600, 750)
    assert len(g) == 12


@pytest.mark.parametrize("h,w,want", [
    (1, 1, [(0, 0, 1, 1)]),
    (5, 3, [(0, 0, 3, 3), (2, 0, 5, 3)]),  # t = 3; tops 0 and 5 - 3 = 2
    (2, 7, [(0, 0, 2, 2), (0, 2, 2, 4), (0, 3, 2, 5), (0, 5, 2, 7)]),  # n = 1 + ceil(5/2) = 4: round(i*5/3) = 0,2,3,5
])
def test_tiny_images(h, w, want):
    assert boxes(tile_grid(h, w, encoder_size=S)) == want


def test_tiny_images_never_get_more_tiles_than_pixels():
    g = tile_grid(1, 1, encoder_size=S, short_side_tiles=4)
    assert boxes(g) == [(0, 0, 1, 1)]


@pytest.mark.parametrize("h,w", [(512, 512), (1000, 800), (224, 672), (400, 100), (333, 1001), (7, 3), (1, 50)])
@pytest.mark.parametrize("overlap", [0.0, 0.3, 0.9])
def test_every_grid_covers_the_image_with_square_tiles_inside_it(h, w, overlap):
    g = tile_grid(h, w, encoder_size=S, overlap=overlap)
    cover = torch.zeros(h, w)
    for y0, x0, y1, x1 in g.boxes:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w and y1 - y0 == x1 - x0 == g.size
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    for starts in (g.tops, g.lefts):
        assert all(b - a <= g.size * (1 - overlap) + 1 for a, b in zip(starts, starts[1:]))


def test_axis_starts_by_hand():
    assert axis_starts(10, 10, 0.0) == (0,)
    assert axis_starts(9, 10, 0.0) == (0,)
    assert axis_starts(20, 10, 0.0) == (0, 10)
    assert axis_starts(21, 10, 0.0) == (0, 6, 11)  # n = 1 + ceil(11/10) = 3: round(5.5) = 6, 11
    assert axis_starts(20, 10, 0.5) == (0, 5, 10)  # step <= 5: n = 1 + ceil(10/5) = 3


@pytest.mark.parametrize("kwargs,name", [({"overlap": -0.1}, "tile_overlap"), ({"overlap": 0.95}, "tile_overlap"),
                                         ({"short_side_tiles": -1}, "short_side_tiles"),
                                         ({"short_side_tiles": 99}, "short_side_tiles")])
def test_bad_settings_name_the_input(kwargs, name):
    with pytest.raises(InputError, match=f"node, input '{name}'"):
        tile_grid(100, 100, encoder_size=S, where="node", **kwargs)


def test_cut_tiles_is_tile_major_and_exact():
    """Two 4 x 8 images (values encode image, row, column) -> 2 tiles of 4 x 4: rows 0-1 = tile 0 of images 0, 1."""
    b, h, w = 2, 4, 8
    img = (torch.arange(b)[:, None, None] * 1000 + torch.arange(h)[None, :, None] * 10
           + torch.arange(w)[None, None, :]).float()[..., None].expand(b, h, w, 3)
    g = tile_grid(h, w, encoder_size=S)
    assert boxes(g) == [(0, 0, 4, 4), (0, 4, 4, 8)]
    tiles = cut_tiles(img, g)
    assert tiles.shape == (4, 4, 4, 3)
    assert torch.equal(tiles[0], img[0, :, :4]) and torch.equal(tiles[1], img[1, :, :4])
    assert torch.equal(tiles[2], img[0, :, 4:]) and torch.equal(tiles[3], img[1, :, 4:])


def test_masks_of_quadrants_are_exact_quarters():
    g = tile_grid(512, 512, encoder_size=S)
    m = tile_masks(g, (4, 4))
    want = torch.zeros(4, 4, 4)
    want[0, :2, :2] = want[1, :2, 2:] = want[2, 2:, :2] = want[3, 2:, 2:] = 1
    assert torch.equal(m, want)


def test_masks_of_a_4_to_5_portrait_share_the_overlaps():
    """The 800 x 1000 grid (tops 0, 300, 600; t = 400) on a 10 x 8 canvas (scale 1/100): rows of tile row 0 are
    0..4, row 1 3..7, row 2 6..10; columns 0..4 and 4..8. Rows 3 and 6 are covered by two tile rows -> 0.5 each."""
    g = tile_grid(1000, 800, encoder_size=S)
    m = tile_masks(g, (10, 8))
    rows = [(0, 4), (3, 7), (6, 10)]
    cols = [(0, 4), (4, 8)]
    coverage = torch.zeros(10, 1)
    for y0, y1 in rows:
        coverage[y0:y1] += 1
    for k, ((y0, y1), (x0, x1)) in enumerate((r, c) for r in rows for c in cols):
        want = torch.zeros(10, 8)
        want[y0:y1, x0:x1] = 1
        assert torch.equal(m[k], want / coverage.expand(10, 8).clamp(min=1)), k
    assert torch.equal(m[:, 3, 0], torch.tensor([0.5, 0, 0.5, 0, 0, 0]))
    assert torch.allclose(m.sum(0), torch.ones(10, 8))


@pytest.mark.parametrize("h,w,canvas", [(512, 512, (64, 64)), (1000, 800, (37, 29)), (224, 672, (8, 8)),
                                        (400, 100, (400, 100)), (5, 3, (5, 3)), (333, 1001, (13, 40))])
@pytest.mark.parametrize("overlap", [0.0, 0.4])
def test_masks_cover_every_canvas_and_sum_to_one(h, w, canvas, overlap):
    m = tile_masks(tile_grid(h, w, encoder_size=S, overlap=overlap), canvas)
    assert m.shape[1:] == canvas and m.min() >= 0 and m.max() <= 1
    assert torch.allclose(m.sum(0), torch.ones(canvas), atol=1e-6)


def test_mask_canvas():
    assert mask_canvas(1000, 800) == (1000, 800)
    assert mask_canvas(3000, 4000) == (768, 1024)
    assert mask_canvas(10, 5000) == (2, 1024)


# ---------------------------------------------------------------------------------------------- the old pack's tiling

def test_old_pack_tiling_near_square_is_a_centre_square_at_512_in_2x2_tiles():
    lay = old_pack_tiling(300, 320)  # H / W = 0.94: near-square
    assert lay.square == 300 and lay.resize == (512, 512) and lay.crop is None
    assert lay.grid.tops == (0, 256) and lay.grid.lefts == (0, 256)


def test_old_pack_tiling_wide_reference_spreads_the_overlap_over_the_gaps():
    """300 x 700 -> short side 256: 256 x 597; three 256 px tiles overlap by (768 - 597) / 2 = 85.5 px, starts
    truncated to whole pixels."""
    lay = old_pack_tiling(300, 700)
    assert lay.square is None and lay.resize == (256, 597) and lay.crop is None
    assert lay.grid.tops == (0,) and lay.grid.lefts == (0, 170, 341)
    assert lay.grid.lefts[-1] + 256 == 597  # the last tile ends on the edge


def test_old_pack_tiling_crops_references_longer_than_4_to_1():
    lay = old_pack_tiling(1000, 200)  # 5:1 tall -> 1280 x 256, then the central 1024 x 256
    assert lay.resize == (1280, 256) and lay.crop == (1024, 256)
    assert lay.grid.tops == (0, 256, 512, 768) and lay.grid.lefts == (0,)
    with pytest.raises(InputError, match="0x5"):
        old_pack_tiling(0, 5)
