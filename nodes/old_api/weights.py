"""Served ComfyUI_IPAdapter_plus node IDs: the weight-strategy nodes (IPAdapter Weights, Weights From Strategy, Combine
Weights, Prompt Schedule From Weights Strategy). Each class reads the old inputs (its definition in
schema_weights.py) and hands them to ip_adapter_core.weight_strategy, which holds the rules.

Sockets as in the old pack: the FLOAT outputs carry Python lists of floats (one weight per frame, for the ``weight``
input of IPAdapter Batch and the other batch nodes, base.weight_controls), WEIGHTS_STRATEGY a dict with the old
pack's keys (ip_adapter_core.weight_strategy.FIELDS): IPAdapter Weights' inputs and ``frame_count``, the number of
reference images it was given.
"""
from __future__ import annotations

from typing import Any

import torch

from ...ip_adapter_core.errors import InputError
from ...ip_adapter_core.weight_strategy import Strategy, combine_weights, layout, prompt_schedule
from .base import old_node


def _images(image: torch.Tensor | None) -> int | None:
    """The number of reference images (None: no image connected)."""
    if image is None:
        return None
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        raise InputError(f"input 'image': expected an IMAGE batch (B, H, W, C), got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}.")
    return int(image.shape[0])


def _picked(image: torch.Tensor, indices: tuple[int, ...] | None) -> torch.Tensor | None:
    """A new batch of the reference images at ``indices``, or None."""
    if indices is None:
        return None
    return image.index_select(0, torch.tensor(indices, dtype=torch.long, device=image.device))


def _outputs(strategy: Strategy, image: torch.Tensor | None) -> tuple:
    """(weights, weights_invert, total_frames, image_1, image_2, weights_strategy)."""
    lay = layout(strategy, _images(image))
    return (list(lay.weights), list(lay.weights_invert), lay.total_frames, _picked(image, lay.image_1),
            _picked(image, lay.image_2), strategy.as_dict())


@old_node("IPAdapterWeights")
class OldWeights:
    def run(self, weights: str, timing: str, frames: int, start_frame: int, end_frame: int, add_starting_frames: int,
            add_ending_frames: int, method: str, image: torch.Tensor | None = None):
        count = _images(image)
        strategy = Strategy.checked(dict(weights=weights, timing=timing, frames=frames, start_frame=start_frame,
                                         end_frame=end_frame, add_starting_frames=add_starting_frames,
                                         add_ending_frames=add_ending_frames, method=method,
                                         frame_count=count or 0))
        return _outputs(strategy, image)


@old_node("IPAdapterWeightsFromStrategy")
class OldWeightsFromStrategy:
    def run(self, weights_strategy: Any, image: torch.Tensor | None = None):  # the strategy's inputs, this image
        return _outputs(Strategy.checked(weights_strategy, within="weights_strategy"), image)


@old_node("IPAdapterPromptScheduleFromWeightsStrategy")
class OldPromptScheduleFromWeightsStrategy:
    def run(self, weights_strategy: Any, prompt: str = ""):
        if not isinstance(prompt, str):
            raise InputError(f"input 'prompt': expected text, got {type(prompt).__name__}.")
        return (prompt_schedule(Strategy.checked(weights_strategy, within="weights_strategy"), prompt),)


@old_node("IPAdapterCombineWeights")
class OldCombineWeights:
    def run(self, weights_1: Any, weights_2: Any):
        weights = combine_weights(weights_1, weights_2)
        return (weights, len(weights))
