"""The old pack's weight strategies (ComfyUI_IPAdapter_plus' IPAdapter Weights and its companions) as pure functions.

A strategy (:class:`Strategy`) is IPAdapter Weights' inputs as given plus ``frame_count``, the number of reference
images it was made with (0 without). From it:

- :func:`image_weights`: the weights of one reference image, F frames. Timing 'custom': the numbers of ``weights``
  as typed (none: one frame of 0). Any other timing: ``T = max(frames, 2)`` frames from ``start`` (the first number;
  0 when none) to ``end`` (the last; 1 when none). With ``E = min(end_frame, T)``: frames before ``start_frame``
  hold start; frames ``start_frame .. E - 2`` follow the timing's curve (frame ``start_frame + i`` at
  ``t = i / (E - start_frame - 1)``); frame ``E - 1`` and every later one hold end. 'random' draws each frame of
  ``start_frame .. E - 1`` uniformly between start and end, in frame order, from ``random.Random(seed)``
  (:data:`RANDOM_SEED` unless told): the same values every run. The old pack drew them from Python's global
  generator, different each time the node ran; seeded alike, the draws are the old pack's exactly.
- :func:`layout`: those weights laid out over the reference images by ``method`` (the frames of the outputs
  ``weights``, ``image_1``, ``image_2``; image_1 / image_2 as index lists into the reference batch):
  'full batch': image k holds F frames, weighted as above (no image_2);
  'shift batches': F frames per pair of neighbours (k, k+1), image_1 = k, image_2 = k + 1;
  'alternate batches': F frames per pair of neighbours, image_1 the even image of the pair, image_2 the odd one;
  the weights as above on even pairs and mirrored in their own range (``max - (w - min)``) on odd pairs, so the
  cross-fade goes back and forth. Then ``add_starting_frames`` frames of the first weight and image 0 (both
  images) before, ``add_ending_frames`` frames of the last weight and the last image after. Without reference
  images: just the weights of one image (method and added frames unused, as in the old pack).
- :func:`prompt_schedule`: the old pack's prompt-schedule text (a FizzNodes-style ``"frame": "prompt",`` list).
- :func:`combine_weights`: two weight lists (or numbers) joined.

The old pack failed with a Python error (an empty list, a division by zero) or returned a list longer than the
frames for some inputs; here: a one-frame transition is its end weight, and the others are :class:`InputError` s
naming the input (end_frame 0, start_frame after the end, 'shift' / 'alternate' with one image).
"""
from __future__ import annotations

import dataclasses
import math
import random
from numbers import Real
from typing import Any, Callable, Mapping, Sequence

from .errors import InputError, check_choice
from .numbers import parse_numbers

TIMINGS = ("custom", "linear", "ease_in_out", "ease_in", "ease_out", "random")
METHODS = ("full batch", "shift batches", "alternate batches")
RANDOM_SEED = 0  # the seed of timing 'random' (see the module's docstring)
FIELDS = ("weights", "timing", "frames", "start_frame", "end_frame", "add_starting_frames", "add_ending_frames",
          "method", "frame_count")  # a WEIGHTS_STRATEGY's keys, in the old pack's order
_COUNTS = ("frames", "start_frame", "end_frame", "add_starting_frames", "add_ending_frames", "frame_count")
EXAMPLE = "1.0, 0.0"

# t in [0, 1] -> the share of the way from start to end (the old pack's curves under its names)
_CURVES: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "ease_in_out": lambda t: (1 - math.cos(t * math.pi)) / 2,
    "ease_in": lambda t: math.sin(t * math.pi / 2),
    "ease_out": lambda t: 1 - math.cos(t * math.pi / 2),
}


def _label(name: str, within: str | None) -> str:
    return f"input '{name}'" if within is None else f"input '{within}' (its '{name}')"


