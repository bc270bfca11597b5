"""Per-latent (per-frame) data: which reference image and which weight factor each latent of a batch uses.

The B latents of one cond / uncond chunk are frames 0..B-1, unless AnimateDiff(-Evolved) context windows are on:
then ``ad_params["sub_idxs"]`` lists, for the B latents of this window, their frame indices in the full video of
``ad_params["full_length"]`` frames, and every per-frame list is indexed by those instead.

Per-frame lists shorter than the frames are padded by repeating their last entry (frame i uses entry
min(i, len - 1)); longer ones are truncated. This is how unfolded reference images (image i drives latent i) and
per-frame weights (``frame_weights``) are laid out.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .numbers import parse_numbers

def parse_frame_weights(text: str) -> tuple[float, ...] | None:
    """"1, 0.5, 0" (ip_adapter_core.numbers) -> (1.0, 0.5, 0.0); empty or blank -> None (1 for every frame).

    Raises InputError naming the entry that is not a (finite) number.
    """
    return parse_numbers(text, where="input 'frame_weights'", example="1, 0.5, 0") or None


def window_frames(ad_params: Mapping[str, Any] | None, per_chunk: int) -> tuple[int, ...] | None:
    """The full-video frame index of each of the ``per_chunk`` latents of a chunk when a context window is active
    (``ad_params["sub_idxs"]`` with one index per latent), else None (latent i is frame i)."""
    if not ad_params:
        return None
    sub = ad_params.get("sub_idxs")
    if sub is None or len(sub) != per_chunk:
        return None
    return tuple(int(i) for i in sub)


def full_length(ad_params: Mapping[str, Any] | None) -> int | None:
    """The number of frames of the whole video in an active context window, else None."""
    if not ad_params or ad_params.get("sub_idxs") is None or ad_params.get("full_length") is None:
        return None
    return int(ad_params["full_length"])


def frame_indices(frames: Sequence[int] | None, per_chunk: int) -> tuple[int, ...]:
    """``frames`` when given (a context window), else 0..per_chunk-1."""
    return tuple(frames) if frames is not None else tuple(range(per_chunk))


def pick(count: int, frames: Sequence[int]) -> tuple[int, ...]:
    """The entry of a per-frame list of ``count`` entries used by each frame: min(frame, count - 1)."""
    if count < 1:
        raise ValueError("a per-frame list needs at least one entry")
    return tuple(min(max(int(f), 0), count - 1) for f in frames)


def frame_factors(factors: Sequence[float], frames: Sequence[int]) -> tuple[float, ...]:
    """The weight factor of each frame: factors[min(frame, len - 1)]."""
    return tuple(float(factors[i]) for i in pick(len(factors), frames))
