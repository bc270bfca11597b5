"""ip_adapter_core.weight_strategy: the old pack's IPAdapter Weights, its layouts, prompt schedule and combine, checked
against what the old node promises (its docs and the module's docstring), not against recorded outputs. The old
pack itself is the oracle in tests/host/test_old_api_weights.py."""
from __future__ import annotations

import importlib.util
import itertools
import math
import os

import pytest

from ip_adapter_core import weight_strategy as ws
from ip_adapter_core.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EASED = ("linear", "ease_in_out", "ease_in", "ease_out")
BASE = dict(weights="1.0, 0.0", timing="linear", frames=5, start_frame=0, end_frame=9999, add_starting_frames=0,
            add_ending_frames=0, method="full batch", frame_count=0)


def strategy(**changes) -> ws.Strategy:
    return ws.Strategy.checked({**BASE, **changes})


def weights_of(**changes) -> tuple[float, ...]:
    return ws.image_weights(strategy(**changes))


# ---------------------------------------------------------------------------------------------- one image's weights

def test_custom_timing_is_the_typed_list_whatever_the_frames():
    for text in ("0.2, 0.9,0.5", "0.2\n0.9\n\n0.5", " 0.2 ,\n 0.9, 0.5 "):
        assert weights_of(weights=text, timing="custom", frames=7, start_frame=3, end_frame=4) == (0.2, 0.9, 0.5)
    assert weights_of(weights="  \n", timing="custom") == (0.0,), "no numbers: one frame of weight 0"


@pytest.mark.parametrize("timing", ws.TIMINGS[1:])
@pytest.mark.parametrize("frames,start_frame,end_frame", [(5, 0, 9999), (8, 2, 6), (0, 0, 9999), (1, 0, 9999),
                                                          (6, 3, 3), (6, 2, 3), (6, 0, 1), (4, 4, 9999)])
def test_a_timed_transition_has_the_frames_and_holds_start_before_and_end_after(timing, frames, start_frame,
                                                                                end_frame):
    start, end = 0.8, 0.1
    got = weights_of(weights=f"{start}, 0.5, {end}", timing=timing, frames=frames, start_frame=start_frame,
                     end_frame=end_frame)
    total = max(frames, 2)
    last = min(end_frame, total) - 1  # the transition's last frame
    assert len(got) == total
    assert all(w == start for w in got[:min(start_frame, last)]), got
    held = got[last + 1:] if timing == "random" else got[last:]
    assert all(w == end for w in held), got
    lo, hi = min(start, end), max(start, end)
    assert all(lo - 1e-12 <= w <= hi + 1e-12 for w in got), got


@pytest.mark.parametrize("timing", EASED)
def test_eased_transitions_go_monotonically_from_start_to_end(timing):
    got = weights_of(weights="0.2, 0.9", timing=timing, frames=12, start_frame=2, end_frame=10)
    ramp = got[2:10]
    assert ramp[0] == pytest.approx(0.2, abs=1e-12) and ramp[-1] == 0.9
    assert all(b > a for a, b in zip(ramp, ramp[1:])), ramp


def test_linear_steps_are_equal_and_ease_in_out_is_symmetric():
    lin = weights_of(weights="1, 0", timing="linear", frames=6)
    assert [a - b for a, b in zip(lin, lin[1:])] == pytest.approx([0.2] * 5, abs=1e-12)
    sym = weights_of(weights="0.3, 0.7", timing="ease_in_out", frames=9)
    assert [a + b for a, b in zip(sym, sym[::-1])] == pytest.approx([1.0] * 9, abs=1e-12)
    assert sym[4] == pytest.approx(0.5, abs=1e-12)


def test_ease_in_rises_fast_first_and_ease_out_slow_first():
    """The old pack's curves under its names: ease_in = sin(t pi/2) (concave), ease_out = 1 - cos(t pi/2)."""
    a, b = (weights_of(weights="0, 1", timing=t, frames=5) for t in ("ease_in", "ease_out"))
    assert a[1] > 0.25 > b[1]
    assert a[1] == pytest.approx(math.sin(math.pi / 8), abs=1e-12)
    assert b[1] == pytest.approx(1 - math.cos(math.pi / 8), abs=1e-12)