def parse_weights(text: str, *, within: str | None = None) -> tuple[float, ...]:
    """IPAdapter Weights' ``weights`` text -> its numbers (commas or new lines between them; ip_adapter_core.numbers,
    which also takes spaces and semicolons)."""
    return parse_numbers(text, where=_label("weights", within), example=EXAMPLE)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """What a WEIGHTS_STRATEGY describes: IPAdapter Weights' inputs as given, and ``frame_count``, the number of
    reference images it was made with (0 without). Build it with :meth:`checked`."""
    weights: str
    timing: str
    frames: int
    start_frame: int
    end_frame: int
    add_starting_frames: int
    add_ending_frames: int
    method: str
    frame_count: int

    @classmethod
    def checked(cls, values: Any, *, within: str | None = None) -> Strategy:
        """A Strategy from a mapping with the :data:`FIELDS` (IPAdapter Weights' inputs, or a WEIGHTS_STRATEGY dict
        when ``within`` names that input). InputError, naming the entry, for anything the weights cannot be made
        from."""
        where = f"input '{within or 'weights_strategy'}'"
        if not isinstance(values, Mapping):
            raise InputError(f"{where}: expected WEIGHTS_STRATEGY (from 'IPAdapter Weights'), got "
                             f"{type(values).__name__}.")
        missing = [k for k in FIELDS if k not in values]
        if missing:
            raise InputError(f"{where}: expected WEIGHTS_STRATEGY (from 'IPAdapter Weights'), got a mapping "
                             f"without {missing}.")
        if not isinstance(values["weights"], str):
            raise InputError(f"{_label('weights', within)}: expected text, got {type(values['weights']).__name__}.")
        for name in _COUNTS:
            _check_count(values[name], _label(name, within))
        check_choice(values["timing"], TIMINGS, what="timing", where=_label("timing", within))
        check_choice(values["method"], METHODS, what="method", where=_label("method", within))
        out = cls(**{k: values[k] for k in FIELDS})
        parse_weights(out.weights, within=within)
        if out.timing != "custom":
            _check_frames(out, within)
        return out

    def as_dict(self) -> dict:
        """The WEIGHTS_STRATEGY payload: a new dict with the old pack's keys."""
        return {k: getattr(self, k) for k in FIELDS}


