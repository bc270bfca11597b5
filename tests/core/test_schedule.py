"""Per-step weight schedules (ip_adapter_core.schedule): every kind's factor at hand-computed progress points, the
custom list's interpolation and parsing, and the step progress on a known schedule without host syncs.

Exact comparisons up to 1e-6 (float32 arithmetic on values like 0.25)."""
from __future__ import annotations

import pytest
import torch

from ip_adapter_core.errors import InputError
from ip_adapter_core.schedule import (SCHEDULES, WeightSchedule, make_schedule, parse_schedule_values,
                                      schedule_factor, step_progress)
from testkit.aten import AtenLog

P = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])

# s(x) = 3x^2 - 2x^3: s(0.25) = 0.1875 - 0.03125 = 0.15625, s(0.5) = 0.5, s(0.75) = 1.6875 - 0.84375 = 0.84375
EXPECTED = {
    "constant": [1, 1, 1, 1, 1],
    "linear in": [0, 0.25, 0.5, 0.75, 1],
    "linear out": [1, 0.75, 0.5, 0.25, 0],
    "ease in": [0, 0.15625, 0.5, 0.84375, 1],
    "ease out": [1, 0.84375, 0.5, 0.15625, 0],
    # s(1 - |2p - 1|): p = 0.25 -> s(0.5); p = 0.5 -> s(1)
    "ease in-out": [0, 0.5, 1, 0.5, 0],
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_factor_at_hand_computed_points(kind):
    got = schedule_factor(kind, P)
    assert torch.allclose(got, torch.tensor(EXPECTED[kind], dtype=torch.float32), atol=1e-6), (kind, got)
    assert got.shape == P.shape and got.dtype == P.dtype


def test_every_kind_is_covered():
    assert set(EXPECTED) | {"custom"} == set(SCHEDULES)


def test_custom_interpolates_linearly():
    # 3 values at p = 0, 0.5, 1; p = 0.25 halfway between 1 and 0.8, p = 0.75 halfway between 0.8 and 0.2
    got = schedule_factor("custom", P, values=(1.0, 0.8, 0.2))
    assert torch.allclose(got, torch.tensor([1.0, 0.9, 0.8, 0.5, 0.2]), atol=1e-6), got
    assert torch.allclose(schedule_factor("custom", P, values=(0.0, 1.0)), schedule_factor("linear in", P))
    assert torch.allclose(schedule_factor("custom", P, values=(0.7,)), torch.full((5,), 0.7))
    # 0-d progress, as the patch passes it
    assert torch.allclose(schedule_factor("custom", torch.tensor(0.6), values=torch.tensor([0.0, 2.0])),
                          torch.tensor(1.2))


@pytest.mark.parametrize("text, values", [
    ("1, 0.8, 0.2", (1.0, 0.8, 0.2)),
    ("0 1", (0.0, 1.0)),
    (" 1.5;\n-0.5, ", (1.5, -0.5)),
    ("2", (2.0,)),
])
def test_parse_values(text, values):
    assert parse_schedule_values(text) == values


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    (" , ", "empty"),
    ("1, x, 0", "value 2 ('x') is not a number"),
    ("1, nan", "not a finite number"),
    ("inf", "not a finite number"),
])
def test_parse_errors_name_the_input(text, needle):
    with pytest.raises(InputError) as e:
        parse_schedule_values(text)
    assert "schedule_values" in str(e.value) and needle in str(e.value), str(e.value)


def test_make_schedule():
    assert make_schedule("constant", "junk") == WeightSchedule()
    assert make_schedule("linear in", "") == WeightSchedule("linear in")
    assert make_schedule("custom", "0, 1") == WeightSchedule("custom", (0.0, 1.0))
    with pytest.raises(InputError, match="weight_schedule"):
        make_schedule("fade", "")
    with pytest.raises(InputError, match="schedule_values"):
        make_schedule("custom", "")


SAMPLE_SIGMAS = torch.tensor([14.6, 6.0, 2.5, 0.9, 0.03, 0.0])  # 5 steps + the trailing 0


def test_step_progress_on_a_five_step_schedule_without_syncs():
    with AtenLog() as log:
        got = [step_progress(s.reshape(1), SAMPLE_SIGMAS, start=0.0, end=1.0) for s in SAMPLE_SIGMAS[:-1]]
    assert log.ops, "the dispatch mode saw no ops"
    assert log.syncs() == []
    assert torch.allclose(torch.stack(got), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])), got
    assert all(g.dim() == 0 for g in got)


def test_step_progress_over_a_sub_range_is_a_step_fraction():
    # start 0.25, end 0.75: steps 0..4 are at fractions 0, .25, .5, .75, 1 -> progress 0, 0, .5, 1, 1 (clamped)
    got = torch.stack([step_progress(s.reshape(1), SAMPLE_SIGMAS, start=0.25, end=0.75) for s in SAMPLE_SIGMAS[:-1]])
    assert torch.allclose(got, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0])), got
    # a sampler's intermediate sigma counts as the nearest step; a batch of equal sigmas reads the first
    assert step_progress(torch.tensor([2.3, 2.3]), SAMPLE_SIGMAS, start=0.0, end=1.0).item() == 0.5
    # an empty range: 0 before start, 1 from start on
    got = torch.stack([step_progress(s.reshape(1), SAMPLE_SIGMAS, start=0.5, end=0.5) for s in SAMPLE_SIGMAS[:-1]])
    assert torch.equal(got, torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))


def test_schedule_factor_and_progress_together_have_no_sync():
    values = torch.tensor([1.0, 0.8, 0.2])
    with AtenLog() as log:
        for kind in SCHEDULES:
            p = step_progress(torch.tensor([0.9]), SAMPLE_SIGMAS, start=0.0, end=1.0)
            schedule_factor(kind, p, values=values if kind == "custom" else None)
    assert log.syncs() == []
