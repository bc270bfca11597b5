"""One apply plan: everything an apply node's controls decide, validated once, frozen.

An apply node reads its inputs, builds the plan with :func:`make_plan` (before any image is encoded, so bad text or
a bad mask fails first), and hands it to the host layer, which checks the adapter and tokens against the model and
installs the term (nodes/patch/install.py). The plan holds what the patch needs and nothing of ComfyUI: per-site
weights (weight type, layer weights, composition weight, precise boost, compatibility folded in), the precise types'
swapped sites, the embeds scaling, the start/end fractions, the per-step schedule, the prepared mask, unfold and
per-frame factors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .attention import check_scaling
from .compat import check_range
from .errors import check_choice
from .frames import parse_frame_weights
from .masks import prepare_mask
from .schedule import WeightSchedule, make_schedule
from .sites import Site
from .weighting import check_weight_type, parse_layer_weights, site_weights, swapped_sites

OLD_PACK = "ComfyUI_IPAdapter_plus"
COMPATIBILITY_MODES = ("this pack", OLD_PACK)


@dataclass(frozen=True)
class ApplyPlan:
    weight: float
    site_weights: tuple[float, ...]
    swap_sites: frozenset[int]
    scaling: str
    start_at: float
    end_at: float
    schedule: WeightSchedule
    mask: torch.Tensor | None
    unfold: bool
    frame_weights: tuple[float, ...] | None
    compatibility: str
    lora_strength: float = 1.0
    uncond_term: bool = True  # False: no term on the negative (uncond) pass

    @property
    def full_range(self) -> bool:
        return self.start_at <= 0.0 and self.end_at >= 1.0

    @property
    def silent(self) -> bool:
        """Every frame's factor is 0: the term is exactly 0 everywhere."""
        return self.frame_weights is not None and all(f == 0 for f in self.frame_weights)

    def active_sites(self) -> list[int]:
        """The sites (checkpoint order) whose term is not provably 0: weight 0 makes K' or V' zero in every scaling
        mode, swapped or not, so those get no patch."""
        return [] if self.silent else [i for i, w in enumerate(self.site_weights) if w != 0]

    @property
    def encode_uncond(self) -> str:
        """The uncond mode when the apply node encodes the image itself: the old pack's black image in its
        compatibility mode, the training's otherwise."""
        return "black image" if self.compatibility == OLD_PACK else "reference"

    @property
    def mask_resize(self) -> str:
        """How the attention mask is brought to each site's grid (ip_adapter_core.masks.MASK_RESIZES): the old pack's
        plain bilinear in its compatibility mode, area averaging otherwise."""
        return "bilinear" if self.compatibility == OLD_PACK else "area"


def check_compatibility(compatibility: str) -> None:
    check_choice(compatibility, COMPATIBILITY_MODES, input_name="compatibility", what="mode")


def make_plan(sites: Sequence[Site], *, weight: float, start_at: float, end_at: float, where: str,
              weight_type: str = "linear", embeds_scaling: str = "V only", layer_weights: str = "",
              weight_composition: float = 1.0, attn_mask: torch.Tensor | None = None,
              weight_schedule: str = "constant", schedule_values: str = "", unfold_batch: bool = False,
              frame_weights: str = "", compatibility: str = "this pack", precise_boost: float = 1.0,
              lora_strength: float = 1.0, boost_weight: float | None = None, uncond_term: bool = True) -> ApplyPlan:
    """Validate every control against the model's ``sites`` and fold them into an :class:`ApplyPlan`.

    The defaults give ``weight`` on every site with "V only", i.e. IPA Apply. compatibility "ComfyUI_IPAdapter_plus":
    the middle-block sites get no term, as with the old pack on current ComfyUI. ``lora_strength``: the strength of
    the LoRA an adapter file carries (FaceID), 1 = the reference; ignored for adapters without one. ``boost_weight``
    (no node input of this pack; the served old precise nodes): the precise types' boosted weight itself
    (weighting.site_weights), instead of ``precise_boost * weight``. ``uncond_term`` False: the negative (uncond) pass
    gets no term (with cfg > 1 on Flux, XLabs' choice), True: the uncond tokens' term, as the reference."""
    check_range(start_at, end_at, where=where)
    mask = None if attn_mask is None else prepare_mask(attn_mask, where=where, clamp=compatibility != OLD_PACK)
    schedule = make_schedule(weight_schedule, schedule_values)
    check_scaling(embeds_scaling)
    check_weight_type(weight_type)
    check_compatibility(compatibility)
    factors = parse_frame_weights(frame_weights)
    layers = parse_layer_weights(layer_weights, sites, skip_missing=compatibility == OLD_PACK)
    weights = site_weights(weight_type, sites, weight=weight, weight_composition=weight_composition,
                           layer_weights=layers, precise_boost=precise_boost, boost_weight=boost_weight)
    if compatibility == OLD_PACK:
        weights = tuple(0.0 if s.block == "middle" else w for s, w in zip(sites, weights))
    return ApplyPlan(weight=float(weight), site_weights=tuple(float(w) for w in weights),
                     swap_sites=frozenset(swapped_sites(weight_type, sites)), scaling=embeds_scaling,
                     start_at=float(start_at), end_at=float(end_at), schedule=schedule, mask=mask,
                     unfold=bool(unfold_batch), frame_weights=factors, compatibility=compatibility,
                     lora_strength=float(lora_strength), uncond_term=bool(uncond_term))
