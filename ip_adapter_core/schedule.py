"""Per-step weight schedules: a factor on the image term that changes over the active steps, evaluated on the device.

progress p in [0, 1] runs over the adapter's active range (0 = the step at start_at, 1 = the step at end_at), see
:func:`step_progress`. The factor of each kind, with smoothstep s(x) = 3x^2 - 2x^3 (s(0) = 0, s(1) = 1, flat at both
ends):

    "constant"      1                       (no schedule: the weight as set)
    "linear in"     p                       fade in:  0 -> 1
    "linear out"    1 - p                   fade out: 1 -> 0
    "ease in"       s(p)                    fade in, gentle at both ends
    "ease out"      1 - s(p)                fade out, gentle at both ends
    "ease in-out"   s(1 - |2p - 1|)         fade in to 1 at p = 0.5, then out: 0 -> 1 -> 0
    "custom"        values v_0..v_{n-1} placed at p = k / (n - 1), linearly interpolated; one value = constant

Nothing here reads a tensor value on the host: the step index is an argmin on the device and every factor is
tensor arithmetic, so a schedule adds no device-to-host sync.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import InputError, check_choice
from .numbers import parse_numbers

SCHEDULES = ("constant", "linear in", "linear out", "ease in", "ease out", "ease in-out", "custom")

_MAX_VALUES = 1000


@dataclass(frozen=True)
class WeightSchedule:
    """A schedule kind and, for "custom", its values (floats, at least one)."""

    kind: str = "constant"
    values: tuple[float, ...] = ()

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant"


def check_schedule(kind: str) -> None:
    """InputError unless ``kind`` is one of SCHEDULES."""
    check_choice(kind, SCHEDULES, input_name="weight_schedule", what="schedule")


def parse_schedule_values(text: str) -> tuple[float, ...]:
    """'1, 0.8, 0.2' (commas, spaces, semicolons or new lines between numbers) -> (1.0, 0.8, 0.2).

    InputError for an empty list, a token that is not a number, or a value that is not finite.
    """
    values = parse_numbers(text, where="input 'schedule_values'", example="1, 0.8, 0.2", max_count=_MAX_VALUES)
    if not values:
        raise InputError("input 'schedule_values': empty; weight_schedule 'custom' needs a list of weights such as "
                         "'1, 0.8, 0.2' (first step to last step of the active range).")
    return values


def make_schedule(kind: str, values_text: str = "") -> WeightSchedule:
    """Validate a node's weight_schedule / schedule_values pair. schedule_values is read only for "custom"."""
    check_schedule(kind)
    if kind != "custom":
        return WeightSchedule(kind)
    return WeightSchedule(kind, parse_schedule_values(values_text))


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    return x * x * (3 - 2 * x)


def schedule_factor(kind: str, progress: torch.Tensor, *,
                    values: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """The factor of ``kind`` (module docstring) at ``progress`` (any shape, in [0, 1]); same shape, dtype and device.

    values: "custom" only, (n,) with n >= 1 (a sequence is turned into a tensor on progress' device; pass a tensor
    already there to avoid the copy in a per-step path).
    """
    p = progress
    if kind == "constant":
        return torch.ones_like(p)
    if kind == "linear in":
        return p.clone()
    if kind == "linear out":
        return 1 - p
    if kind == "ease in":
        return _smoothstep(p)
    if kind == "ease out":
        return 1 - _smoothstep(p)
    if kind == "ease in-out":
        return _smoothstep(1 - (2 * p - 1).abs())
    check_schedule(kind)
    if values is None:
        raise InputError("input 'schedule_values': weight_schedule 'custom' needs a list of weights.")
    v = torch.as_tensor(values, dtype=p.dtype, device=p.device).reshape(-1)
    n = v.shape[0]
    if n == 1:
        return v.expand_as(p).clone()
    x = p.clamp(0, 1) * (n - 1)
    i = x.floor().clamp(max=n - 2)
    frac = x - i
    i = i.long().reshape(-1)
    lo, hi = v.index_select(0, i).reshape(p.shape), v.index_select(0, i + 1).reshape(p.shape)
    return lo * (1 - frac) + hi * frac


def step_progress(sigmas: torch.Tensor, sample_sigmas: torch.Tensor, *, start: float, end: float) -> torch.Tensor:
    """Progress of the current step through the active range, a 0-d tensor on sigmas' device in [0, 1].

    sigmas: the model call's sigma batch (ComfyUI's extra_options["sigmas"]); sample_sigmas: the run's full schedule
    including the trailing 0 (extra_options["sample_sigmas"]), N + 1 values for N steps. start, end: the active range
    as fractions of the run (start_at, end_at).

    This is a STEP fraction, not a sigma fraction: step index i = position of sigmas[0] in sample_sigmas (argmin of
    |difference|, so a sampler's intermediate sigma counts as the nearest step), fraction = i / (N - 1) (first step
    0, last real step 1), progress = clamp((fraction - start) / (end - start), 0, 1). With end <= start progress is 1
    from start on and 0 before it. No host sync.
    """
    sched = sample_sigmas.to(device=sigmas.device)
    index = (sched - sigmas.reshape(-1)[0]).abs().argmin()
    last = max(sched.shape[0] - 2, 1)
    fraction = index.to(torch.float32) / last
    if end <= start:
        return (fraction >= start).to(torch.float32)
    return ((fraction - start) / (end - start)).clamp(0, 1)
