"""Combining the projected tokens of several reference images into one image prompt.

Everything here acts on the *projected* tokens ``cond: (N, T, C)`` (one row of T tokens per image), never on the raw
CLIP output: every projection starts its output with a LayerNorm (ImageProj's final norm, the Resampler's norm_out,
the full-face MLP's norm), so a weight applied to the encoder output would largely cancel. A per-image weight w_i
therefore multiplies the tokens t_i of image i, and that is the quantity the methods below combine:

- concat:       unchanged (N, T, C); the attention flattens it into one softmax over N*T tokens (today's behaviour).
                Weights are rejected: a scaled token changes both its key (how much attention it draws, a softmax
                temperature) and its value (what it adds), so "weight 0" would not remove an image but still take
                attention mass; use 'average' / 'add' for a weighted mix.
- add:          sum_i w_i t_i
- subtract:     w_0 t_0 - mean_{i>=1} (w_i t_i)     (needs >= 2 images)
- average:      sum_i w_i t_i / sum_i w_i            (weighted mean; the weights must not sum to 0)
- norm average: per token, the weighted mean of the unit directions t_i/|t_i| (norm over C), rescaled to the
                weighted mean norm: (sum_i w_i t_i/|t_i| / sum_i w_i) * (sum_i w_i |t_i| / sum_i w_i). Without the
                rescale the tokens would have norm <= 1, far from the scale the adapter's K/V were trained on.
- max / min:    element-wise over i of w_i t_i

Every method except concat returns one image: (1, T, C). The uncond tokens are not touched (they do not depend on
the reference images).
"""
from __future__ import annotations


import torch

from .errors import InputError, check_choice
from .numbers import parse_numbers

COMBINE_METHODS = ("concat", "add", "subtract", "average", "norm average", "max", "min")

def parse_weights(text: str, count: int, *, where: str) -> torch.Tensor | None:
    """"1.0, 0.5" -> tensor (count,) of per-image weights; empty text -> None (every weight 1).

    Fewer values than images: the last value is repeated. More values than images: an error.
    """
    values = list(parse_numbers(text, where=where, example="1.0, 0.5"))
    if not values:
        return None
    if len(values) > count:
        raise InputError(f"{where}: {len(values)} weights for {count} image(s); give at most one weight per image.")
    values += [values[-1]] * (count - len(values))
    return torch.tensor(values, dtype=torch.float32)


def combine_tokens(cond: torch.Tensor, method: str, weights: torch.Tensor | None = None, *,
                   where: str) -> torch.Tensor:
    """cond: (N, T, C) tokens of N images -> (N, T, C) for concat, (1, T, C) otherwise (see the module docstring).

    weights: (N,) per-image weights or None (all 1).
    """
    check_choice(method, COMBINE_METHODS, what="method", where=where)
    n = cond.shape[0]
    if method == "concat":
        if weights is not None and not bool((weights == 1).all()):
            raise InputError(f"{where}: 'concat' does not take image weights: scaling an image's tokens changes both "
                             f"their keys (attention share) and values, so a weight would not mean 'how much of "
                             f"this image'. Use method 'average' or 'add' for a weighted mix, or clear image_weights.")
        return cond
    w = (torch.ones(n) if weights is None else weights).to(device=cond.device, dtype=cond.dtype)
    if w.shape != (n,):
        raise InputError(f"{where}: {w.numel()} weights for {n} image(s).")
    weighted = cond * w.view(n, 1, 1)
    if method == "add":
        return weighted.sum(0, keepdim=True)
    if method == "subtract":
        if n < 2:
            raise InputError(f"{where}: 'subtract' needs at least 2 images (the first minus the mean of the rest); "
                             f"got {n}.")
        return weighted[:1] - weighted[1:].mean(0, keepdim=True)
    if method == "max":
        return weighted.amax(0, keepdim=True)
    if method == "min":
        return weighted.amin(0, keepdim=True)
    total = w.sum()
    if float(total) == 0.0:
        raise InputError(f"{where}: the image weights sum to 0, so '{method}' (a weighted mean) is undefined; "
                         f"change a weight or use 'add'.")
    if method == "average":
        return weighted.sum(0, keepdim=True) / total
    norms = cond.norm(dim=-1, keepdim=True)  # (N, T, 1)
    directions = cond / norms.clamp_min(torch.finfo(cond.dtype).tiny)
    mean_direction = (directions * w.view(n, 1, 1)).sum(0, keepdim=True) / total
    mean_norm = (norms * w.view(n, 1, 1)).sum(0, keepdim=True) / total
    return mean_direction * mean_norm
