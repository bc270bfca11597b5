"""weight_schedule / schedule_values on IPA Apply (advanced) in a real ComfyUI (tiny SD1.5 from
testkit/tiny_models.py: 7 sites, 8 heads).

Exact claims are bit for bit: "constant" adds no op (the gate stays None over the full range), a factor of 0 or 1
multiplies the image term exactly, and custom "0, 1" computes the same float32 factor as "linear in". Op and sync
counts use the benchmark's tools (bench/measure.py, as tests/host/test_cost.py), one model call per step.
"""
from __future__ import annotations

import pytest
import torch

from bench import measure  # measurement tools only; imports no ComfyUI module

SITES = 7
# Per step and adapter, with a schedule: the step index (argmin over the sigma list), the progress and the factor,
# computed once (not per site). Measured on the CPU, warm step: linear in 14, linear out with a range 15, ease in-out
# 21, custom (3 values) 31 aten ops; the bound leaves a little room.
SCHEDULE_STEP_OPS = 32
# 5 steps of euler / "normal" on the tiny model's discrete schedule, plus the trailing 0.
STEPS = 5


@pytest.fixture(scope="module")
def apply(run_node, base_adapter, base_embeds):
    def do(model, start_at=0.0, end_at=1.0, **kw):
        return run_node("IPA_ApplyAdvanced", model=model, ipadapter=base_adapter, weight=1.0, weight_type="linear",
                        start_at=start_at, end_at=end_at, embeds_scaling="V only", embeds=base_embeds, **kw)[0]

    return do


@pytest.fixture(scope="module")
def sample_sigmas(sd15):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(sd15.get_model_object("model_sampling"), "normal", STEPS).float()


@pytest.fixture(scope="module")
def call(call_site):
    """The installed patch at ``key`` called directly as at the step with ``sigma``: (out, plain attention)."""
    def run(model, key, sigma, sample_sigmas=None):
        extra = {} if sample_sigmas is None else {"sample_sigmas": sample_sigmas}
        return call_site(model, key, sigma=sigma, **extra)

    return run


def test_constant_is_bit_identical_to_no_schedule(sd15, apply, sample, attn2_patches):
    without = apply(sd15)
    constant = apply(sd15, weight_schedule="constant", schedule_values="ignored")
    assert torch.equal(sample(constant, steps=STEPS), sample(without, steps=STEPS))
    run = next(iter(attn2_patches(constant).values())).terms[0][0]
    assert run.gate({"sigmas": torch.tensor([5.0]), "sample_sigmas": torch.tensor([5.0, 0.0])}, torch.float32) is None


def test_a_schedule_changes_sampling(sd15, apply, sample):
    base = sample(apply(sd15), steps=STEPS)
    for kind in ("linear in", "linear out", "ease in-out"):
        assert not torch.equal(sample(apply(sd15, weight_schedule=kind), steps=STEPS), base), kind


def test_linear_in_is_off_at_the_first_step_and_full_at_the_last(sd15, apply, sample_sigmas, call):
    key = ("input", 1, 0)
    full = apply(sd15)
    ramp = apply(sd15, weight_schedule="linear in")
    out, base = call(ramp, key, sample_sigmas[0], sample_sigmas)
    assert torch.equal(out, base), "the first step kept an image term"
    last, _ = call(ramp, key, sample_sigmas[-2], sample_sigmas)
    reference, _ = call(full, key, sample_sigmas[-2], sample_sigmas)
    assert torch.equal(last, reference), "the last step's term is not at full weight"
    assert not torch.equal(reference, base)
    # halfway (step 2 of 0..4): exactly half of the term
    mid, _ = call(ramp, key, sample_sigmas[2], sample_sigmas)
    mid_full, _ = call(full, key, sample_sigmas[2], sample_sigmas)
    assert torch.allclose(mid - base, 0.5 * (mid_full - base), atol=1e-6)