def _check_count(value: Any, label: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{label}: expected a whole number of frames, 0 or more, got {value!r:.80}.")


def _span(s: Strategy) -> tuple[int, int]:
    """(T, E): the frames of a timed transition and its end frame, capped to T."""
    frames = max(s.frames, 2)
    return frames, min(s.end_frame, frames)


def _check_frames(s: Strategy, within: str | None) -> None:
    frames, end = _span(s)
    capped = f"{end}: end_frame {s.end_frame} capped to the {frames} frames" if end != s.end_frame else f"{end}"
    if end == 0:
        raise InputError(f"{_label('end_frame', within)}: 0 leaves no frame for the transition; expected 1 to "
                         f"{frames} (the frames), or timing 'custom'.")
    if s.start_frame > end:
        raise InputError(f"{_label('start_frame', within)}: {s.start_frame} is after the end of the transition "
                         f"({capped}); expected at most {end}.")


def transition(start: float, end: float, *, timing: str, frames: int, start_frame: int, end_frame: int,
               seed: int = RANDOM_SEED) -> tuple[float, ...]:
    """``frames`` weights from ``start`` to ``end`` over ``start_frame .. end_frame - 1`` (see the module's docstring;
    needs ``1 <= end_frame <= frames`` and ``start_frame <= end_frame``)."""
    duration = end_frame - start_frame
    if timing == "random":
        draw = random.Random(seed)
        middle = [draw.uniform(start, end) for _ in range(duration)]
        return tuple([start] * start_frame + middle + [end] * (frames - end_frame))
    curve = _CURVES[timing]
    steps = [start + (end - start) * curve(i / (duration - 1)) for i in range(duration - 1)]
    return tuple([start] * min(start_frame, end_frame - 1) + steps + [end] * (frames - end_frame + 1))


def image_weights(s: Strategy, *, seed: int = RANDOM_SEED) -> tuple[float, ...]:
    """The weights of one reference image (its F frames) for a checked strategy."""
    values = parse_weights(s.weights)
    if s.timing == "custom":
        return values or (0.0,)
    frames, end_frame = _span(s)
    start, end = (values[0], values[-1]) if values else (0.0, 1.0)
    return transition(start, end, timing=s.timing, frames=frames, start_frame=s.start_frame, end_frame=end_frame,
                      seed=seed)


def mirrored(weights: Sequence[float]) -> tuple[float, ...]:
    """Each weight mirrored in the list's own range: max - (w - min)."""
    lo, hi = min(weights), max(weights)
    return tuple(hi - (w - lo) for w in weights)


@dataclasses.dataclass(frozen=True)
class Layout:
    """IPAdapter Weights' outputs: a weight per frame, and per frame the index of its reference image in image_1 /
    image_2 (None without reference images; image_2 None for 'full batch')."""
    weights: tuple[float, ...]
    image_1: tuple[int, ...] | None = None
    image_2: tuple[int, ...] | None = None

    @property
    def weights_invert(self) -> tuple[float, ...]:
        """The weights in reverse frame order (the old output of that name)."""
        return self.weights[::-1]

    @property
    def total_frames(self) -> int:
        return len(self.weights)


def _each(indices: Sequence[int], count: int) -> tuple[int, ...]:
    return tuple(i for i in indices for _ in range(count))


def _full_batch(w: tuple[float, ...], images: int) -> Layout:
    return Layout(w * images, _each(range(images), len(w)))


def _shift_batches(w: tuple[float, ...], images: int) -> Layout:
    pairs = range(images - 1)
    return Layout(w * len(pairs), _each(pairs, len(w)), _each([k + 1 for k in pairs], len(w)))


def _alternate_batches(w: tuple[float, ...], images: int) -> Layout:
    pairs = range(images - 1)
    back = mirrored(w)
    weights = tuple(x for k in pairs for x in (w if k % 2 == 0 else back))
    return Layout(weights, _each([k + k % 2 for k in pairs], len(w)), _each([k + 1 - k % 2 for k in pairs], len(w)))


_METHODS: dict[str, Callable[[tuple[float, ...], int], Layout]] = {
    "full batch": _full_batch, "shift batches": _shift_batches, "alternate batches": _alternate_batches}


def _padded(lay: Layout, before: int, after: int, images: int) -> Layout:
    def images_of(idx: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return None if idx is None else (0,) * before + idx + (images - 1,) * after

    weights = (lay.weights[0],) * before + lay.weights + (lay.weights[-1],) * after
    return Layout(weights, images_of(lay.image_1), images_of(lay.image_2))


def layout(s: Strategy, images: int | None, *, seed: int = RANDOM_SEED) -> Layout:
    """The outputs of IPAdapter Weights for a checked strategy and ``images`` reference images (None: none given)."""
    w = image_weights(s, seed=seed)
    if images is None:
        return Layout(w)
    if images < 1:
        raise InputError("input 'image': an empty batch; connect at least one reference image, or none.")
    if s.method != "full batch" and images < 2:
        raise InputError(f"input 'image': method '{s.method}' pairs each reference image with the next, so it "
                         f"needs at least 2 images, got {images}; batch more images or use 'full batch'.")
    return _padded(_METHODS[s.method](w, images), s.add_starting_frames, s.add_ending_frames, images)


def prompt_schedule(s: Strategy, prompt: str) -> str:
    """The old pack's schedule: the non-blank lines of ``prompt`` (padded with the last / cut to frame_count), line
    i keyed at frame ``i * frames + add_starting_frames`` (frames: the strategy's input as given, as the old pack),
    line 0 at frame 0 too with starting frames and the last line at ``frame_count * frames + add_starting_frames``
    with ending frames; one ``"frame": "line",`` per line. Empty without lines or reference images."""
    lines = [p for p in prompt.split("\n") if p.strip()]
    count = s.frame_count
    if not lines or count == 0:
        return ""
    lines = (lines + [lines[-1]] * count)[:count]
    first = s.add_starting_frames
    keyed = [(i * s.frames + first, line) for i, line in enumerate(lines)]
    if first > 0:
        keyed.insert(0, (0, lines[0]))
    if s.add_ending_frames > 0:
        keyed.append((count * s.frames + first, lines[-1]))
    return "".join(f'"{frame}": "{line}",\n' for frame, line in keyed)


def _weight_list(value: Any, name: str) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        raise InputError(f"input '{name}': expected a number or a list of numbers (IPAdapter Weights' 'weights'), "
                         f"got {value!r:.200}.")
    return [float(v) for v in values]


def combine_weights(weights_1: Any, weights_2: Any) -> list[float]:
    """weights_1's numbers then weights_2's (each a number or a list of numbers)."""
    return _weight_list(weights_1, "weights_1") + _weight_list(weights_2, "weights_2")