def test_start_and_end_are_the_first_and_last_numbers_or_0_and_1():
    assert weights_of(weights="", frames=3) == pytest.approx((0.0, 0.5, 1.0), abs=1e-12)
    assert weights_of(weights="0.7", frames=3) == (0.7, 0.7, 0.7)
    assert weights_of(weights="0.4, 123, 0.6", frames=3) == pytest.approx((0.4, 0.5, 0.6), abs=1e-12)


def test_a_one_frame_transition_is_its_end():
    assert weights_of(weights="1, 0", frames=5, start_frame=2, end_frame=3) == (1.0, 1.0, 0.0, 0.0, 0.0)
    assert weights_of(weights="1, 0", frames=5, start_frame=0, end_frame=1) == (0.0,) * 5


def test_random_is_deterministic_per_seed_and_within_the_range():
    s = strategy(weights="0.2, 0.6", timing="random", frames=40)
    first, again, other = ws.image_weights(s), ws.image_weights(s), ws.image_weights(s, seed=ws.RANDOM_SEED + 1)
    assert first == again and first != other
    assert all(0.2 <= w <= 0.6 for w in first) and len(set(first)) == 40


# ---------------------------------------------------------------------------------------------- layouts

def _segments(values, size):
    return [tuple(values[i:i + size]) for i in range(0, len(values), size)]


@pytest.mark.parametrize("images", [1, 2, 3, 5])
def test_full_batch_gives_each_image_its_frames(images):
    w = weights_of(frames=4)
    lay = ws.layout(strategy(frames=4), images)
    assert _segments(lay.weights, 4) == [w] * images
    assert _segments(lay.image_1, 4) == [(k,) * 4 for k in range(images)]
    assert lay.image_2 is None and lay.total_frames == 4 * images == len(lay.weights_invert)
    assert lay.weights_invert == tuple(reversed(lay.weights))


@pytest.mark.parametrize("images", [2, 3, 4])
def test_shift_batches_pairs_each_image_with_the_next(images):
    w = weights_of(frames=3)
    lay = ws.layout(strategy(frames=3, method="shift batches"), images)
    assert _segments(lay.weights, 3) == [w] * (images - 1)
    assert _segments(lay.image_1, 3) == [(k,) * 3 for k in range(images - 1)]
    assert [b - a for a, b in zip(lay.image_1, lay.image_2)] == [1] * len(lay.image_1)


@pytest.mark.parametrize("images", [2, 3, 4, 5])
def test_alternate_batches_cross_fades_back_and_forth(images):
    """image_1 holds the even image of each neighbour pair, image_2 the odd one; the weights (image_1's) run 1 -> 0 on
    even pairs and 0 -> 1 on odd ones, so image_1 changes image only where its weight is 0 and image_2 only where
    image_1's weight is 1 (its own 0)."""
    lay = ws.layout(strategy(frames=4, method="alternate batches"), images)
    assert len(lay.weights) == 4 * (images - 1)
    pairs = list(zip(lay.image_1, lay.image_2))
    assert all(a % 2 == 0 and b % 2 == 1 and abs(a - b) == 1 for a, b in pairs), pairs
    assert [set(p) for p in _segments(pairs, 4)] == [{(k + k % 2, k + 1 - k % 2)} for k in range(images - 1)]
    w = weights_of(frames=4)
    assert _segments(lay.weights, 4) == [w if k % 2 == 0 else ws.mirrored(w) for k in range(images - 1)]
    for i in range(1, len(pairs)):
        if lay.image_1[i] != lay.image_1[i - 1]:
            assert lay.weights[i - 1] == lay.weights[i] == 0.0, i
        if lay.image_2[i] != lay.image_2[i - 1]:
            assert lay.weights[i - 1] == lay.weights[i] == 1.0, i


