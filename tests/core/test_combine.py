"""Combining several images' tokens (ip_adapter_core.combine): every rule checked on small tensors computed by hand."""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core.combine import COMBINE_METHODS, combine_tokens, parse_weights
from ip_adapter_core.errors import InputError

# two images, one token each, C = 2:  t0 = (3, 4) (norm 5), t1 = (0, 2) (norm 2)
T0 = [3.0, 4.0]
T1 = [0.0, 2.0]
COND = torch.tensor([[T0], [T1]])


def run(method, weights=None):
    w = None if weights is None else torch.tensor(weights)
    return combine_tokens(COND, method, w, where="test").tolist()


@pytest.mark.parametrize("method, weights, expected", [
    ("add", None, [[[3.0, 6.0]]]),
    ("add", [2.0, 0.5], [[[6.0, 9.0]]]),
    ("subtract", None, [[[3.0, 2.0]]]),
    ("subtract", [1.0, 2.0], [[[3.0, 0.0]]]),
    ("average", None, [[[1.5, 3.0]]]),
    ("average", [3.0, 1.0], [[[2.25, 3.5]]]),  # (3*(3,4) + (0,2)) / 4
    ("max", None, [[[3.0, 4.0]]]),
    ("min", None, [[[0.0, 2.0]]]),
    ("min", [1.0, -1.0], [[[-0.0, -2.0]]]),
    # directions (0.6, 0.8) and (0, 1): mean (0.3, 0.9); mean norm 3.5 -> (1.05, 3.15)
    ("norm average", None, [[[1.05, 3.15]]]),
    # weights (1, 3): direction (0.6 + 0, 0.8 + 3) / 4 = (0.15, 0.95); norm (5 + 6) / 4 = 2.75
    ("norm average", [1.0, 3.0], [[[0.4125, 2.6125]]]),
])
def test_rules_by_hand(method, weights, expected):
    assert torch.allclose(torch.tensor(run(method, weights)), torch.tensor(expected), atol=1e-6)


def test_concat_is_the_identity_and_every_other_method_gives_one_image():
    cond = torch.randn(3, 4, 8)
    assert combine_tokens(cond, "concat", where="t") is cond
    assert combine_tokens(cond, "concat", torch.ones(3), where="t") is cond
    for method in COMBINE_METHODS[1:]:
        assert combine_tokens(cond, method, where="t").shape == (1, 4, 8)


def test_average_of_identical_images_is_the_image():
    one = torch.randn(1, 4, 8)
    two = one.expand(2, -1, -1)
    for method in ("average", "norm average", "max", "min"):
        assert torch.allclose(combine_tokens(two, method, where="t"), one, atol=1e-6), method


def test_concat_rejects_weights_and_subtract_needs_two_images():
    with pytest.raises(InputError, match="concat.*average"):
        combine_tokens(COND, "concat", torch.tensor([1.0, 0.5]), where="t")
    with pytest.raises(InputError, match="at least 2"):
        combine_tokens(COND[:1], "subtract", where="t")
    with pytest.raises(InputError, match="sum to 0"):
        combine_tokens(COND, "average", torch.tensor([1.0, -1.0]), where="t")
    with pytest.raises(InputError, match="unknown method"):
        combine_tokens(COND, "median", where="t")


def test_parse_weights():
    assert parse_weights("", 3, where="w") is None
    assert parse_weights("  ", 3, where="w") is None
    assert parse_weights("1.0, 0.5", 3, where="w").tolist() == [1.0, 0.5, 0.5]
    assert parse_weights("2\n-1", 2, where="w").tolist() == [2.0, -1.0]
    with pytest.raises(InputError, match=r"w: value 1 \('a'\) is not a number"):
        parse_weights("a, 1", 2, where="w")
    with pytest.raises(InputError, match="3 weights for 2 image"):
        parse_weights("1, 1, 1", 2, where="w")
    with pytest.raises(InputError, match="not a finite number"):
        parse_weights("nan", 1, where="w")
