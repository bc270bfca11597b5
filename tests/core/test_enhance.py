"""The ClipVision Enhancer's tiling and pooling (ip_adapter_core.enhance), against loops written from its
description: tile (i, j) of an image is rows i*h.., columns j*w..; the tiles' grids stitched side by side and each
n x n block averaged."""
import pytest
import torch

from ip_adapter_core.enhance import check_enhance, enhanced, merge_tiles, split_grid
from ip_adapter_core.errors import InputError


def test_split_grid_cuts_row_major_and_drops_the_remainder():
    images = torch.rand(2, 13, 11, 3)  # 13 // 3 = 4 rows, 11 // 3 = 3 columns per tile; the last row / column dropped
    tiles = split_grid(images, 3)
    assert tiles.shape == (18, 4, 3, 3)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                assert torch.equal(tiles[b * 9 + i * 3 + j], images[b, i * 4:(i + 1) * 4, j * 3:(j + 1) * 3])


def _pooled_by_loops(grids, n):
    """grids: (n*n, s, s, E) of one image -> (s*s, E)."""
    s = grids.shape[1]
    stitched = torch.zeros(n * s, n * s, grids.shape[-1], dtype=torch.float64)
    for y in range(n * s):
        for x in range(n * s):
            stitched[y, x] = grids[(y // s) * n + x // s, y % s, x % s]
    out = torch.zeros(s, s, grids.shape[-1], dtype=torch.float64)
    for y in range(s):
        for x in range(s):
            out[y, x] = stitched[y * n:(y + 1) * n, x * n:(x + 1) * n].mean((0, 1))
    return out.reshape(s * s, -1)


@pytest.mark.parametrize("n", [2, 3])
def test_hidden_states_pool_the_stitched_grid_and_average_the_class_tokens(n):
    s, e = 4, 5
    states = torch.randn(2 * n * n, 1 + s * s, e, dtype=torch.float64)
    got = merge_tiles(states, n, where="N")
    assert got.shape == (2, 1 + s * s, e)
    for b in range(2):
        mine = states[b * n * n:(b + 1) * n * n]
        assert torch.allclose(got[b, 0], mine[:, 0].mean(0))
        assert torch.allclose(got[b, 1:], _pooled_by_loops(mine[:, 1:].reshape(n * n, s, s, e), n))


def test_image_embeds_are_read_as_square_grids():
    n, s = 2, 3
    embeds = torch.randn(n * n, s * s, dtype=torch.float64)
    got = merge_tiles(embeds, n, where="N")
    assert got.shape == (1, s * s)
    assert torch.allclose(got[0], _pooled_by_loops(embeds.reshape(n * n, s, s, 1), n)[:, 0])
    with pytest.raises(InputError, match="N: .*square.*40"):
        merge_tiles(torch.randn(4, 40), 2, where="N")
    with pytest.raises(InputError, match="N: .*tokens"):
        merge_tiles(torch.randn(4, 11, 8), 2, where="N")


def test_one_image_gives_two_feature_sets_a_batch_mixes():
    whole, pooled = torch.randn(1, 5, 3), torch.randn(1, 5, 3)
    got = enhanced(whole, pooled, 0.25)
    assert got.shape == (2, 5, 3) and torch.allclose(got[0], whole[0] * 0.25) and torch.equal(got[1], pooled[0])
    whole, pooled = torch.randn(3, 5, 3), torch.randn(3, 5, 3)
    assert torch.allclose(enhanced(whole, pooled, 0.25), 0.25 * whole + 0.75 * pooled)


@pytest.mark.parametrize("tiles,ratio,match", [(0, 0.5, "enhance_tiles.*0.*1-16"), (17, 0.5, "enhance_tiles"),
                                               (2, 1.5, "enhance_ratio.*1.5")])
def test_bad_settings_name_the_input(tiles, ratio, match):
    with pytest.raises(InputError, match=match):
        check_enhance(tiles, ratio, where="N")
    check_enhance(2, 0.5, where="N")