def test_mirrored_keeps_the_range_and_is_its_own_inverse():
    w = (0.3, 0.9, 0.5, 0.4)
    m = ws.mirrored(w)
    assert (min(m), max(m)) == pytest.approx((0.3, 0.9), abs=1e-12) and ws.mirrored(m) == pytest.approx(w, abs=1e-12)
    assert ws.mirrored((1.0, 0.5, 0.0)) == (0.0, 0.5, 1.0)


@pytest.mark.parametrize("method", ws.METHODS)
def test_added_frames_repeat_the_first_and_last_frame(method):
    plain = ws.layout(strategy(frames=3, method=method), 3)
    lay = ws.layout(strategy(frames=3, method=method, add_starting_frames=2, add_ending_frames=3), 3)
    assert lay.weights == (plain.weights[0],) * 2 + plain.weights + (plain.weights[-1],) * 3
    for got, was in ((lay.image_1, plain.image_1), (lay.image_2, plain.image_2)):
        assert got is None if was is None else got == (0, 0) + was + (2, 2, 2)


def test_without_images_only_the_weights_count():
    s = strategy(frames=3, method="alternate batches", add_starting_frames=2, add_ending_frames=2)
    assert ws.layout(s, None) == ws.Layout(ws.image_weights(s))


@pytest.mark.parametrize("method", ws.METHODS[1:])
def test_pairing_methods_need_two_images(method):
    with pytest.raises(InputError, match=f"input 'image': method '{method}' .* at least 2 images, got 1"):
        ws.layout(strategy(method=method), 1)
    with pytest.raises(InputError, match="input 'image': an empty batch"):
        ws.layout(strategy(), 0)


# ---------------------------------------------------------------------------------------------- strategies, errors

def test_a_strategy_round_trips_through_its_dict_and_the_dict_is_fresh():
    s = strategy(frame_count=3)
    d = s.as_dict()
    assert list(d) == list(ws.FIELDS) and ws.Strategy.checked(d) == s
    d["frames"] = 99
    assert s.as_dict()["frames"] == 5


@pytest.mark.parametrize("changes,message", [
    (dict(weights="1, x"), r"input 'weights': value 2 \('x'\) is not a number"),
    (dict(weights="1, inf"), r"input 'weights': value 2 \('inf'\) is not a finite number"),
    (dict(weights=1.0), "input 'weights': expected text, got float"),
    (dict(timing="smooth"), "input 'timing': unknown timing 'smooth'; expected one of 'custom'"),
    (dict(method="all"), "input 'method': unknown method 'all'; expected one of 'full batch'"),
    (dict(frames=-1), "input 'frames': expected a whole number of frames, 0 or more, got -1"),
    (dict(end_frame=2.5), "input 'end_frame': expected a whole number .* got 2.5"),
    (dict(add_ending_frames=True), "input 'add_ending_frames': expected a whole number .* got True"),
    (dict(end_frame=0), "input 'end_frame': 0 leaves no frame for the transition; expected 1 to 5"),
    (dict(start_frame=4, end_frame=3), r"input 'start_frame': 4 is after the end of the transition \(3\); expected "
                                       "at most 3"),
    (dict(frames=4, start_frame=6), r"input 'start_frame': 6 is after .* \(4: end_frame 9999 capped to the 4 "
                                    r"frames\); expected at most 4"),
])
def test_bad_inputs_are_named(changes, message):
    with pytest.raises(InputError, match=message):
        strategy(**changes)


def test_custom_timing_does_not_check_the_frames():
    assert ws.image_weights(strategy(timing="custom", start_frame=50, end_frame=0)) == (1.0, 0.0)