def test_linear_out_over_a_sub_range_counts_steps(sd15, apply, sample_sigmas, call, attn2_patches):
    """start 0.25 / end 0.75 of 5 steps: step fractions 0, .25, .5, .75, 1 give progress 0, 0, .5, 1, 1, so linear
    out gives 1, 1, .5, 0, 0, times the sigma range's on/off switch (unchanged by the schedule)."""
    key = ("middle", 0, 0)
    ranged = apply(sd15, start_at=0.25, end_at=0.75)
    fade = apply(sd15, start_at=0.25, end_at=0.75, weight_schedule="linear out")
    full = apply(sd15)
    run = attn2_patches(ranged)[key].terms[0][0]
    for step, factor in enumerate((1.0, 1.0, 0.5, 0.0, 0.0)):
        sigma = sample_sigmas[step]
        on = float(run.sigma_end <= sigma <= run.sigma_start)
        out, base = call(fade, key, sigma, sample_sigmas)
        ref, _ = call(full, key, sigma, sample_sigmas)
        assert torch.allclose(out - base, on * factor * (ref - base), atol=1e-6), step
        gated, _ = call(ranged, key, sigma, sample_sigmas)
        assert torch.allclose(gated - base, on * (ref - base), atol=1e-6), step


def test_without_sample_sigmas_the_factor_is_one(sd15, apply, sample_sigmas, call):
    key = ("output", 3, 0)
    out, _ = call(apply(sd15, weight_schedule="linear in"), key, sample_sigmas[0])
    ref, _ = call(apply(sd15), key, sample_sigmas[0])
    assert torch.equal(out, ref)


def test_custom_0_1_equals_linear_in(sd15, apply, sample):
    assert torch.equal(sample(apply(sd15, weight_schedule="custom", schedule_values="0, 1"), steps=STEPS),
                       sample(apply(sd15, weight_schedule="linear in"), steps=STEPS))


@pytest.mark.parametrize("kind, values, needle", [
    ("custom", "", "schedule_values"),
    ("custom", "1, two", "value 2 ('two') is not a number"),
    ("fade in", "", "weight_schedule"),
])
def test_bad_schedule_stops_the_node_before_encoding(sd15, run_node, base_adapter, make_image, pack_module, kind, values, needle):
    """Checked first: the image (here without a clip_vision, which would fail later) is never encoded."""
    errors = pack_module("ip_adapter_core.errors")
    with pytest.raises(errors.InputError, match=r"^IPA Apply \(advanced\): input '") as e:
        run_node("IPA_ApplyAdvanced", model=sd15, ipadapter=base_adapter, weight=1.0, weight_type="linear", start_at=0.0,
                 end_at=1.0, embeds_scaling="V only", image=make_image(0), weight_schedule=kind,
                 schedule_values=values)
    assert needle in str(e.value), str(e.value)


def profile(sample, model, steps=3):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calls = measure.probe_sampling(lambda m: sample(m, steps=steps), model, measure.StepProbe())
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == steps and all(len(c.cond_or_uncond) == 2 for c in calls)
    return calls


def diff(a, b):
    return {k: a[k] - b.get(k, 0) for k in set(a) | set(b) if a[k] != b.get(k, 0)}


@pytest.mark.parametrize("kind, values, start_at, end_at", [
    ("linear in", "", 0.0, 1.0),
    ("ease in-out", "", 0.0, 1.0),
    ("custom", "1, 0.8, 0.2", 0.0, 1.0),
    ("linear out", "", 0.2, 0.8),
])
def test_schedule_adds_one_multiply_per_site_and_no_sync(sd15, apply, sample, kind, values, start_at, end_at):
    """Every step of a 3-step run (cold and warm): no sync added. Warm step: the schedule adds one aten::mul per
    site (full range; with a range the gate multiply is already there) plus at most SCHEDULE_STEP_OPS per step."""
    without = profile(sample, apply(sd15, start_at=start_at, end_at=end_at))
    with_ = profile(sample, apply(sd15, start_at=start_at, end_at=end_at, weight_schedule=kind,
                                  schedule_values=values))
    for step, (w, u) in enumerate(zip(with_, without)):
        assert not diff(w.syncs, u.syncs), f"step {step}: syncs added {diff(w.syncs, u.syncs)}"
        assert not w.syncs, f"step {step}: syncs {dict(w.syncs)}"
    added = with_[1].total_ops - without[1].total_ops
    per_site = SITES if (start_at, end_at) == (0.0, 1.0) else 0
    print(f"{kind} [{start_at}, {end_at}]: {added} aten ops added per warm step "
          f"({per_site} site multiplies + {added - per_site} per step): {diff(with_[1].ops, without[1].ops)}")
    assert with_[1].ops["aten.mul"] - without[1].ops["aten.mul"] >= per_site
    assert added - per_site <= SCHEDULE_STEP_OPS, diff(with_[1].ops, without[1].ops)