def test_a_bad_strategy_names_the_input_and_the_entry():
    with pytest.raises(InputError, match="input 'weights_strategy': expected WEIGHTS_STRATEGY .* got list"):
        ws.Strategy.checked([1, 2], within="weights_strategy")
    with pytest.raises(InputError, match=r"input 'weights_strategy': .* without \['frame_count'\]"):
        ws.Strategy.checked({k: v for k, v in BASE.items() if k != "frame_count"}, within="weights_strategy")
    with pytest.raises(InputError, match=r"input 'weights_strategy' \(its 'frames'\): expected a whole number"):
        ws.Strategy.checked({**BASE, "frames": "4"}, within="weights_strategy")


# ---------------------------------------------------------------------------------------------- prompt schedule

def _schedule(prompt: str, **changes) -> list[tuple[int, str]]:
    text = ws.prompt_schedule(strategy(**changes), prompt)
    assert text == "" or text.endswith(",\n")
    out = []
    for line in text.splitlines():
        key, value = line.rstrip(",").split(": ", 1)
        out.append((int(key.strip('"')), value[1:-1]))
    return out


def test_the_schedule_keys_each_image_at_its_first_frame():
    assert _schedule("a cat\na dog\na fox", frames=4, frame_count=3) == [(0, "a cat"), (4, "a dog"), (8, "a fox")]


def test_the_schedule_pads_with_the_last_prompt_cuts_to_the_images_and_skips_blank_lines():
    assert _schedule("one\n\n   \ntwo", frames=2, frame_count=4) == [(0, "one"), (2, "two"), (4, "two"), (6, "two")]
    assert _schedule("one\ntwo\nthree", frames=2, frame_count=2) == [(0, "one"), (2, "two")]


def test_the_schedule_shifts_by_the_starting_frames_and_adds_the_ends():
    got = _schedule("a\nb", frames=3, frame_count=2, add_starting_frames=2, add_ending_frames=1)
    assert got == [(0, "a"), (2, "a"), (5, "b"), (8, "b")]


def test_no_schedule_without_prompt_lines_or_images():
    assert ws.prompt_schedule(strategy(frame_count=3), " \n\n") == ""
    assert ws.prompt_schedule(strategy(frame_count=0), "a cat") == ""


# ---------------------------------------------------------------------------------------------- combine

def test_combine_joins_numbers_and_lists_without_touching_them():
    first = [0.5, 1.0]
    got = ws.combine_weights(first, 0.25)
    assert got == [0.5, 1.0, 0.25] and first == [0.5, 1.0] and got is not first
    assert ws.combine_weights(1, (0.0,)) == [1.0, 0.0] and all(type(w) is float for w in ws.combine_weights(1, 2))


@pytest.mark.parametrize("bad", ["0.5", None, True, [0.5, "x"]])
def test_combine_names_a_bad_input(bad):
    with pytest.raises(InputError, match="input 'weights_2': expected a number or a list of numbers"):
        ws.combine_weights(0.5, bad)


# ---------------------------------------------------------------------------------------------- the served definition

def test_the_served_combos_are_the_core_choices():
    spec = importlib.util.spec_from_file_location("old_schema_weights",
                                                  os.path.join(REPO, "nodes", "old_api", "schema_weights.py"))
    schema = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(schema)
    assert schema.TIMINGS == list(ws.TIMINGS) and schema.METHODS == list(ws.METHODS)


def test_every_grid_point_gives_a_consistent_layout():
    """Over a grid: the frames add up, image indices are in range, and the inverted list is the reverse."""
    for timing, method, images, frames, first, last in itertools.product(
            ws.TIMINGS, ws.METHODS, (None, 2, 3), (0, 3), (0, 1), (0, 2)):
        s = strategy(timing=timing, method=method, frames=frames, add_starting_frames=first, add_ending_frames=last)
        lay = ws.layout(s, images)
        per_image = len(ws.image_weights(s))
        if images is None:
            assert lay.total_frames == per_image and lay.image_1 is None
            continue
        segments = images if method == "full batch" else images - 1
        assert lay.total_frames == per_image * segments + first + last
        for idx in (lay.image_1, lay.image_2):
            assert idx is None or (len(idx) == lay.total_frames and set(idx) <= set(range(images)))
        assert lay.weights_invert == lay.weights[::-1]
